#!/usr/bin/env bash
# The GPU benchmark of docs/performance.md, in one run (a few minutes on one GPU): the main table at 512 px
# (per step CLIP / ELLA / text + face + object, T5 residency during sampling, CUDA peak), then the schedule
# matrix (fp16, 512 and 1024 px, batch 1 and 4, 20 steps; per call / schedule / repeated; connector calls).
#   scripts/bench_gpu.sh            writes docs/bench/sampling-cuda.json and docs/bench/sampling-cuda-matrix.json
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
.venv/bin/python scripts/bench_sampling.py --device cuda --size 512 --steps 20 --repeats 3 \
    --out docs/bench/sampling-cuda.json
.venv/bin/python scripts/bench_sampling.py --device cuda --skip-main --matrix --matrix-sizes 512 1024 \
    --matrix-batches 1 4 --matrix-steps 20 --repeats 3 --out docs/bench/sampling-cuda-matrix.json
