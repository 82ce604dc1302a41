"""Emu nodes in the real host: curate a generated folder, tune a LoRA from the user's checkpoint loader's
MODEL/CLIP/VAE, and apply it with the stock LoraLoader."""
import importlib
import re
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
            report, sheet, review = curate.execute(folder=str(folder), min_side=32, min_aspect=0.5, max_aspect=2.0,
                                                   remove_duplicates=True, duplicate_distance=6).result
            assert "img0_copy.png: near-duplicate of img0.png" in report and "strip.png: 64x16 (shorter side 16 < 32 px)" in report
            assert sheet.ndim == 4 and sheet.shape[-1] == 3
            text = (folder / "emu_review.csv").read_text()
            (folder / "emu_review.csv").write_text(text.replace("img3.png,keep", "img3.png,reject"))
            model, clip, vae = m["CheckpointLoaderSimple"]().load_checkpoint(standins["checkpoints"])[:3]
            name, curve, tune_report = tune.execute(
                model=model, clip=clip, vae=vae, folder=str(folder), review_list="", lora_name=LORA, mode="lora",
                max_steps=4, learning_rate=1e-3, rank=2, patience=1, validate_every=2, effective_batch=2,
                micro_batch=2, noise_offset=0.1, resolution=32, seed=0).result
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


CURATE = dict(min_side=32, min_aspect=0.5, max_aspect=2.0, remove_duplicates=False, duplicate_distance=6)


@pytest.fixture(scope="module")
def clip_vision(comfy_inprocess, standins):
    """The stand-in CLIP ViT-H/14 through ComfyUI's stock Load CLIP Vision."""
    return comfy_inprocess.nodes.NODE_CLASS_MAPPINGS["CLIPVisionLoader"]().load_clip(standins["clip_vision"])[0]


def test_aesthetic_filter_scores_with_the_clip_vision_model_from_load_clip_vision(comfy_inprocess, clip_vision,
                                                                                  folder, tmp_path):
    from safetensors.torch import save_file

    curate, _tune = emu_nodes(comfy_inprocess)
    g = torch.Generator().manual_seed(5)  # a LAION-layout head (layers.<i>) on the stand-in's 1024-d embeddings
    head = {"layers.0.weight": torch.randn(16, 1024, generator=g), "layers.0.bias": torch.randn(16, generator=g),
            "layers.2.weight": torch.randn(1, 16, generator=g) * 0.1, "layers.2.bias": torch.full((1,), 5.0)}
    save_file(head, tmp_path / "aesthetic.safetensors")
    names = ["img1.png", "img2.png"]
    for extra in set(p.name for p in folder.glob("*.png")) - set(names):
        (folder / extra).unlink()
    scores = {}
    for name in names:  # the head's arithmetic, written out: Linear, Linear on the L2-normalised embedding
        pixels = torch.from_numpy(np.asarray(Image.open(folder / name).convert("RGB"), dtype=np.float32) / 255)[None]
        with torch.no_grad():
            e = torch.nn.functional.normalize(clip_vision.encode_image(pixels)["image_embeds"].float(), dim=-1)
        hidden = e @ head["layers.0.weight"].T + head["layers.0.bias"]
        scores[name] = float(hidden @ head["layers.2.weight"].T + head["layers.2.bias"])
    low, high = sorted(names, key=scores.get)
    assert scores[high] - scores[low] > 1e-3
    threshold = (scores[low] + scores[high]) / 2
    with torch.inference_mode():
        report = curate.execute(folder=str(folder), **CURATE, clip_vision=clip_vision,
                                aesthetic_predictor=str(tmp_path / "aesthetic.safetensors"),
                                aesthetic_min=threshold).result[0]
    assert "2 images, 1 kept, 1 removed" in report and "aesthetic: removed 1\n" in report
    reported = re.search(rf"\n  {low}: aesthetic score (\S+) < {threshold:g}\n", report)
    assert reported and float(reported.group(1)) == pytest.approx(scores[low], rel=1e-3)


