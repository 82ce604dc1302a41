"""Gradient checkpointing per layer (emma_core/train/checkpointing.py): the module's gradients are those of the
plain forward, the wrapped layers are put back exactly (also after an exception), and what autograd keeps for
backward really drops, on ComfyUI's own UNet (a tiny SD15-detected one) and through its model apply."""
import pytest
import torch
from torch import nn

from emma_core.adapters import Features
from emma_core.ella import ELLA, ELLAConfig
from emma_core.emma_module import EMMAConfig, EMMAModule
from emma_core.train import checkpointing
from emma_core.train.checkpointing import SavedTensors, checkpointed, ella_blocks, enable, find_unet, unet_layers
from emma_core.train.objective import EMMATask, comfy_epsilon_denoiser

pytestmark = pytest.mark.usefixtures("one_thread")

# The UNet's cross-attention width (768) with a small connector.
ELLA_SMALL = ELLAConfig(time_channels=64, time_embed_dim=64, width=768, layers=2, heads=8, num_latents=8,
                        input_dim=32)


@pytest.fixture(scope="module")
def comfy(comfy_dir):
    from devtools.host import import_comfy

    import_comfy(comfy_dir, builtin_nodes=False)
    import comfy.sd

    from devtools.standins import tiny_sd15_unet_state_dict

    patcher = comfy.sd.load_diffusion_model_state_dict(tiny_sd15_unet_state_dict())
    base = patcher.model.requires_grad_(False).eval()  # ComfyUI's BaseModel (SD15 detected), on the CPU
    return base


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    ella = ELLA(ELLA_SMALL).eval()
    module = EMMAModule(EMMAConfig("face", feature_dims={"embedding": (16,)}, ella=ELLA_SMALL))
    for block in module.branch:  # open the gates: an untrained module is an exact identity
        torch.nn.init.constant_(block.global_gate_attn, 0.6)
        torch.nn.init.constant_(block.global_gate_ffn, -0.4)
    return ella, module


def batch(rows=2, side=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"latents": torch.randn(rows, 4, side, side, generator=g),
            "text": [torch.randn(5 + i, 32, generator=g) for i in range(rows)],  # two lengths: two groups
            "features": Features("face", {"embedding": torch.randn(rows, 16, generator=g)}),
            "index": torch.arange(rows)}


def task_for(base, parts, gradient_checkpointing):
    ella, module = parts
    return EMMATask(module, ella, comfy_epsilon_denoiser(base), empty_text=torch.zeros(3, 32), text_dropout=0.0,
                    cond_dropout=0.0, gradient_checkpointing=gradient_checkpointing, checkpoint_unet=base)


def forwards(base, ella) -> dict:
    """Every attribute checkpointing may wrap, as the instances hold it (None: the class's own)."""
    unet = find_unet(base)
    owners = [(layer, "forward") for _, layer in unet_layers(unet)]
    owners += [(block, name) for block in ella_blocks(ella) for name in ("attention", "feed_forward")]
    return {(id(owner), name): owner.__dict__.get(name) for owner, name in owners}


def module_gradients(task, data, seed=3):
    task.trainable.zero_grad(set_to_none=True)
    loss = task(data, torch.Generator().manual_seed(seed))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in task.trainable.named_parameters() if p.grad is not None}


def test_the_layers_found_in_comfyuis_unet(comfy, parts):
    unet = find_unet(comfy)
    assert unet is comfy.diffusion_model and find_unet(unet) is unet
    assert find_unet(type("Patcher", (), {"model": comfy})()) is unet  # a ModelPatcher's .model.diffusion_model
    assert find_unet(lambda *a: None) is None
    kinds = [kind for kind, _ in unet_layers(unet)]
    # one level: input ResBlock + ST, middle ResBlock + ST + ResBlock, two output ResBlock + ST
    assert kinds.count("resblock") == 5 and kinds.count("attention") == 4, kinds
    assert len(ella_blocks(parts[0])) == ELLA_SMALL.layers
    with pytest.raises(ValueError, match="checkpointed layers"):
        checkpointing.layer_kinds("everything")
    with pytest.raises(ValueError, match="unknown"):
        checkpointing.layer_kinds({"resblock", "conv"})


@pytest.mark.parametrize("layers", [True, "attention", "resblocks", "unet", "all"])
def test_gradients_equal_with_and_without_checkpointing(comfy, parts, layers):
    data = batch()
    loss_off, off = module_gradients(task_for(comfy, parts, False), data)
    loss_on, on = module_gradients(task_for(comfy, parts, layers), data)
    assert torch.equal(loss_on, loss_off)
    assert off.keys() == on.keys() and len(off) > 10
    for name in off:
        assert torch.allclose(on[name], off[name], rtol=1e-5, atol=1e-7), (name, (on[name] - off[name]).abs().max())
    assert any(g.abs().max() > 0 for g in off.values())


