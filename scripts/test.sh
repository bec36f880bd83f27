#!/usr/bin/env bash
# The test suite (what CI runs). Extra arguments go to pytest, e.g. --runslow.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -n 2 -q tests "$@"
