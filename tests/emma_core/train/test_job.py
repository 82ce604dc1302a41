"""The one training path: the job builder (emma_core/train/job.py) on toy models, the feature extraction the
nodes and the trainer share, and the text length a module file records."""
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from devtools import toy_train as toy
from emma_core.adapters import Features
from emma_core.clip_features import image_features
from emma_core.ella import ELLA
from emma_core.emma_module import (TEXT_LENGTHS, load_module, prompt_text_length, save_module,
                                   text_length_mismatch, text_length_warning)
from emma_core.features_file import save_features
from emma_core.t5 import FIXED_LENGTH
from emma_core.train.encoders import clip_condition
from emma_core.train.job import TrainingJob, run_job
from emma_core.train.loop import TrainConfig
from emma_core.train.schedule import scaled_linear_alphas_cumprod

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.usefixtures("one_thread")


class ToyT5:
    """T5's interface on the toy text encoder; `release` as the node's T5 handle has it."""

    def __init__(self, events):
        self.events = events

    def encode(self, text, fixed_length=None):
        rows = toy.toy_encode_text(text)
        if fixed_length:
            rows = torch.cat([rows, torch.zeros(max(0, fixed_length - rows.shape[0]), rows.shape[1])])[:fixed_length]
        return rows

    def release(self):
        self.events.append("t5 released")


class ToyVAE:
    def encode(self, image):
        return toy.toy_encode_image(image)


class ToyBase:
    """ComfyUI's BaseModel interface (latent scaling, model_sampling.sigmas, apply_model -> x0) on the toy
    denoiser, enough for objective.comfy_epsilon_denoiser."""

    def __init__(self):
        a = scaled_linear_alphas_cumprod()
        self.model_sampling = SimpleNamespace(sigmas=((1 - a) / a).sqrt())
        self.denoiser = toy.ConvDenoiser()

    def process_latent_in(self, latents):
        return latents

    def process_latent_out(self, latents):
        return latents

    def apply_model(self, x_sigma, sigma, c_crossattn):
        s = sigma.view(-1, 1, 1, 1)
        t = torch.zeros(x_sigma.shape[0], dtype=torch.long)
        eps = self.denoiser(x_sigma / (1 + s ** 2).sqrt(), t, c_crossattn)
        return x_sigma - s * eps


def _face_dataset(folder: Path, count: int = 6) -> Path:
    toy.write_toy_dataset(folder, count)
    for image in sorted(folder.glob("*.png")):
        features = toy.toy_encode_condition(toy.concept_picture(int(image.stem) % 3, 1)[None])
        save_features(features, str(folder / f"{image.stem}_ref.safetensors"))
    return folder


@pytest.mark.parametrize("text_length", TEXT_LENGTHS)
def test_the_job_trains_a_module_that_records_its_text_length(tmp_path, text_length):
    events = []
    base = ToyBase()

    def load_base():
        events.append("base loaded")
        return base

    job = TrainingJob(modality="face", dataset=_face_dataset(tmp_path / "faces"), out_path=tmp_path / "m.safetensors",
                      run_dir=tmp_path / "run", config=TrainConfig(steps=2, batch_size=2, checkpoint_every=0, seed=0),
                      vae=ToyVAE(), base_model=base, load_base=load_base, ella=ELLA(toy.TOY_ELLA),
                      t5=ToyT5(events), resolution=64, text_length=text_length, val_fraction=0.0)
    connector = job.ella
    before = {k: v.clone() for k, v in connector.state_dict().items()}
    reports = []
    out = run_job(job, on_cache=reports.append)
    # rank 0's cache first, then the encoders go, then the base model comes (the node's T5 leaves the device
    # before the UNet loads); the caller's connector is trained against as a frozen copy, never changed
    assert events == ["t5 released", "base loaded"] and job.t5 is None
    assert reports and reports[0].items == 6
    assert all(torch.equal(v, before[k]) for k, v in connector.state_dict().items())
    module = load_module(str(out.module_path))
    assert module.metadata()["text_length"] == text_length and module.training_steps == 2
    other = TEXT_LENGTHS[1 - TEXT_LENGTHS.index(text_length)]
    agreeing = FIXED_LENGTH if text_length == TEXT_LENGTHS[0] else 7
    assert text_length_mismatch(module, agreeing) is None
    disagreeing = 7 if text_length == TEXT_LENGTHS[0] else FIXED_LENGTH
    assert text_length_mismatch(module, disagreeing) == other
    message = text_length_warning(module, "m.safetensors", disagreeing)
    assert "m.safetensors" in message and repr(text_length) in message and repr(other) in message


