"""The EMMA Train Module node in the real host: trains, writes the module where the loader finds it."""
import torch

from devtools.datasets import face_dataset


def test_train_node_writes_a_module_the_loader_reads(comfy_inprocess, standins, tmp_path):
    m = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS
    folder_paths = comfy_inprocess.folder_paths
    folder_paths.add_model_folder_path("emma", str(tmp_path / "emma"), is_default=True)
    dataset = face_dataset(tmp_path / "faces")
    model, _clip, vae = m["CheckpointLoaderSimple"]().load_checkpoint(standins["checkpoints"])[:3]
    before = {k: v.clone() for k, v in list(model.model.state_dict().items())[:8]}
    ella = m["EMMALoadELLA"].execute(standins["ella"]).result[0]
    t5 = m["EMMALoadT5"].execute(standins["text_encoders"], "auto").result[0]
    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        name, curve = m["EMMATrainModule"].execute(
            model, vae, ella, t5, str(dataset), "face", "node-trained-face", 2, 1, 1e-4, 64, 0.25, 2, 0, 1, 0,
            False, "flexible", None, "antelopev2").result
    assert name == "node-trained-face.safetensors"
    assert (tmp_path / "emma" / name).exists()
    assert curve.ndim == 4 and curve.shape[-1] == 3 and curve.shape[1] > 50  # the loss curve as an IMAGE
    module = m["EMMALoadModule"].execute(name).result[0]
    assert module.module.config.modality == "face"
    assert module.module.metadata()["training_steps"] == "2"
    for key, value in before.items():  # the user's MODEL still computes what it did
        assert torch.equal(model.model.state_dict()[key], value), key
