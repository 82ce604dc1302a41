"""Emu nodes in the real host: curate a generated folder, tune a LoRA from the user's checkpoint loader's
MODEL/CLIP/VAE, and apply it with the stock LoraLoader."""
import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

LORA = "emu-test-node.safetensors"


def emu_nodes(comfy_inprocess):
    """The node classes: registered ones if the pack lists them, else the module inside the loaded pack."""
    m = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS
    if "EmuQualityTune" in m:
        return m["EmuCurateFolder"], m["EmuQualityTune"]
    pack = next(name for name, mod in sys.modules.items()
                if name.endswith("ComfyUI-EMMA") and hasattr(mod, "__path__"))
    module = importlib.import_module(pack + ".nodes.emu_nodes")
    return module.EmuCurateFolder, module.EmuQualityTune


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(4):
        small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
        small.resize((64, 64), Image.BICUBIC).save(tmp_path / f"img{i}.png")
        (tmp_path / f"img{i}.txt").write_text(f"a photo number {i}")
    Image.open(tmp_path / "img0.png").resize((56, 56)).save(tmp_path / "img0_copy.png")  # a near-duplicate
    (tmp_path / "img0_copy.txt").write_text("a copy")
    Image.new("RGB", (64, 16)).save(tmp_path / "strip.png")                              # too small
    return tmp_path


def test_curate_then_tune_then_lora_loader(comfy_inprocess, standins, folder):
    curate, tune = emu_nodes(comfy_inprocess)
    m = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder_paths = comfy_inprocess.folder_paths
    lora_path = Path(folder_paths.get_folder_paths("loras")[0]) / LORA  # where the node saves (the first one)
    try:
        with torch.inference_mode():  # as ComfyUI's executor runs nodes
            report, sheet, review = curate.execute(str(folder), 32, 0.5, 2.0, True, 6).result
            assert "img0_copy.png: near-duplicate of img0.png" in report and "strip.png: 64x16 (shorter side 16 < 32 px)" in report
            assert sheet.ndim == 4 and sheet.shape[-1] == 3
            text = (folder / "emu_review.csv").read_text()
            (folder / "emu_review.csv").write_text(text.replace("img3.png,keep", "img3.png,reject"))
            model, clip, vae = m["CheckpointLoaderSimple"]().load_checkpoint(standins["checkpoints"])[:3]
            name, curve, tune_report = tune.execute(model, clip, vae, str(folder), "", LORA, "lora", 4, 1e-3, 2, 1,
                                                    2, 2, 2, 0.1, 32, 0).result
        assert name == LORA and lora_path.is_file() and f"saved {lora_path}" in tune_report
        assert folder_paths.get_full_path("loras", LORA) == str(lora_path)
        assert "img3.png: rejected in the review list" in tune_report and "strip.png" in tune_report
        assert "2 training images, 1 held out" in tune_report
        assert curve.shape[0] == 1 and curve.shape[-1] == 3
        g = torch.Generator().manual_seed(1)
        x, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 768, generator=g)
        import comfy.model_management as mm

        def output(patched):
            mm.load_models_gpu([patched])
            with torch.no_grad():
                return patched.model.apply_model(x, torch.tensor([2.0]), c_crossattn=ctx).clone()

        loader = m["LoraLoader"]()
        plain = output(model)
        assert torch.equal(output(loader.load_lora(model, clip, LORA, 0.0, 0.0)[0]), plain)
        assert (output(loader.load_lora(model, clip, LORA, 1.0, 1.0)[0]) - plain).abs().max() > 0
    finally:
        torch.set_num_threads(threads)
        lora_path.unlink(missing_ok=True)
