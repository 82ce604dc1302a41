"""Every shipped workflow: explains itself (a note naming each model file, groups), converts from the UI
format and runs on the real host server (to a saved image; the training one to its LoRA)."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from devtools.build_workflows import MODEL_INPUTS, TRAINING_WORKFLOWS, WORLD_WORKFLOWS
from devtools.run_workflow import EXAMPLE_PICTURES, ensure_input_images, prepare
from devtools.workflow_api import UI_ONLY_NODE_TYPES, load_ui_workflow

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
PACK_NODES = {"EMMALoadELLA", "EMMALoadT5", "EMMATextEncode", "EMMAApplyToModel", "EMMALoadModule",
              "EMMAFaceFeatures", "EMMAImageFeatures", "EMMASaveFeatures", "EMMALoadFeatures", "EMMACondition",
              "EMMAAssemble", "UMMLoadProjector", "UMMSubjectEncode", "UMMGuider", "EMMATrainModule",
              "EmuCurateFolder", "EmuQualityTune"}
# workflows made only of stock nodes that apply a file this pack trains
STOCK_ONLY = {"emu_apply_lora.json"}
STANDIN_WORKFLOWS = [p for p in WORKFLOWS if p.name not in WORLD_WORKFLOWS | TRAINING_WORKFLOWS]
SAMPLERS = {"KSampler": 3, "KSamplerAdvanced": 4}  # widget index of cfg


def test_there_are_workflows():
    assert {p.name for p in WORKFLOWS} >= {
        "ella_text_to_image.json", "ella_controlnet.json", "emma_text_face.json", "emma_text_object.json",
        "emma_text_style.json", "emma_text_face_object.json", "emma_assembled_controlnet.json",
        "emma_two_regions.json", "umm_subject.json", "emu_apply_lora.json", "emu_curate_and_tune.json"}


def _notes(ui: dict) -> str:
    return "\n".join(str(n["widgets_values"][0]) for n in ui["nodes"] if n["type"] in ("MarkdownNote", "Note"))


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_the_workflow_explains_itself(path):
    """What a user sees on opening it: a note that names every model file the graph loads (with the folder it
    goes in), groups that hold their nodes, the pictures it names, CFG 7 to 8, and no Apply node."""
    ui = load_ui_workflow(path)
    notes = _notes(ui)
    assert notes, "no note"
    for node in ui["nodes"]:
        if node["type"] in MODEL_INPUTS:
            name = node["widgets_values"][MODEL_INPUTS[node["type"]]]
            assert re.search(rf"`models/[^`]*{re.escape(name)}`", notes), f"the note does not name {name}"
        if node["type"] == "LoadImage":
            picture = node["widgets_values"][0]
            assert picture == "example.png" or (EXAMPLE_PICTURES / picture).is_file(), picture
            assert f"`{picture}`" in notes, f"the note does not say which picture {picture} is"
        if node["type"] in SAMPLERS and path.name not in WORLD_WORKFLOWS:  # the world keeps its evaluation's
            assert 7.0 <= node["widgets_values"][SAMPLERS[node["type"]]] <= 8.0
    assert "EMMAApplyToModel" not in {n["type"] for n in ui["nodes"]}
    assert ui["groups"], "no group"
    grouped = set()
    for group in ui["groups"]:
        x, y, w, h = group["bounding"]
        inside = {n["id"] for n in ui["nodes"] if x <= n["pos"][0] and n["pos"][0] + n["size"][0] <= x + w
                  and y <= n["pos"][1] - 30 and n["pos"][1] + n["size"][1] <= y + h}
        assert inside, f"group {group['title']!r} holds no node"
        assert not grouped & inside, f"group {group['title']!r} overlaps another"
        grouped |= inside
    assert {n["id"] for n in ui["nodes"] if n["type"] not in UI_ONLY_NODE_TYPES} <= grouped, "nodes outside groups"
    boxes = {n["id"]: (n["pos"][0], n["pos"][1] - 30, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in ui["nodes"]}
    groups = {g["title"]: (g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2],
                           g["bounding"][1] + g["bounding"][3]) for g in ui["groups"]}
    for things in (boxes, groups):  # a readable canvas: nothing drawn over anything else
        overlapping = [(a, b) for a in things for b in things if a < b and _overlap(things[a], things[b])]
        assert not overlapping, f"overlapping: {overlapping}"


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_pack_nodes_are_served(comfy_server):
    info = comfy_server.object_info()
    assert PACK_NODES <= set(info)
    assert info["EMMATextEncode"]["output"] == ["CONDITIONING"]
    assert info["EMMALoadELLA"]["category"].startswith("EMMA")


@pytest.mark.parametrize("path", STANDIN_WORKFLOWS, ids=[p.stem for p in STANDIN_WORKFLOWS])
def test_workflow_runs_to_a_saved_image(comfy_server, path):
    ui = load_ui_workflow(path)
    used_types = {n["type"] for n in ui["nodes"]}
    assert bool(used_types & PACK_NODES) != (path.name in STOCK_ONLY)
    prepared = prepare(path, comfy_server.object_info())
    graph = prepared.graph
    assert {n["class_type"] for n in graph.values()} == used_types - UI_ONLY_NODE_TYPES
    assert prepared.standins_used  # no real weights on a test machine
    ensure_input_images(comfy_server.input_dir, comfy_server.comfy_dir)
    history = comfy_server.run(graph, timeout=600)
    images = comfy_server.output_images(history)
    assert len(images) == 1 and images[0].exists()
    with Image.open(images[0]) as im:
        assert im.size == (64, 64)
    json.dumps(graph)  # what was queued is plain JSON


def test_a_failing_face_prompt_reports_the_node_and_the_server_keeps_serving(comfy_server):
    """A reference image without a face is a node error in the history, not a crash of the server."""
    from devtools.host import ComfyExecutionError

    ensure_input_images(comfy_server.input_dir, comfy_server.comfy_dir)
    Image.new("RGB", (256, 256), (128, 128, 128)).save(Path(comfy_server.input_dir) / "no_face.png")
    prepared = prepare(REPO / "workflows" / "emma_text_face.json", comfy_server.object_info())
    (image,) = [n for n in prepared.graph.values() if n["class_type"] == "LoadImage"
                and n["inputs"]["image"] == "emma_face.png"]
    image["inputs"]["image"] = "no_face.png"
    with pytest.raises(ComfyExecutionError) as info:
        comfy_server.run(prepared.graph, timeout=600)
    assert "[EMMA Face Features (InsightFace)] no face found in image 1 of 1" in str(info.value)
    assert "EMMAFaceFeatures" in comfy_server.object_info(refresh=True)  # still up and answering


def test_the_emu_workflow_curates_then_tunes_a_lora(comfy_server, tmp_path):
    """The shipped Emu workflow as a user runs it: first as shipped (Quality-Tune muted: only curation), then
    with Quality-Tune unmuted; a generated folder of captioned pictures and a few steps."""
    rng = np.random.default_rng(0)
    for i in range(4):
        small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
        small.resize((64, 64), Image.BICUBIC).save(tmp_path / f"img{i}.png")
        (tmp_path / f"img{i}.txt").write_text(f"a photo number {i}")
    path = REPO / "workflows" / "emu_curate_and_tune.json"
    ui = load_ui_workflow(path)
    tune_id = next(n["id"] for n in ui["nodes"] if n["type"] == "EmuQualityTune")
    fed_by_tune = {link[3] for link in ui["links"] if link[1] == tune_id}
    tuning = [n for n in ui["nodes"] if n["id"] == tune_id or n["id"] in fed_by_tune]
    assert len(tuning) == 2 and all(n["mode"] == 2 for n in tuning)  # shipped muted: the first run curates only
    info = comfy_server.object_info()
    prepared = prepare(path, info)
    (curate,) = [n for n in prepared.graph.values() if n["class_type"] == "EmuCurateFolder"]
    assert "EmuQualityTune" not in {n["class_type"] for n in prepared.graph.values()}
    curate["inputs"].update(folder=str(tmp_path), min_side=32)
    comfy_server.run(prepared.graph, timeout=600)
    assert (tmp_path / "emu_review.csv").is_file()

    for node in tuning:
        node["mode"] = 0
    unmuted = tmp_path / "unmuted.json"
    unmuted.write_text(json.dumps(ui))
    prepared = prepare(unmuted, info)
    for node in prepared.graph.values():
        if node["class_type"] == "EmuCurateFolder":
            node["inputs"].update(folder=str(tmp_path), min_side=32)
        if node["class_type"] == "EmuQualityTune":
            node["inputs"].update(folder=str(tmp_path), lora_name="emu-workflow-test.safetensors", max_steps=2,
                                  rank=2, validate_every=1, effective_batch=2, micro_batch=2, resolution=32)
    history = comfy_server.run(prepared.graph, timeout=900)
    previews = comfy_server.output_images(history)  # the loss curve and the contact sheet
    assert len(previews) == 2 and all(p.is_file() for p in previews), previews
    # Saved into the server's first loras folder (the models root's, through extra_model_paths.yaml, or the
    # ComfyUI tree's); removed again so that later tests list the same files.
    saved = [folder / "loras" / "emu-workflow-test.safetensors"
             for folder in (comfy_server.models_root, Path(comfy_server.comfy_dir) / "models")]
    assert any(p.is_file() for p in saved), saved
    for p in saved:
        p.unlink(missing_ok=True)


def test_the_first_module_workflow_trains_an_object_module(comfy_server, tmp_path):
    """The shipped training workflow as a newcomer runs it: the frozen models -> EMMA Train Module on a folder of
    captioned pictures of several aspect ratios (no references: the pictures are their own), a few steps."""
    from emma_core.emma_module import load_module

    rng = np.random.default_rng(1)
    for i, (w, h) in enumerate([(96, 64), (64, 96), (80, 80), (120, 72)]):
        small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
        small.resize((w, h), Image.BICUBIC).save(tmp_path / f"img{i}.jpg")
        (tmp_path / f"img{i}.txt").write_text(f"a photo of object {i}")
    prepared = prepare(REPO / "workflows" / "emma_train_first_module.json", comfy_server.object_info())
    (train,) = [n for n in prepared.graph.values() if n["class_type"] == "EMMATrainModule"]
    assert train["inputs"]["modality"] == "object" and "clip_vision" in train["inputs"]
    train["inputs"].update(dataset_path=str(tmp_path), module_name="first-module-test", steps=2, batch_size=2,
                           resolution=64, validation_split=0.0, preview_every=0, reference_views=1)
    history = comfy_server.run(prepared.graph, timeout=900)
    assert len(comfy_server.output_images(history)) == 2  # the loss curve and the preview
    saved = [folder / "emma" / "first-module-test.safetensors"
             for folder in (comfy_server.models_root, Path(comfy_server.comfy_dir) / "models")]
    written = [p for p in saved if p.is_file()]
    try:
        assert written, saved
        module = load_module(str(written[0]))
        assert module.config.modality == "object" and module.training_steps == 2
    finally:
        for p in saved:
            p.unlink(missing_ok=True)
