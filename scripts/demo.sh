#!/usr/bin/env bash
# The main job from nothing: environment, ComfyUI host, then the ELLA workflow headless -> out/*.png
#   scripts/demo.sh [--workflow workflows/<name>.json] [--steps N]
#   scripts/demo.sh --world     builds the world of docs/world.md (about 2 h 15 min on 2 cores, resumable) and
#                               copies its picture (caption + references -> result) to out/world-picture.png
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --world ]; then
    shift
    bash scripts/world.sh --schedule full "$@"
    mkdir -p out
    cp docs/world/world-picture.png out/world-picture.png
    echo "demo: out/world-picture.png (the table: docs/world/results.md)"
    exit 0
fi
bash scripts/setup_env.sh
exec .venv/bin/python -m devtools.demo "$@"
