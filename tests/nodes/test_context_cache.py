"""The cross-run context cache never hands one module's contexts to another (issue 23, point 2).

It was keyed by id(module): a module loaded after another was freed can get the freed one's id, and with the
same prompt, features and weights the cache answered with the old module's contexts. Here two different
modules are loaded and freed in turn until an id repeats, and every run's contexts are those of the module
loaded for it.
"""
import gc

import pytest
import torch
from context_contract import assert_within_contract
from host_recording import pack_module

LOADS = 150  # bounded: CPython reuses a freed module's address every 20 or so loads (measured)


@pytest.fixture(scope="module")
def setup(comfy_inprocess, standins):
    m = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS
    ella = m["EMMALoadELLA"].execute(ella_name=standins["ella"]).result[0]
    t5 = m["EMMALoadT5"].execute(t5_name=standins["text_encoders"], precision="auto").result[0]
    positive = m["EMMATextEncode"].execute(ella=ella, t5=t5, text="a portrait in a garden", length="flexible").result[0]
    model = m["CheckpointLoaderSimple"]().load_checkpoint(standins["checkpoints"])[0]
    return dict(m=m, ella=ella, positive=positive, model_sampling=model.get_model_object("model_sampling"))


def two_module_files(folder, standins, comfy_inprocess):
    """The stand-in face module and a copy with its gates turned the other way: same kind, other contexts."""
    emma_module = pack_module("emma_core.emma_module")
    first = comfy_inprocess.models_root / "emma" / standins["emma"]["face"]
    module = emma_module.load_module(str(first))
    with torch.no_grad():
        for block in module.branch:
            block.global_gate_attn.neg_()
            block.global_gate_ffn.neg_()
    emma_module.save_module(module, str(folder / "face-turned.safetensors"))
    return [standins["emma"]["face"], "face-turned.safetensors"]


def test_a_module_loaded_where_a_freed_one_was_gets_its_own_contexts(setup, standins, comfy_inprocess, tmp_path,
                                                                     add_model_folder):
    m, ella, ms = setup["m"], setup["ella"], setup["model_sampling"]
    sampling, prompt_module = pack_module("nodes.sampling"), pack_module("emma_core.prompt")
    add_model_folder("emma", tmp_path)
    names = two_module_files(tmp_path, standins, comfy_inprocess)
    features = pack_module("emma_core.adapters").Features(
        "face", {"embedding": torch.randn(1, 512, generator=torch.Generator().manual_seed(3))})
    sigmas = torch.tensor([5.0])  # a one-sigma run: each load costs one connector call
    seen: dict = {}  # id(module) -> the file loaded under it
    first_context: dict = {}  # file -> its context
    for load in range(LOADS):
        name = names[load % 2]
        handle = m["EMMALoadModule"].execute(module_name=name).result[0]
        conditions = m["EMMACondition"].execute(module=handle, features=features, weight=1.0, start=0.0,
                                                end=1.0).result[0]
        positive = m["EMMAAssemble"].execute(positive=setup["positive"], negative=setup["positive"],
                                             conditions=conditions, apply_to_negative=False).result[0]
        entry = dict(positive[0][1])
        with torch.no_grad():
            sampling.attach_schedules([entry], ms, sigmas)  # from the cache when the key is known
        context = entry[sampling.CONTEXTS_KEY][5.0]
        first_context.setdefault(name, context)
        module_id = id(handle.module)
        if seen.get(module_id, name) != name:  # this module sits where a freed module of the other file was
            with torch.no_grad():
                alone = entry[sampling.PROMPT_KEY].context(ella.connector, ms.timestep(sigmas))
            assert_within_contract(context, alone, (load, name))
            # the other module's contexts (what a key by id() handed back here) are far outside the contract
            other = first_context[seen[module_id]]
            assert float((other - alone).abs().max() / alone.abs().max()) > 1e3 * prompt_module.CONTEXT_RTOL
            return
        seen[module_id] = name
        del handle, conditions, positive, entry, context
        gc.collect()
    pytest.skip(f"no module id repeated across {LOADS} loads (nothing stale to show on this interpreter)")


def test_load_tokens_are_never_given_twice():
    handles = pack_module("nodes.handles")
    tokens = [handles.load_token() for _ in range(1000)]
    assert len(set(tokens)) == len(tokens)
