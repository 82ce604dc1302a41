#!/usr/bin/env bash
# The main job from nothing: environment, ComfyUI host, then the ELLA workflow headless -> out/*.png
#   scripts/demo.sh [--workflow workflows/<name>.json] [--steps N]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m devtools.demo "$@"
