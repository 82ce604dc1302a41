#!/usr/bin/env bash
# The main job from nothing: environment, ComfyUI host, then a picture.
#   scripts/demo.sh             builds (or reuses) the 32 px demo world (ci) of docs/world.md, runs the shipped world
#                               workflow on a real ComfyUI server per demo prompt -> out/world-picture.png
#                               (caption + object reference + background patch -> result; minutes on 2 cores)
#   scripts/demo.sh --workflow workflows/<name>.json [--steps N]
#                               runs one shipped workflow headless on real weights where your ComfyUI has them,
#                               generated stand-ins (random weights: noise) where not -> out/*.png
#   scripts/demo.sh --world     builds the full world (2 h 41 min on 2 cores on 2026-12-07, resumable) and copies its
#                               picture to out/world-picture.png
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
    --world)
        shift
        bash scripts/world.sh --schedule full "$@"
        mkdir -p out
        cp docs/world/world-picture.png out/world-picture.png
        echo "demo: out/world-picture.png (the table: docs/world/results.md)"
        ;;
    --workflow|--steps|--out)
        bash scripts/setup_env.sh
        exec .venv/bin/python -m devtools.demo "$@"
        ;;
    *)
        bash scripts/setup_env.sh
        exec .venv/bin/python -m devtools.world demo "$@"
        ;;
esac
