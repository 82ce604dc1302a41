#!/usr/bin/env bash
# The world of docs/world.md from nothing: environment, then every stage (cached under .cache/world/<schedule>,
# resumable), then the table, grids and world picture (docs/world/ for the full schedule).
#   scripts/world.sh [--schedule full|ci|shape-48] [--only STAGE] [--until STAGE] [--threads N] [--root DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m devtools.world build "$@"
