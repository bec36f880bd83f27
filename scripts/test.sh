#!/usr/bin/env bash
# The test suite (what CI runs). Sets up .venv first on a fresh machine. Extra arguments go
# to pytest, e.g. --runslow, or -n 0 for one process.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
exec .venv/bin/python -m pytest -n 2 -q tests "$@"
