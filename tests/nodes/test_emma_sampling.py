"""EMMA in the real ComfyUI host: schedules per model call, identities, batches, regions, ControlNet, errors."""
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from context_contract import assert_within_contract
from host_recording import record_calls, sample
from PIL import Image
from skimage import data

POSITIVE = "a portrait photograph of a person standing in a garden, soft evening light"


def image_tensor(array):
    return torch.from_numpy(np.asarray(array)).float().div(255).unsqueeze(0)


@pytest.fixture(scope="module")
def emma(comfy_inprocess, standins):
    m = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS
    ella = m["EMMALoadELLA"].execute(ella_name=standins["ella"]).result[0]
    t5 = m["EMMALoadT5"].execute(t5_name=standins["text_encoders"], precision="auto").result[0]
    positive = m["EMMATextEncode"].execute(ella=ella, t5=t5, text=POSITIVE, length="flexible").result[0]
    negative = m["EMMATextEncode"].execute(ella=ella, t5=t5, text="", length="flexible").result[0]
    model, _clip, vae = m["CheckpointLoaderSimple"]().load_checkpoint(standins["checkpoints"])[:3]
    modules = {k: m["EMMALoadModule"].execute(module_name=v).result[0] for k, v in standins["emma"].items()}
    astronaut = data.astronaut()
    face_a, aligned = face_features(m, image_tensor(astronaut)).result
    other = np.ascontiguousarray(astronaut[:, ::-1])  # mirrored and re-lit: another "identity" to the recognizer
    other = np.clip(other.astype(np.float32) * [1.0, 0.9, 0.8], 0, 255).astype(np.uint8)
    face_b = face_features(m, image_tensor(other)).result[0]
    vision = m["CLIPVisionLoader"]().load_clip(standins["clip_vision"])[0]
    reference = image_tensor(np.asarray(Image.open(comfy_inprocess.comfy_dir / "input" / "example.png").convert("RGB")))
    obj = m["EMMAImageFeatures"].execute(clip_vision=vision, image=reference, kind="object / portrait",
                                         crop="center").result[0]
    return dict(m=m, ella=ella, t5=t5, positive=positive, negative=negative, model=model, vae=vae,
                modules=modules, face_a=face_a, face_b=face_b, aligned=aligned, obj=obj)


def face_features(m, image):
    return m["EMMAFaceFeatures"].execute(image=image, pack="antelopev2", face_index=-1, det_size=640, provider="cpu")


def conditions(e, *items):
    out = None
    for module, features, weight, start, end in items:
        out = e["m"]["EMMACondition"].execute(module=e["modules"][module], features=features, weight=weight,
                                              start=start, end=end, conditions=out).result[0]
    return out


def assembled(e, conds, apply_to_negative=False):
    return e["m"]["EMMAAssemble"].execute(positive=e["positive"], negative=e["negative"], conditions=conds,
                                          apply_to_negative=apply_to_negative).result


def ella_alone(e, t):
    prompt = e["positive"][0][1]["emma_prompt"]
    with torch.no_grad():
        return e["ella"].connector(prompt.text_features.unsqueeze(0), torch.tensor([t]))


def run(e, positive, negative, steps=3, batch=1, seed=7, control_models=(), sampler="euler", scheduler="normal"):
    applied = e["m"]["EMMAApplyToModel"].execute(model=e["model"]).result[0]
    recorded, calls, hooks = record_calls(applied, e["ella"], list(control_models))
    try:
        latents = sample(e["m"], recorded, positive, negative, sampler, scheduler, steps=steps, seed=seed,
                         batch=batch)
    finally:
        for h in hooks:
            h.remove()
    return latents, calls, recorded.model.model_sampling


def rows_of(call, which):
    rows = call["context"].shape[0] // len(call["cond_or_uncond"])
    return [call["context"][i * rows:(i + 1) * rows] for i, w in enumerate(call["cond_or_uncond"]) if w == which]


