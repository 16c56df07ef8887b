"""Which machine an air-gapped bundle is for, and whether this one is it. Standard library only:
scripts/bootstrap.sh runs this file with the system Python before any environment exists.

    python pipeline/bundle_target.py check BUNDLE_DIR cpu      # one sentence and exit 2 when it does not fit
    python pipeline/bundle_target.py settings BUNDLE_DIR       # --set key=/abs/path lines for evol run
    python pipeline/bundle_target.py extras BUNDLE_DIR         # the extras it carries, comma-separated

A bundle's `bundle.json` names its variant (cpu / gpu), the Python (major.minor) and platform its
wheels were chosen for, the oldest glibc that all of its wheels accept (from their manylinux tags),
and the extras it carries. `evol bundle` writes it; the check refuses a bundle for another machine
before anything is installed, in one sentence.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import sys
import sysconfig
from pathlib import Path

INFO = "bundle.json"
FORMAT = "evol-bundle/1"
# The manylinux aliases of PEP 600: manylinux1 is glibc 2.5, manylinux2010 2.12, manylinux2014 2.17.
_ALIASES = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}


def this_machine() -> dict:
    """The Python, platform and glibc of the running interpreter."""
    libc, version = platform.libc_ver()
    return {
        "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "platform": sysconfig.get_platform(),
        "glibc": version if libc == "glibc" else "",
    }


def wheel_glibc(filename: str) -> tuple[int, int] | None:
    """The oldest glibc a wheel runs on (the laxest of its manylinux tags); None for a pure wheel."""
    platforms = filename.removesuffix(".whl").split("-")[-1].split(".")
    needs = []
    for tag in platforms:
        match = re.fullmatch(r"manylinux_(\d+)_(\d+)_\w+", tag)
        if match:
            needs.append((int(match[1]), int(match[2])))
        elif tag.split("_")[0] in _ALIASES:
            needs.append(_ALIASES[tag.split("_")[0]])
    return min(needs) if needs else None


def glibc_needed(filenames: list[str]) -> str:
    """The glibc that every wheel of a list accepts ("" when none of them is a manylinux wheel)."""
    needs = [need for need in map(wheel_glibc, filenames) if need]
    return "{}.{}".format(*max(needs)) if needs else ""


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


def mismatch(info: dict, variant: str, machine: dict) -> str | None:
    """Why a bundle does not fit this machine and variant, as one sentence; None when it fits."""
    if info.get("format") != FORMAT:
        return f"it is not an evol bundle of this version ({INFO} format {info.get('format')!r}, expected {FORMAT!r})"
    if info["variant"] != variant:
        other = "EVOL_VARIANT=cpu to run it on the CPU" if info["variant"] == "cpu" else "a machine with an NVIDIA GPU"
        return (
            f"it holds the {info['variant']} variant and this machine needs the {variant} variant; make a "
            f"{variant} bundle (evol bundle --variant {variant}) or use {other}"
        )
    if info["python"] != machine["python"]:
        return (
            f"its wheels are for Python {info['python']} and this machine's Python is {machine['python']}; "
            f"install Python {info['python']} (set EVOL_PYTHON to it) or make the bundle with Python {machine['python']}"
        )
    if info["platform"] != machine["platform"]:
        return f"its wheels are for {info['platform']} and this machine is {machine['platform']}"
    if info.get("glibc") and machine["glibc"] and _version(machine["glibc"]) < _version(info["glibc"]):
        return f"its wheels need glibc {info['glibc']} or newer and this machine has glibc {machine['glibc']}"
    return None


def check(bundle: Path, variant: str) -> str | None:
    """The sentence that refuses this bundle on this machine, or None."""
    path = bundle / INFO
    if not path.is_file():
        return f"{bundle} has no {INFO}: it was made by an older evol bundle; make it again"
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{path} is not JSON: the copy is damaged"
    return mismatch(info, variant, this_machine())


def settings(bundle: Path) -> list[str]:
    """`--set key=path` arguments that point the bundled config's relative paths into the bundle."""
    info = json.loads((bundle / INFO).read_text())
    return [arg for key, path in info["paths"].items() for arg in ("--set", f"{key}={bundle.resolve() / path}")]


def main(argv: list[str]) -> int:
    usage = "usage: python pipeline/bundle_target.py check BUNDLE cpu|gpu | settings BUNDLE | extras BUNDLE"
    if len(argv) < 2 or (argv[0], len(argv)) not in (("check", 3), ("settings", 2), ("extras", 2)):
        print(usage, file=sys.stderr)
        return 2
    bundle = Path(argv[1])
    if argv[0] == "check":
        reason = check(bundle, argv[2])
        if reason:
            print(f"The bundle {bundle} does not fit this machine: {reason}.", file=sys.stderr)
            return 2
        made_for = json.loads((bundle / INFO).read_text()).get("pyproject_sha256")
        here = hashlib.sha256((Path(__file__).resolve().parents[1] / "pyproject.toml").read_bytes()).hexdigest()
        if made_for and made_for != here:
            print(
                f"[setup] note: this checkout's pyproject.toml differs from the one {bundle} was made with; "
                f"if the install stops on a missing wheel, make the bundle again from this checkout.",
                file=sys.stderr,
            )
    elif argv[0] == "settings":
        print("\n".join(settings(bundle)))
    else:
        print(",".join(json.loads((bundle / INFO).read_text()).get("extras", [])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
