"""flan-T5 leaves the compute device when sampling starts, in the real ComfyUI host.

The host runs on the CPU here, where RAM is the compute device's memory: T5's weights must be gone while the
UNet samples and come back, bit-identical, for the next new prompt. (On a GPU the same release moves T5 to
RAM through ComfyUI's own unload; that path needs a GPU to run.)
"""
import shutil
import sys

import pytest
import torch
from host_recording import sample

FIRST = "a lighthouse on a rocky shore at dusk"
SECOND = "a brass lantern on a wooden table"


@pytest.fixture(scope="module")
def parts(comfy_inprocess, standins):
    mapping = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS
    ella = mapping["EMMALoadELLA"].execute(ella_name=standins["ella"]).result[0]
    model = mapping["CheckpointLoaderSimple"]().load_checkpoint(standins["checkpoints"])[0]
    return dict(mapping=mapping, ella=ella, model=model, t5_name=standins["text_encoders"])


def loaded_models_hold(patcher) -> bool:
    import comfy.model_management as mm

    return any(loaded.model is patcher for loaded in mm.current_loaded_models)


def materialised_bytes(t5) -> int:
    return sum(p.numel() * p.element_size() for p in t5.encoder.model.parameters() if p.device.type != "meta")


def probe_t5(model, t5_handles):
    """A clone of `model` that records, at every UNet call, whether each T5 still holds weights."""
    import comfy.patcher_extension

    seen = []

    def probe(executor, *args, **kwargs):
        seen.append([(materialised_bytes(t5), loaded_models_hold(t5.patcher)) for t5 in t5_handles])
        return executor(*args, **kwargs)

    probed = model.clone()
    probed.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test.t5_probe", probe)
    return probed, seen


def test_t5_is_freed_while_sampling_and_read_again_for_a_new_prompt(parts):
    mapping, ella = parts["mapping"], parts["ella"]
    encode = mapping["EMMATextEncode"]
    released = mapping["EMMALoadT5"].execute(t5_name=parts["t5_name"], precision="auto").result[0]
    kept = mapping["EMMALoadT5"].execute(t5_name=parts["t5_name"], precision="auto", keep_loaded=True).result[0]
    reads = []  # reads of T5's file: counted where the handle reads it, not by a counter on the handle
    read_file = released.reload
    released.reload = lambda: reads.append(1) or read_file()
    size = materialised_bytes(released)
    assert size > 0 and loaded_models_hold(released.patcher) is False

    positive = encode.execute(ella=ella, t5=released, text=FIRST, length="flexible").result[0]
    negative = encode.execute(ella=ella, t5=released, text="", length="flexible").result[0]
    encode.execute(ella=ella, t5=kept, text=FIRST, length="flexible")
    # between the encodes of one run T5 stays loaded (no read per prompt of the same run)
    assert materialised_bytes(released) == size and loaded_models_hold(released.patcher)

    applied = mapping["EMMAApplyToModel"].execute(model=parts["model"]).result[0]
    probed, seen = probe_t5(applied, [released, kept])
    latents = sample(mapping, probed, positive, negative, "euler", "normal", steps=2)
    assert torch.isfinite(latents).all()
    assert len(seen) >= 2
    for (released_bytes, released_listed), (kept_bytes, _) in seen:
        assert released_bytes == 0 and not released_listed  # nothing of T5 left at any UNet call
        assert kept_bytes == size  # keep_loaded leaves it to ComfyUI
    assert not released.weights_loaded and not reads

    # A repeated prompt is a cache hit: no read, no T5.
    again = released.encode(FIRST, None)
    assert not reads and not released.weights_loaded
    assert torch.equal(again, kept.encode(FIRST, None))

    # A new prompt reads T5 again from its file: the same weights, the same features.
    fresh = released.encode(SECOND, None)
    assert len(reads) == 1 and released.weights_loaded and materialised_bytes(released) == size
    assert torch.equal(fresh, kept.encode(SECOND, None))


def test_model_given_to_apply_gets_no_release_wrapper(parts):
    import comfy.patcher_extension

    kind = comfy.patcher_extension.WrappersMP.OUTER_SAMPLE
    model = parts["model"]
    before = dict(model.wrappers.get(kind, {}))
    applied = parts["mapping"]["EMMAApplyToModel"].execute(model=model).result[0]
    twice = parts["mapping"]["EMMAApplyToModel"].execute(model=applied).result[0]
    assert dict(model.wrappers.get(kind, {})) == before
    assert len(applied.wrappers[kind]["emma.release_t5"]) == 1
    assert len(twice.wrappers[kind]["emma.release_t5"]) == 1  # applying twice does not stack


def test_a_t5_file_gone_after_release_is_a_clear_error(parts, tmp_path):
    mapping, ella = parts["mapping"], parts["ella"]
    loader = mapping["EMMALoadT5"].execute(t5_name=parts["t5_name"], precision="auto").result[0]
    package = type(loader).__module__.rsplit(".", 1)[0]
    handles, folders, ella_nodes = (sys.modules[f"{package}.{name}"] for name in ("handles", "folders", "ella_nodes"))
    copy = tmp_path / "t5-copy.safetensors"
    shutil.copy(folders.resolve_t5(mapping["EMMALoadT5"], parts["t5_name"]), copy)  # the stand-in is one .safetensors file
    t5 = handles.load_t5_handle(str(copy), "t5-copy", ella_nodes.TOKENIZER_DIR)
    mapping["EMMATextEncode"].execute(ella=ella, t5=t5, text=FIRST, length="flexible")
    handles.release_t5_encoders()
    assert not t5.weights_loaded  # freed: the next new prompt must read the file again
    copy.unlink()
    with pytest.raises(ValueError) as error:
        mapping["EMMATextEncode"].execute(ella=ella, t5=t5, text=SECOND, length="flexible")
    message = str(error.value)
    assert message.startswith("[ELLA Text Encode] could not read the T5 encoder t5-copy again")
    assert "reload it with Load flan-T5 Encoder (ELLA) (keep_loaded on" in message
    # the cached prompt still works without the file
    cached = mapping["EMMATextEncode"].execute(ella=ella, t5=t5, text=FIRST, length="flexible").result[0]
    assert cached[0][0].shape == (1, 64, 768)
