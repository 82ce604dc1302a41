"""The MODEL the training nodes back-propagate through: a clone with ComfyUI's dynamic VRAM off where the
host has it (0.16 and later stream weights per layer on NVIDIA, which autograd cannot follow)."""
import inspect

import torch
from host_recording import pack_module


class _DynamicPatcher:
    """The two members training_clone reads, as ComfyUI >= 0.16 has them on a dynamic ModelPatcher."""

    def __init__(self):
        self.asked = None

    def is_dynamic(self):
        return True

    def clone(self, disable_dynamic=False, model_override=None, force_deepcopy=False):
        self.asked = disable_dynamic
        return "clone"


def test_a_dynamic_model_is_cloned_with_dynamic_vram_off(comfy_inprocess):
    patcher = _DynamicPatcher()
    assert pack_module("nodes.trainable").training_clone(patcher) == "clone"
    assert patcher.asked is True


def test_the_hosts_own_model_gives_a_trainable_clone_and_stays_untouched(comfy_inprocess, standins):
    import comfy.model_patcher

    trainable = pack_module("nodes.trainable")
    model = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS["CheckpointLoaderSimple"]().load_checkpoint(
        standins["checkpoints"])[0]
    has_flag = "disable_dynamic" in inspect.signature(comfy.model_patcher.ModelPatcher.clone).parameters
    assert has_flag == hasattr(comfy.model_patcher.ModelPatcher, "is_dynamic")  # one feature, both members
    before = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    with torch.inference_mode():  # as ComfyUI runs nodes
        clone = trainable.trainable_model(model)
    assert clone is not model and not trainable.is_dynamic(clone)
    weight = next(clone.model.diffusion_model.parameters())
    assert not weight.is_inference()  # autograd can use it
    x = torch.randn(3, 4, requires_grad=True)
    (x * weight.reshape(-1)[0]).sum().backward()
    assert x.grad is not None
    after = model.model.diffusion_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