def test_the_original_forwards_are_restored(comfy, parts):
    ella, _ = parts
    before = forwards(comfy, ella)
    assert all(v is None for v in before.values())  # nothing wrapped at rest
    with checkpointed(comfy, ella, "all") as state:
        during = forwards(comfy, ella)
        assert len(state) == len(before) and all(getattr(v, "_emma_checkpointed", False) for v in during.values())
        with checkpointed(comfy, ella, "all") as nested:  # never wrapped twice
            assert len(nested) == 0
        assert forwards(comfy, ella) == during
    assert forwards(comfy, ella) == before

    with pytest.raises(RuntimeError, match="boom"):
        with checkpointed(comfy, ella, "all"):
            raise RuntimeError("boom")
    assert forwards(comfy, ella) == before

    # An instance attribute someone else set (a patch of their own) comes back as that very object.
    layer = next(layer for _, layer in unet_layers(find_unet(comfy)))
    theirs = layer.forward
    layer.forward = theirs
    try:
        state = enable(comfy, ella, "unet")
        assert layer.forward is not theirs
        state.disable()
        assert layer.__dict__["forward"] is theirs
    finally:
        del layer.forward
    assert forwards(comfy, ella) == before


def test_a_failing_training_forward_restores_them(comfy, parts):
    ella, module = parts
    before = forwards(comfy, ella)
    calls = []

    def failing(noisy, timesteps, context):  # fails inside the UNet, after some wrapped layers have run
        calls.append(sum(getattr(v, "_emma_checkpointed", False) for v in forwards(comfy, ella).values()))
        comfy.diffusion_model(noisy, timesteps.float(), context=context)
        raise RuntimeError("out of memory, say")

    task = EMMATask(module, ella, failing, empty_text=torch.zeros(3, 32), text_dropout=0.0, cond_dropout=0.0,
                    gradient_checkpointing=True, checkpoint_unet=comfy)
    with pytest.raises(RuntimeError, match="out of memory"):
        task(batch(), torch.Generator().manual_seed(0))
    assert calls and calls[0] > 0  # it was wrapped while the forward ran
    assert forwards(comfy, ella) == before


def test_no_grad_runs_the_plain_forward(comfy, parts):
    # Validation and previews: nothing is recorded, so nothing is checkpointed; the losses are the same.
    data = batch()
    off = task_for(comfy, parts, False).validation_losses(data)
    on = task_for(comfy, parts, True).validation_losses(data)
    assert torch.equal(on, off)


def test_what_backward_keeps_drops_with_checkpointing(comfy, parts):
    ella, module = parts
    frozen = [*comfy.parameters(), *comfy.buffers(), *ella.parameters(), *module.parameters()]
    kept = {}
    for layers in (False, "attention", "unet", "all"):
        task = task_for(comfy, parts, layers)
        with SavedTensors(exclude=frozen) as saved:
            loss = task(batch(rows=1, side=32), torch.Generator().manual_seed(0))
        kept[layers] = saved.fp16_bytes
        assert saved.bytes >= saved.fp16_bytes > 0  # fp32 here: fp16-equivalent is about half
        loss.backward()  # the checkpointed graph still back-propagates after the layers were restored
    # The tiny UNet's attention at 32x32 latents keeps the most (about 126 MB -> 25 MB -> 9 MB here); with
    # every layer checkpointed only the layer inputs stay.
    assert kept["attention"] < 0.5 * kept[False], kept
    assert kept["unet"] < kept["attention"] and kept["unet"] < 0.2 * kept[False], kept
    assert kept["all"] < kept["unet"], kept


class _Scaled(nn.Module):
    """A duck-typed layer whose output depends on a shared dict that changes after the call (as ComfyUI's
    transformer_options does: its transformer_index moves on)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, 6)

    def forward(self, x, context, options):
        options["seen"] = options.get("seen", 0) + 1
        return torch.tanh(self.linear(x) * options["scale"]) + context.mean()  # tanh keeps its output


class SpatialTransformer(_Scaled):
    pass


class ResBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, 6)

    def forward(self, x, emb=None):
        return torch.sin(self.linear(x)) + (0 if emb is None else emb)


class ToyUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_blocks = nn.ModuleList([nn.Sequential(ResBlock(), SpatialTransformer())])
        self.middle_block = nn.Sequential(ResBlock())
        self.output_blocks = nn.ModuleList([nn.Sequential(SpatialTransformer(), nn.Linear(6, 6))])

    def forward(self, x, context, options):
        for block in [*self.input_blocks, self.middle_block, *self.output_blocks]:
            for layer in block:
                if isinstance(layer, SpatialTransformer):
                    x = layer(x, context, options)
                    options["scale"] += 1.0  # changes before backward recomputes the layer
                elif isinstance(layer, ResBlock):
                    x = layer(x, emb=torch.ones(()))  # a keyword tensor
                else:
                    x = layer(x)
        return x


def test_recomputation_sees_the_arguments_of_the_first_call():
    torch.manual_seed(0)
    unet = ToyUNet().requires_grad_(False)
    x, start = torch.randn(3, 6), torch.randn(4)
    grads = {}
    for on in (False, True):
        context = start.clone().requires_grad_(True)
        options = {"scale": 1.0}
        with checkpointed(unet, layers="unet" if on else "none") as state:
            assert len(state) == (4 if on else 0)
            out = unet(x, context, options)
        assert options["seen"] == 2  # the caller's dict is the one the first call changes
        out.square().sum().backward()
        assert options["seen"] == 2  # the recomputation worked on a copy
        grads[on] = context.grad
    assert torch.allclose(grads[True], grads[False], rtol=1e-6, atol=1e-7)
