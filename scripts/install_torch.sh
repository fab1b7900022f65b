#!/usr/bin/env bash
# Install PyTorch into the given interpreter's environment before the project itself.
# - already importable: nothing to do;
# - an NVIDIA GPU is present: the default (CUDA) build from PyPI;
# - otherwise the CPU build: first from a local wheelhouse (pip's find-links), then from
#   PyTorch's CPU index. Override the version with TORCH_VERSION=...
set -euo pipefail
PY=${1:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
if "$PY" -c "import torch" 2>/dev/null; then
  echo "torch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "NVIDIA GPU found: installing the CUDA build of torch==$TORCH_VERSION"
  "$PY" -m pip install -q "torch==$TORCH_VERSION"
elif "$PY" -m pip install -q --no-index "torch==$TORCH_VERSION" 2>/dev/null; then
  echo "no GPU: installed torch==$TORCH_VERSION from the local wheelhouse"
else
  echo "no GPU: installing the CPU build of torch==$TORCH_VERSION from download.pytorch.org"
  "$PY" -m pip install -q "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu \
    --extra-index-url https://pypi.org/simple
fi