def test_face_features_and_aligned_crop(emma):
    assert emma["face_a"].kind == "face" and emma["face_a"].tensors["embedding"].shape == (1, 512)
    assert torch.allclose(emma["face_a"].tensors["embedding"].norm(dim=-1), torch.ones(1), atol=1e-4)
    assert emma["aligned"].shape == (1, 224, 224, 3)
    assert not torch.allclose(emma["face_a"].tensors["embedding"], emma["face_b"].tensors["embedding"], atol=1e-2)


def test_outside_its_range_a_module_contributes_exactly_nothing(emma):
    start, end = 0.3, 0.7
    positive, negative = assembled(emma, conditions(emma, ("face", emma["face_a"], 1.0, start, end)))
    _, calls, ms = run(emma, positive, negative, steps=8)
    inside = outside = 0
    for call in calls:
        sigma = float(call["sigma"][0])
        t = float(ms.timestep(call["sigma"])[0])
        alone = ella_alone(emma, t)
        (got,) = rows_of(call, 0)
        if ms.percent_to_sigma(end) <= sigma <= ms.percent_to_sigma(start):
            inside += 1
            assert (got - alone).abs().max() > 1e-3, f"module inactive at sigma {sigma}"
        else:
            outside += 1
            # off: what the text alone gives, within the contract (the module adds an exact 0 in the run)
            assert_within_contract(got, alone.expand_as(got), f"module contributed at sigma {sigma}")
        # the negative stays text-only
        (neg,) = rows_of(call, 1)
        neg_prompt = emma["negative"][0][1]["emma_prompt"]
        with torch.no_grad():
            neg_alone = emma["ella"].connector(neg_prompt.text_features.unsqueeze(0), torch.tensor([t]))
        assert_within_contract(neg, neg_alone.expand_as(neg), "negative")
    assert inside >= 2 and outside >= 2


def test_weight_zero_and_untouched_inputs(emma):
    before = emma["positive"][0][1]["emma_prompt"]
    positive, _ = assembled(emma, conditions(emma, ("face", emma["face_a"], 0.0, 0.0, 1.0)))
    assert emma["positive"][0][1]["emma_prompt"] is before and not before.conditions  # input not mutated
    prompt = positive[0][1]["emma_prompt"]
    with torch.no_grad():
        got = prompt.context(emma["ella"].connector, torch.tensor([500.0]))
    assert torch.equal(got, ella_alone(emma, 500.0))
    assert emma["modules"]["face"].patcher in positive[0][1]["additional_models"]


def test_different_faces_give_different_conditioning_and_latents_same_inputs_same_image(emma):
    pos_a, neg = assembled(emma, conditions(emma, ("face", emma["face_a"], 1.0, 0.0, 1.0)))
    pos_b, _ = assembled(emma, conditions(emma, ("face", emma["face_b"], 1.0, 0.0, 1.0)))
    with torch.no_grad():
        ctx_a = pos_a[0][1]["emma_prompt"].context(emma["ella"].connector, torch.tensor([700.0]))
        ctx_b = pos_b[0][1]["emma_prompt"].context(emma["ella"].connector, torch.tensor([700.0]))
    assert (ctx_a - ctx_b).abs().max() > 1e-3
    lat_a, _, _ = run(emma, pos_a, neg, steps=2)
    lat_b, _, _ = run(emma, pos_b, neg, steps=2)
    lat_a2, _, _ = run(emma, pos_a, neg, steps=2)
    assert not torch.allclose(lat_a, lat_b, atol=1e-4)
    assert torch.equal(lat_a, lat_a2)


@pytest.mark.parametrize("batch", [4, 16], ids=["batch 4", "16 frames"])
def test_every_row_of_a_batch_gets_the_same_assembled_conditioning(emma, batch):
    conds = conditions(emma, ("face", emma["face_a"], 1.0, 0.0, 1.0), ("object", emma["obj"], 0.8, 0.0, 1.0))
    positive, negative = assembled(emma, conds)
    _, calls, ms = run(emma, positive, negative, steps=1, batch=batch)
    assert calls
    for call in calls:
        t = torch.tensor([float(ms.timestep(call["sigma"])[0])])
        with torch.no_grad():
            want = positive[0][1]["emma_prompt"].context(emma["ella"].connector, t)
        for rows in rows_of(call, 0):
            assert rows.shape[0] == batch
            assert_within_contract(rows, want.expand_as(rows), batch)