def test_files_without_the_text_length_never_warn(tmp_path):
    module = toy.small_emma()  # no text_length: as files written before the key existed
    save_module(module, str(tmp_path / "old.safetensors"))
    old = load_module(str(tmp_path / "old.safetensors"))
    assert "text_length" not in old.metadata() and old.text_length == ""
    assert text_length_mismatch(old, 7) is None is text_length_warning(old, "old", FIXED_LENGTH)
    assert prompt_text_length(FIXED_LENGTH) == "fixed 128" and prompt_text_length(12) == "flexible"
    assert TEXT_LENGTHS[0] == f"fixed {FIXED_LENGTH}"


def test_the_job_refuses_an_unknown_text_length(tmp_path):
    with pytest.raises(ValueError, match="text_length"):
        TrainingJob(modality="face", dataset=tmp_path, out_path=tmp_path / "m", run_dir=tmp_path, config=TrainConfig(),
                    vae=None, base_model=None, ella=None, text_length="fixed 77")


class ToyClipVision:
    image_size = 224

    def encode_image(self, image, crop=True):
        g = torch.Generator().manual_seed(int(image.sum() * 1000) % 2**31)
        return {"penultimate_hidden_states": torch.randn(image.shape[0], 17, 8, generator=g),
                "image_embeds": torch.randn(image.shape[0], 6, generator=g)}


def test_the_trainer_encodes_clip_references_as_the_image_features_node_does():
    image = toy.concept_picture(1, 3)[None]
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:48] = 1
    for kind in ("clip_tokens", "style"):
        cached = clip_condition(ToyClipVision(), kind)(image, mask)
        node = image_features(ToyClipVision(), image, kind, mask if kind == "clip_tokens" else None)
        assert cached.kind == node.kind == kind and cached.tensors.keys() == node.tensors.keys()
        assert all(torch.equal(cached.tensors[k], node.tensors[k]) for k in node.tensors)


def test_face_and_clip_features_are_extracted_in_one_place_each():
    """The inference nodes and the trainer's cache call emma_core.face.features.face_features and
    emma_core.clip_features.image_features; nobody else runs the encoders on a reference."""
    sources = {p: p.read_text() for p in [*REPO.glob("nodes/*.py"), *REPO.glob("emma_core/*.py"),
                                          *REPO.glob("emma_core/train/*.py"), *REPO.glob("emma_core/face/*.py")]}
    callers = {p.relative_to(REPO).as_posix() for p, text in sources.items()
               if re.search(r"clip_vision\.encode_image\(", text)}
    assert callers == {"emma_core/clip_features.py"}
    callers = {p.relative_to(REPO).as_posix() for p, text in sources.items()
               if re.search(r"(?<![\w.])embed_faces\(", text) and "emma_core/face/" not in p.as_posix()}
    assert callers == set()
    nodes = sources[REPO / "nodes" / "emma_nodes.py"]
    assert "face_features(" in nodes and "image_features(" in nodes
    encoders = sources[REPO / "emma_core" / "train" / "encoders.py"]
    assert "face_features(" in encoders and "image_features(" in encoders


def test_the_front_ends_only_map_their_arguments_to_the_job():
    """The node and the CLI build a TrainingJob and call run_job; neither assembles cache, ELLA, preview or
    trainer itself (they used to, twice, and drifted)."""
    for path in ("nodes/train_nodes.py", "scripts/train_emma.py"):
        text = (REPO / path).read_text()
        assert "TrainingJob(" in text and "run_job(" in text, path
        for own in ("comfy_encoders(", "prepare_cache(", "train_emma_module(", "PreviewSetup(", "ELLA(",
                    "comfy_epsilon_denoiser("):
            assert own not in text, f"{path} calls {own} itself"
    assert "_clip_vision_file" not in (REPO / "nodes" / "train_nodes.py").read_text()


def test_no_reference_to_the_t5_encoder_survives_the_cache_and_models_leave_before_the_unet(tmp_path):
    """The CLI's T5 (only the job holds it) is freed once the cache is built; the front end's release (ComfyUI:
    its loaded VAE, CLIP vision, ... off the device) runs before the UNet is loaded for training."""
    import gc
    import weakref

    events, base = [], ToyBase()
    job = TrainingJob(modality="face", dataset=_face_dataset(tmp_path / "faces"), out_path=tmp_path / "m.safetensors",
                      run_dir=tmp_path / "run", config=TrainConfig(steps=1, batch_size=2, checkpoint_every=0),
                      vae=ToyVAE(), base_model=base, ella=ELLA(toy.TOY_ELLA), t5=ToyT5(events), resolution=64,
                      val_fraction=0.0, release_models=lambda: events.append("models released"))
    t5 = weakref.ref(job.t5)

    def load_base():
        gc.collect()
        events.append(f"base loaded, t5 alive: {t5() is not None}")
        return base

    job.load_base = load_base
    run_job(job)
    assert events == ["t5 released", "models released", "base loaded, t5 alive: False"]
