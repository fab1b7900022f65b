#!/usr/bin/env bash
# Re-resolve constraints.txt (the versions `make install` installs and CI tests) with uv, for every
# platform and Python version that pyproject.toml supports. torch stays pinned to the version in
# the current constraints.txt (scripts/install_torch.sh reads the same line) unless TORCH_VERSION
# says otherwise:  make lock  |  make lock TORCH_VERSION=2.14.0
# Then run `make test` on the new versions before committing constraints.txt.
set -euo pipefail
PY=${1:-python3}
cd "$(dirname "$0")/.."
current=$(sed -n 's/^torch==\([^ ;]*\).*/\1/p' constraints.txt 2>/dev/null | head -n 1)
TORCH_VERSION=${TORCH_VERSION:-${current:?no torch pin in constraints.txt: set TORCH_VERSION}}
pin=$(mktemp)
trap 'rm -f "$pin"' EXIT
echo "torch==$TORCH_VERSION" > "$pin"
"$PY" -m uv pip compile pyproject.toml --extra dev --extra demo --extra eval --extra docs \
  --universal --python-version 3.11 --constraint "$pin" --no-header --quiet -o constraints.txt.new
{
  echo "# The dependency versions CI last passed with: \`make install\` installs them (pip -c), torch's build"
  echo "# chosen by scripts/install_torch.sh. pyproject.toml keeps the supported ranges. Regenerate with"
  echo "# \`make lock\` (scripts/lock.sh: uv pip compile --universal, torch pinned), then \`make test\`."
  cat constraints.txt.new
} > constraints.txt
rm constraints.txt.new
echo "lock: constraints.txt written ($(grep -c '==' constraints.txt) pins, torch==$TORCH_VERSION)"
