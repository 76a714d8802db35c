#!/usr/bin/env bash
# Sets up .venv with everything phi3v-ray needs. On a machine without an NVIDIA GPU, torch is pinned to the
# CPU build first, because an unpinned torch (asked for by deepspeed/peft) pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    python -m pip install --quiet "torch>=2.4"
  else
    python -m pip install --quiet "torch==2.13.0"
  fi
fi
python -m pip install --quiet -e ".[test]"
echo "phi3v-ray is installed in .venv ($(python -c 'import torch; print("torch", torch.__version__)'))"
