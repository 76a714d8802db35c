"""Check that the running environment holds exactly the lock's versions.

    python tools/lockcheck.py locks/py311-linux-x86_64.txt [--strict]

Every installed distribution that the lock pins must have the locked version; a local version label is ignored
(torch 2.13.0+cpu matches torch==2.13.0). Locked packages that are not installed are fine: the lock is used as a
constraints file, so a CPU machine installs no nvidia-* packages and only the head node installs boto3. Installed
distributions the lock does not know (phi3v-ray itself aside) are listed as a warning, or as an error with
--strict (a fresh venv: then the lock is missing a package). Exits 1 and lists every difference otherwise.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

PROJECT = "phi3v-ray"


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """name -> version for every `name==version` line of a pip-compile style lock (comments skipped)."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)(\s*;.*)?", line)
        if match is None:
            raise ValueError(f"{path}: not an exact pin: {line!r}")
        pins[canonical(match.group(1))] = match.group(3)
    return pins


def installed() -> dict[str, str]:
    """name -> version of every distribution this interpreter sees."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found[canonical(name)] = dist.version
    return found


def differences(lock: dict[str, str], present: dict[str, str]) -> list[str]:
    """One line per installed distribution that the lock pins at another version."""
    return [
        f"{name}=={version} is installed but the lock pins {name}=={lock[name]}"
        for name, version in sorted(present.items())
        if name in lock and version.split("+", 1)[0] != lock[name]
    ]


def unlocked(lock: dict[str, str], present: dict[str, str]) -> list[str]:
    """One line per installed distribution the lock does not pin (the project itself aside)."""
    return [
        f"{name}=={version} is installed but not in the lock"
        for name, version in sorted(present.items())
        if name not in lock and name != PROJECT
    ]


def main(argv: list[str]) -> int:
    strict = "--strict" in argv
    paths = [arg for arg in argv if arg != "--strict"]
    if len(paths) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    lock_path = Path(paths[0])
    lock = read_lock(lock_path)
    present = installed()
    problems = differences(lock, present)
    extra = unlocked(lock, present)
    if strict:
        problems += extra
    elif extra:
        print(f"{lock_path}: warning: not from the lock:", *extra, sep="\n  ", file=sys.stderr)
    if problems:
        print(f"{lock_path}: this environment differs from the lock:", *problems, sep="\n  ", file=sys.stderr)
        return 1
    used = sum(1 for name in present if name in lock)
    print(
        f"{lock_path}: all {used} installed distributions match the lock ({len(lock) - used} locked, not needed here)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
