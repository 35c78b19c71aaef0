# Sourced by demo.sh and test.sh: create .venv if missing and install shardkit with the extras in $1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[shardkit] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
echo "[shardkit] installing shardkit${1:+[$1]} into .venv (torch 2.14.1 and torchvision 0.29.1 are pinned)"
if ! .venv/bin/python -m pip install -q --disable-pip-version-check -c scripts/constraints.txt -e ".${1:+[$1]}" \
    >.venv/pip.log 2>&1; then
  grep -v "^WARNING: Location .* is ignored" .venv/pip.log >&2
  echo "[shardkit] pip install failed (log above, also in .venv/pip.log)" >&2
  exit 1
fi
.venv/bin/python -c "import shardkit" || { echo "[shardkit] install failed" >&2; exit 1; }