def test_two_regions_with_two_references_and_controlnet(emma, standins):
    m = emma["m"]
    face_pos, negative = assembled(emma, conditions(emma, ("face", emma["face_a"], 1.0, 0.0, 1.0)))
    obj_pos, _ = assembled(emma, conditions(emma, ("object", emma["obj"], 1.0, 0.0, 1.0)))
    left = torch.zeros(1, 64, 64)
    left[:, :, :32] = 1
    regions = m["ConditioningCombine"]().combine(
        m["ConditioningSetMask"]().append(face_pos, left, "default", 1.0)[0],
        m["ConditioningSetMask"]().append(obj_pos, 1 - left, "default", 1.0)[0])[0]
    control = m["ControlNetLoader"]().load_controlnet(standins["controlnet"])[0]
    pos_cn, neg_cn = m["ControlNetApplyAdvanced"]().apply_controlnet(
        regions, negative, control, torch.rand(1, 64, 64, 3), 0.8, 0.0, 1.0, vae=emma["vae"])
    _, calls, ms = run(emma, pos_cn, neg_cn, steps=2, control_models=[control.control_model])
    assert calls
    for call in calls:
        t = torch.tensor([float(ms.timestep(call["sigma"])[0])])
        with torch.no_grad():
            want = [p[0][1]["emma_prompt"].context(emma["ella"].connector, t) for p in (face_pos, obj_pos)]
        got = rows_of(call, 0)
        assert len(got) == 2
        matched = sorted(min(range(2), key=lambda i: float((g - want[i]).abs().max())) for g in got)
        assert matched == [0, 1]  # each region computed with its own reference
        for g in got:
            assert min(float((g - w).abs().max()) for w in want) < 1e-5
        assert call["control_contexts"] and torch.equal(call["control_contexts"][0], call["context"])


def test_wrong_kind_and_bad_files_are_clear_errors(emma, comfy_inprocess, standins, tmp_path, add_model_folder):
    m = emma["m"]
    with pytest.raises(ValueError, match=r"\[EMMA Condition\].*expects 'face' features.*got 'clip_tokens'"):
        conditions(emma, ("face", emma["obj"], 1.0, 0.0, 1.0))
    shutil.copyfile(comfy_inprocess.models_root / "ella" / standins["ella"], tmp_path / "looks-like-a-module.safetensors")
    (tmp_path / "corrupt-module.safetensors").write_bytes(
        (comfy_inprocess.models_root / "emma" / standins["emma"]["face"]).read_bytes()[:4096])
    add_model_folder("emma", tmp_path)
    with pytest.raises(ValueError, match=r"\[Load EMMA Module\].*ELLA connector.*Load ELLA Connector"):
        m["EMMALoadModule"].execute(module_name="looks-like-a-module.safetensors")
    with pytest.raises(ValueError, match=r"\[Load EMMA Module\].*corrupt-module.safetensors"):
        m["EMMALoadModule"].execute(module_name="corrupt-module.safetensors")
    with pytest.raises(ValueError, match=r"^\[EMMA Face Features \(InsightFace\)\] no face found in image 2 of 2"):
        blank = torch.full((1, 512, 512, 3), 0.5)
        face_features(m, torch.cat([image_tensor(data.astronaut()), blank]))
    with pytest.raises(ValueError, match=r"\[EMMA Assemble\].*ELLA Text Encode"):
        clip_like = [[torch.zeros(1, 77, 768), {"pooled_output": torch.zeros(1, 768)}]]
        m["EMMAAssemble"].execute(positive=clip_like, negative=emma["negative"],
                                  conditions=conditions(emma, ("face", emma["face_a"], 1, 0, 1)),
                                  apply_to_negative=False)


