#!/usr/bin/env bash
# Moves the lock forward: re-resolves locks/py311-linux-x86_64.txt to the newest versions that pyproject.toml
# (dependencies + the `test` and `hub` extras) and locks/extra.in allow, installs exactly those into a fresh venv
# with setup.sh, checks the venv against the lock and runs the test suite there. Commit the new lock only if the
# suite passes.
#
#   tools/relock.sh                    # re-resolve, install, run the whole suite (about 15 minutes on 2 cores)
#   tools/relock.sh tests/test_x.py    # ... and run only these pytest arguments
#   tools/relock.sh --compile-only     # re-resolve only (e.g. after editing pyproject.toml or locks/extra.in)
#   tools/relock.sh --keep             # re-resolve keeping current pins where still allowed (no upgrades)
#
# The lock is resolved by uv (installed into a throwaway venv at the version below) for CPython 3.11 on
# x86_64 Linux with glibc >= 2.28, from PyPI. torch's version comes from locks/extra.in, not from "newest": it is
# moved by hand when its CPU and CUDA builds are both available. The fresh venv lives under $RELOCK_DIR (default: a
# new folder in /tmp) and is left there for inspection.
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK=locks/py311-linux-x86_64.txt
UV_VERSION=0.13.9

compile_only=0
upgrade=(--upgrade)
pytest_args=()
for arg in "$@"; do
  case "$arg" in
    --compile-only) compile_only=1 ;;
    --keep) upgrade=() ;;
    *) pytest_args+=("$arg") ;;
  esac
done

WORK=${RELOCK_DIR:-$(mktemp -d /tmp/phi3v-relock.XXXXXX)}
mkdir -p "$WORK"
if [ -x "$WORK/uv/bin/uv" ] && [ "$("$WORK/uv/bin/uv" --version | cut -d' ' -f2)" = "$UV_VERSION" ]; then
  :
else
  python3 -m venv "$WORK/uv"
  "$WORK/uv/bin/python" -m pip install --quiet "uv==$UV_VERSION"
fi

# The one command that writes the lock; its header records it and the target.
inputs=(pyproject.toml --extra test --extra hub locks/extra.in --python-version 3.11 --python-platform x86_64-manylinux_2_28)
"$WORK/uv/bin/uv" pip compile --quiet "${upgrade[@]}" "${inputs[@]}" --output-file "$LOCK" \
  --custom-compile-command "tools/relock.sh  (uv $UV_VERSION: uv pip compile ${upgrade[*]} ${inputs[*]})"
echo "resolved $(grep -c '^[a-z0-9]' "$LOCK") pinned packages into $LOCK"
grep -E '^(torch|transformers|ray|peft|deepspeed|wandb|pydantic|pyarrow)==' "$LOCK" | tr '\n' ' '
echo
[ "$compile_only" = 1 ] && exit 0

VENV="$WORK/venv" ./setup.sh
"$WORK/venv/bin/python" tools/lockcheck.py "$LOCK" --strict
"$WORK/venv/bin/python" -m pytest -q "${pytest_args[@]}"
echo "the suite passed on the re-resolved lock (venv: $WORK/venv); commit $LOCK"
