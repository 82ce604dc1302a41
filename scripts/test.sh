#!/usr/bin/env bash
# Set up (or reuse) the environment, then run the test suite from the repo root.
#   scripts/test.sh [pytest args...]      e.g. scripts/test.sh tests/devtools -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest -q "$@"
