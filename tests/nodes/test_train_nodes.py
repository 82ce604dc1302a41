"""The EMMA Train Module node in the real host: trains, writes the module where the loader finds it (at its
defaults, the last weights: EMA is off unless set); the module records its text length and EMMA Assemble warns
when a prompt was encoded under the other one."""
import logging
from pathlib import Path

import torch

from devtools.datasets import face_dataset
from host_recording import pack_module


def test_train_node_writes_a_module_the_loader_reads(comfy_inprocess, standins, tmp_path, add_model_folder, caplog):
    m = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS
    folder_paths = comfy_inprocess.folder_paths
    add_model_folder("emma", tmp_path / "emma", is_default=True)
    dataset = face_dataset(tmp_path / "faces")
    model, _clip, vae = m["CheckpointLoaderSimple"]().load_checkpoint(standins["checkpoints"])[:3]
    before = {k: v.clone() for k, v in list(model.model.state_dict().items())[:8]}
    ella = m["EMMALoadELLA"].execute(ella_name=standins["ella"]).result[0]
    t5 = m["EMMALoadT5"].execute(t5_name=standins["text_encoders"], precision="auto").result[0]
    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        name, curve, preview = m["EMMATrainModule"].execute(
            model=model, vae=vae, ella=ella, t5=t5, dataset_path=str(dataset), modality="face",
            module_name="node-trained-face", steps=2, batch_size=1, learning_rate=1e-4, resolution=64,
            validation_split=0.25, validate_every=2, early_stopping_patience=0, checkpoint_every=1, seed=0,
            resume=False, text_length="flexible", clip_vision=None, face_pack="antelopev2", preview_every=2).result
    assert name == "node-trained-face.safetensors"
    # the preview grid of step 2 (references, then samples from the module being trained), as an IMAGE
    assert preview.ndim == 4 and preview.shape[-1] == 3 and preview.shape[1] > 64 and float(preview.std()) > 0
    assert (tmp_path / "emma" / name).exists()
    assert curve.ndim == 4 and curve.shape[-1] == 3 and curve.shape[1] > 50  # the loss curve as an IMAGE
    module = m["EMMALoadModule"].execute(module_name=name).result[0]
    assert module.module.config.modality == "face"
    assert module.module.metadata()["training_steps"] == "2"
    assert module.module.metadata()["text_length"] == "flexible"  # what the node was given
    # EMA left at the node's default: the file holds the last weights, as the run's last checkpoint has them
    # (docs/training.md: an average trailing a short run cost the world's object module colour 0.80 -> 0.745)
    run = Path(folder_paths.get_output_directory()) / "emma_training" / "node-trained-face"
    last = torch.load(sorted(run.glob("checkpoint-*.pt"))[-1], weights_only=True)
    assert not last["ema"]
    saved = module.module.state_dict()
    assert all(torch.allclose(saved[k].float(), v.float(), atol=2e-3) for k, v in last["trainable"].items())
    for key, value in before.items():  # the user's MODEL still computes what it did
        assert torch.equal(model.model.state_dict()[key], value), key

    # Sampled under another text length than it was trained with: EMMA Assemble says so, naming both.
    dims = module.module.config.feature_dims
    features = pack_module("emma_core.adapters").Features("face", {k: torch.randn(1, *shape) for k, shape in dims.items()})
    conditions = m["EMMACondition"].execute(module=module, features=features, weight=1.0, start=0.0,
                                            end=1.0).result[0]
    for length, warned in (("fixed 128", True), ("flexible", False)):
        prompt = m["EMMATextEncode"].execute(ella=ella, t5=t5, text="a portrait", length=length).result[0]
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ComfyUI-EMMA"):
            m["EMMAAssemble"].execute(positive=prompt, negative=prompt, conditions=conditions,
                                      apply_to_negative=False)
        said = [r.getMessage() for r in caplog.records if "text length" in r.getMessage()]
        if warned:
            assert len(said) == 1 and "EMMA Assemble" in said[0] and name in said[0], said
            assert "'flexible'" in said[0] and "'fixed 128'" in said[0], said
        else:
            assert said == []
