#!/usr/bin/env bash
# Create or reuse .venv, install shardkit with its test extra, run the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/stream -k resume`.
source "$(dirname "$0")/_venv.sh" test
echo "[shardkit] running pytest"
exec .venv/bin/python -m pytest "$@"
