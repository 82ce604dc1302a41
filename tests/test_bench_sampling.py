"""The FLOP floor of scripts/bench_sampling.py: what it counts must be the connector's real work.

Cheap (tiny configs, CPU, no ComfyUI); no timing assertions.
"""
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from emma_core.ella import ELLA, ELLAConfig

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_sampling.py"
TINY = ELLAConfig(time_channels=32, time_embed_dim=48, width=64, layers=2, heads=4, num_latents=8, input_dim=96)


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_sampling", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_attention_is_counted(bench):
    # torch's counter knows only the CUDA attention kernels; on the CPU, attention would count as 0.
    q, k, v = torch.randn(2, 4, 8, 16), torch.randn(2, 4, 24, 16), torch.randn(2, 4, 24, 16)
    with torch.inference_mode():
        flops = bench.count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert flops == 2 * (2 * 2 * 4 * 8 * 24 * 16)  # q.k^T and attn.v, 2 FLOPs per multiply-add


@pytest.mark.parametrize("tokens, rows", [(5, 1), (17, 1), (9, 2)])
def test_connector_count_matches_the_architecture_written_out(bench, tokens, rows):
    torch.manual_seed(0)
    ella = ELLA(TINY).eval()
    text = torch.randn(rows, tokens, TINY.input_dim)
    with torch.inference_mode():
        counted = bench.count_flops(lambda: ella(text, torch.tensor([500.0])))
    assert counted == bench.ella_flops_analytic(TINY, tokens, rows)


def test_real_size_connector_formula_and_floor(bench):
    # The released ELLA on a 40-token prompt: ~5.7 GFLOP per call, against ~0.8 TFLOP per SD1.5 image.
    flops = bench.ella_flops_analytic(ELLAConfig(), 40)
    assert 5e9 < flops < 7e9
    assert bench.flop_floor(flops, 2 * flops) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        bench.flop_floor(flops, 0)
