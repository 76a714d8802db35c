"""Check that the running environment holds exactly the lock's versions.

    python tools/lockcheck.py locks/py311-linux-x86_64.txt

Every installed distribution (except phi3v-ray itself) must appear in the lock with the same version; a local
version label is ignored (torch 2.13.0+cpu matches torch==2.13.0). Locked packages that are not installed are fine:
the lock is used as a constraints file, so a CPU machine installs no nvidia-* packages and only the head node
installs boto3. Exits 1 and lists every difference otherwise.
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
    """One line per installed distribution that the lock lacks or pins at another version."""
    problems = []
    for name, version in sorted(present.items()):
        if name == PROJECT:
            continue
        if name not in lock:
            problems.append(f"{name}=={version} is installed but not in the lock")
        elif version.split("+", 1)[0] != lock[name]:
            problems.append(f"{name}=={version} is installed but the lock pins {name}=={lock[name]}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    lock_path = Path(argv[0])
    lock = read_lock(lock_path)
    present = installed()
    problems = differences(lock, present)
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
