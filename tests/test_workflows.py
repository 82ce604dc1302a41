"""Every shipped workflow: converts from the UI format and runs to a saved image on the real host server."""
import json
from pathlib import Path

import pytest
from PIL import Image

from devtools.build_workflows import WORLD_WORKFLOWS
from devtools.run_workflow import ensure_input_images, prepare
from devtools.workflow_api import load_ui_workflow

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
PACK_NODES = {"EMMALoadELLA", "EMMALoadT5", "EMMATextEncode", "EMMAApplyToModel", "EMMALoadModule",
              "EMMAFaceFeatures", "EMMAImageFeatures", "EMMASaveFeatures", "EMMALoadFeatures", "EMMACondition",
              "EMMAAssemble", "UMMLoadProjector", "UMMSubjectEncode", "UMMGuider", "EMMATrainModule",
              "EmuCurateFolder", "EmuQualityTune"}
# workflows made only of stock nodes that apply a file this pack trains
STOCK_ONLY = {"emu_apply_lora.json"}
STANDIN_WORKFLOWS = [p for p in WORKFLOWS if p.name not in WORLD_WORKFLOWS]


def test_there_are_workflows():
    assert {p.name for p in WORKFLOWS} >= {
        "ella_text_to_image.json", "ella_controlnet.json", "emma_text_face.json", "emma_text_object.json",
        "emma_text_style.json", "emma_text_face_object.json", "emma_assembled_controlnet.json",
        "emma_two_regions.json", "umm_subject.json", "emu_apply_lora.json"}


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
    assert {n["class_type"] for n in graph.values()} == used_types - {"Note"}
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
