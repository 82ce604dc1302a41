"""The UMM Train Projector node in the real host: it trains through the checkpoint's UNet with its VAE, CLIP and
CLIP Vision, writes the projector where Load UMM Projector finds it, and UMM Subject Encode runs with it; inputs
that cannot work are errors naming the node, the input and the fix."""
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from devtools.toy_umm_comfy import subject_folder

NAME = "node-trained-umm"


@pytest.fixture(scope="module")
def loaded(comfy_inprocess, standins):
    m = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS
    model, clip, vae = m["CheckpointLoaderSimple"]().load_checkpoint(standins["checkpoints"])[:3]
    clip_vision = m["CLIPVisionLoader"]().load_clip(standins["clip_vision"])[0]
    return dict(m=m, model=model, clip=clip, vae=vae, clip_vision=clip_vision,
                folder_paths=comfy_inprocess.folder_paths)


def train(loaded, dataset, subject_word="dog", **settings):
    node = loaded["m"]["UMMTrainProjector"]
    arguments = dict(model=loaded["model"], vae=loaded["vae"], clip=loaded["clip"], clip_vision=loaded["clip_vision"],
                     dataset_path=str(dataset), subject_word=subject_word, projector_name=NAME, steps=2, batch_size=1,
                     learning_rate=1e-4, resolution=64, seed=0, resume=False, validation_split=0.5, validate_every=2,
                     checkpoint_every=1)
    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        return node.execute(**{**arguments, **settings}).result


def test_the_node_writes_a_projector_that_load_and_subject_encode_use(loaded, tmp_path, add_model_folder, caplog):
    m = loaded["m"]
    add_model_folder("umm", tmp_path / "umm", is_default=True)
    # two pictures to train on (one held out); the cat's caption lacks the subject word, so it is skipped
    dataset = subject_folder(tmp_path / "dog", ["a photo of a dog on the beach", "a cat on a sofa",
                                                "my dog at the park"])
    before = {k: v.clone() for k, v in list(loaded["model"].model.state_dict().items())[:8]}
    with caplog.at_level(logging.INFO, logger="ComfyUI-EMMA"):
        name, curve = train(loaded, dataset)
    assert "01.txt" not in caplog.text and "01.png: the caption does not contain the subject word 'dog'" in caplog.text
    assert name == f"{NAME}.safetensors" and (tmp_path / "umm" / name).is_file()
    assert curve.ndim == 4 and curve.shape[-1] == 3 and curve.shape[1] > 50  # the loss curve as an IMAGE
    run_dir = Path(loaded["folder_paths"].get_output_directory()) / "umm_training" / NAME
    assert (run_dir / "log.csv").is_file() and (run_dir / "latest.json").is_file()
    for key, value in before.items():  # the user's MODEL still computes what it did, and keeps no gradients
        assert torch.equal(loaded["model"].model.state_dict()[key], value), key
    assert all(p.grad is None for p in loaded["model"].model.parameters())

    projector = m["UMMLoadProjector"].execute(projector_name=name).result[0]
    assert (projector.config.image_dim, projector.config.text_dim) == (1024, 768)  # ViT-H -> SD1.5's CLIP-L
    image = torch.from_numpy(np.asarray(Image.open(dataset / "02.png"), dtype=np.float32) / 255)[None]
    seen = m["CLIPVisionEncode"]().encode(loaded["clip_vision"], image, "center")[0]
    h_u, h_y = m["UMMSubjectEncode"].execute(clip=loaded["clip"], text="a dog on a boat", subject_word="dog",
                                             clip_vision_output=seen, projector=projector).result
    changed = (h_u[0][0] - h_y[0][0]).abs().amax(-1)[0].nonzero().flatten().tolist()
    assert len(changed) == 1
    assert torch.allclose(h_u[0][0][0, changed[0]], projector(seen["image_embeds"].float())[0].to(h_u[0][0].dtype))


def test_captions_without_the_subject_word_are_an_error_naming_the_input(loaded, tmp_path, add_model_folder):
    add_model_folder("umm", tmp_path / "umm", is_default=True)
    dataset = subject_folder(tmp_path / "cats", ["a photo of a cat", "a cat in the snow"])
    with pytest.raises(ValueError, match=r"^\[UMM Train Projector\] subject_word: the subject word 'dog' occurs in "
                                         r"none of the 2 captions .*write it into the captions"):
        train(loaded, dataset, subject_word="dog")
    with pytest.raises(ValueError, match=r"^\[UMM Train Projector\] subject_word: the subject word is empty"):
        train(loaded, dataset, subject_word="  ")
    with pytest.raises(ValueError, match=r"^\[UMM Train Projector\] dataset_path: the folder .* does not exist"):
        train(loaded, tmp_path / "nowhere")
    assert not (tmp_path / "umm").exists() or not any((tmp_path / "umm").iterdir())