def test_clip_filter_with_a_mismatched_pair_is_one_clear_error(comfy_inprocess, standins, clip_vision, folder):
    """ViT-H vision (1024-d) with SD1.5's CLIP-L text encoder (768-d): no shared space, and the error says so
    once, from the scorer deep inside the curation, with the node's name in front exactly once."""
    curate, _tune = emu_nodes(comfy_inprocess)
    clip = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS["CheckpointLoaderSimple"]().load_checkpoint(
        standins["checkpoints"])[1]
    with torch.inference_mode(), pytest.raises(ValueError) as error:
        curate.execute(folder=str(folder), **CURATE, clip_vision=clip_vision, clip=clip, clip_min=0.2)
    message = str(error.value)
    assert message.startswith("[Emu Curate Folder] the CLIP text encoder gives 768-d embeddings but the CLIP "
                              "vision model 1024-d") and message.count("Emu Curate Folder") == 1


@pytest.mark.parametrize("name, value", [("min_aspect", float("nan")), ("clip_min", float("inf")),
                                         ("max_aspect", 1000.0)])
def test_a_number_that_is_nan_infinite_or_out_of_range_names_the_input(comfy_inprocess, folder, name, value):
    curate, _tune = emu_nodes(comfy_inprocess)
    with pytest.raises(ValueError, match=rf"^\[Emu Curate Folder\] {name} is {value:g}: give a number from"):
        curate.execute(folder=str(folder), **{**CURATE, name: value})


def test_learning_rate_0_is_the_modes_default_and_any_other_value_is_used_as_given(comfy_inprocess, standins,
                                                                                   folder):
    """docs/emu.md: 1e-4 for LoRA, 1e-5 for full fine-tuning. The widget's own default must give those (it once
    was 1e-4, which full mode then trained at); the lr the optimiser ran at is read from the run's log."""
    from safetensors import safe_open

    _curate, tune = emu_nodes(comfy_inprocess)
    defaults = {spec.id: spec.default for spec in tune.define_schema().inputs if getattr(spec, "default", None)
                is not None}
    assert defaults["learning_rate"] == 0
    checkpoint = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS["CheckpointLoaderSimple"]().load_checkpoint(
        standins["checkpoints"])[:3]
    lora_path = Path(comfy_inprocess.folder_paths.get_folder_paths("loras")[0]) / "emu-test-lr.safetensors"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def run(mode, **given):
        inputs = {**defaults, "lora_name": lora_path.name, "folder": str(folder), "review_list": "", "mode": mode,
                  "max_steps": 1, "rank": 2, "validate_every": 1, "effective_batch": 2, "micro_batch": 2,
                  "resolution": 32, **given}
        with torch.inference_mode():
            report = tune.execute(*checkpoint, **inputs).result[2]
        run_dir = Path(re.search(r"^run folder (.+)$", report, re.M).group(1))
        first_lr = float((run_dir / "log.csv").read_text().splitlines()[1].split(",")[3])
        with safe_open(str(lora_path), "pt") as f:
            return report, first_lr, f.metadata()["ss_learning_rate"]

    try:
        full_report, full_lr, full_meta = run("full")
        lora_report, lora_lr, lora_meta = run("lora")
        given_report, given_lr, given_meta = run("full", learning_rate=3e-5)
    finally:
        torch.set_num_threads(threads)
        lora_path.unlink(missing_ok=True)
    # one step into the warm-up: the same schedule factor in every run, so the ratios are the base rates'
    assert lora_lr / full_lr == pytest.approx(10) and given_lr / full_lr == pytest.approx(3)
    assert (full_meta, lora_meta, given_meta) == ("1e-05", "0.0001", "3e-05")
    assert "at learning rate 1e-05;" in full_report and "at learning rate 3e-05;" in given_report
