#!/usr/bin/env bash
# Install PyTorch into the given interpreter's environment before the project itself, and say
# which path was taken. Paths, in order (the first that applies wins; none waits on a host
# that cannot answer before a path that works here has been tried):
#   1. torch already importable: nothing to do;
#   2. an NVIDIA GPU is present: the default (CUDA) build from the regular index;
#   3. pip's find-links (a local wheelhouse) holds a torch wheel of the requested version
#      (`pip download --no-deps --no-index` finds it without touching the network): a plain
#      `pip install torch==X`, which takes that wheel and its dependencies from the regular index;
#   4. otherwise the CPU build from PyTorch's CPU index (the real-world fallback).
# The version is constraints.txt's torch pin (the one CI tested); override it with TORCH_VERSION=...
set -euo pipefail
PY=${1:-python3}
CONSTRAINTS="$(dirname "$0")/../constraints.txt"   # torch's own dependencies are pinned there too
pinned=$(sed -n 's/^torch==\([^ ;]*\).*/\1/p' "$CONSTRAINTS" | head -n 1)
TORCH_VERSION=${TORCH_VERSION:-${pinned:?no torch pin in constraints.txt: set TORCH_VERSION}}
if "$PY" -c "import torch" 2>/dev/null; then
  echo "install_torch: torch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "install_torch: NVIDIA GPU found: installing the CUDA build of torch==$TORCH_VERSION"
  "$PY" -m pip install -q -c "$CONSTRAINTS" "torch==$TORCH_VERSION"
  exit 0
fi
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
if "$PY" -m pip download -q --no-deps --no-index -d "$probe" "torch==$TORCH_VERSION" >/dev/null 2>&1; then
  echo "install_torch: no GPU; local wheel $(basename "$probe"/torch-*.whl) found in pip's find-links:" \
    "installing it, dependencies from the regular index"
  "$PY" -m pip install -q -c "$CONSTRAINTS" "torch==$TORCH_VERSION"
else
  echo "install_torch: no GPU and no local torch==$TORCH_VERSION wheel: installing the CPU build from" \
    "download.pytorch.org"
  "$PY" -m pip install -q -c "$CONSTRAINTS" "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu \
    --extra-index-url https://pypi.org/simple
fi