def test_features_save_and_load_through_the_nodes(emma, tmp_path, add_model_folder):
    add_model_folder("emma_features", tmp_path, is_default=True)
    m = emma["m"]
    m["EMMASaveFeatures"].execute(features=emma["face_a"], name="astronaut")
    assert (tmp_path / "astronaut.safetensors").exists()
    loaded = m["EMMALoadFeatures"].execute(features_name="astronaut.safetensors").result[0]
    assert loaded.kind == "face" and loaded.encoder == emma["face_a"].encoder == "InsightFace antelopev2 ArcFace"
    assert torch.equal(loaded.tensors["embedding"], emma["face_a"].tensors["embedding"].float())


@pytest.mark.parametrize("weight, start, end, says", [
    (float("nan"), 0.0, 1.0, "weight is nan: give a number from -2 to 5"),
    (1.0, float("-inf"), 1.0, "start is -inf: give a number from 0 to 1"),
    (1.0, 0.0, 1.5, "end is 1.5: give a number from 0 to 1"),
    (1.0, 0.8, 0.2, "start (0.8) is not before end (0.2): the condition would never act"),
])
def test_a_weight_or_schedule_that_cannot_work_is_an_error_naming_the_input(emma, weight, start, end, says):
    """ComfyUI checks the range of a typed-in number but not of a linked one, and NaN passes every check: a NaN
    weight would run and give a NaN context, a black picture."""
    with pytest.raises(ValueError) as error:
        conditions(emma, ("face", emma["face_a"], weight, start, end))
    assert str(error.value).startswith(f"[EMMA Condition] {says}")


def test_image_features_record_the_clip_vision_file_that_made_them(comfy_inprocess, standins, tmp_path,
                                                                   add_model_folder):
    """Through ComfyUI's executor (the file name comes from the graph: the model object does not keep it)."""
    from devtools.host import run_graph_in_process
    from emma_core.features_file import load_features

    folder_paths = comfy_inprocess.folder_paths
    add_model_folder("emma_features", tmp_path, is_default=True)
    Image.fromarray(data.astronaut()).save(Path(folder_paths.get_input_directory()) / "emma-style-ref.png")
    graph = {
        "vision": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": standins["clip_vision"]}},
        "image": {"class_type": "LoadImage", "inputs": {"image": "emma-style-ref.png"}},
        "features": {"class_type": "EMMAImageFeatures", "inputs": {"clip_vision": ["vision", 0], "image": ["image", 0],
                                                                   "kind": "style", "crop": "center"}},
        "save": {"class_type": "EMMASaveFeatures", "inputs": {"features": ["features", 0], "name": "style-ref"}},
    }
    run_graph_in_process(graph)
    features, meta = load_features(str(tmp_path / "style-ref.safetensors"))
    assert features.kind == "style" and features.encoder == f"CLIP vision {standins['clip_vision']}"
    assert meta["encoder"] == features.encoder


def test_features_from_another_encoder_than_the_modules_are_warned_about_once(emma, tmp_path, add_model_folder,
                                                                             caplog):
    from emma_core.emma_module import EMMAConfig, EMMAModule, save_module

    torch.manual_seed(0)
    save_module(EMMAModule(EMMAConfig(modality="face"), feature_encoder="InsightFace buffalo_l ArcFace"),
                str(tmp_path / "buffalo-face.safetensors"))
    add_model_folder("emma", tmp_path)
    module = emma["m"]["EMMALoadModule"].execute(module_name="buffalo-face.safetensors").result[0]
    assert module.module.feature_encoder == "InsightFace buffalo_l ArcFace"
    with caplog.at_level(logging.WARNING, logger="ComfyUI-EMMA"):
        for _ in range(2):
            emma["m"]["EMMACondition"].execute(module=module, features=emma["face_a"], weight=1.0, start=0.0,
                                               end=1.0)
        emma["m"]["EMMACondition"].execute(module=emma["modules"]["face"], features=emma["face_a"], weight=1.0,
                                           start=0.0, end=1.0)  # a module that does not say: nothing to compare
    warnings = [r.getMessage() for r in caplog.records if "trained on features from" in r.getMessage()]
    assert warnings == ["EMMA Condition: module buffalo-face.safetensors was trained on features from InsightFace "
                        "buffalo_l ArcFace, but these come from InsightFace antelopev2 ArcFace; it may follow them "
                        "less well (use the encoder it was trained with)"]
