#!/usr/bin/env bash
# One-time set-up on a fresh machine: a venv with the pinned stack, the package and its C++ extension.
set -euo pipefail
cd "$(dirname "$0")/.."
# No wheel cache: the CUDA build of torch is several GB, and a cached copy doubles the disk a
# fresh install needs (a CI run once failed with "No space left on device" inside pip).
export PIP_NO_CACHE_DIR=1
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -U pip
.venv/bin/pip install -q -r requirements-test.txt
# --no-build-isolation: build the extension against the pinned torch above, not a second unpinned one.
.venv/bin/pip install -q --no-build-isolation -e .
