"""Tests for devtools.workflow_api (UI workflow -> API prompt) against the REAL ComfyUI object_info.

ComfyUI (the provisioned tree, or $EMMA_COMFYUI_DIR) is imported in-process by devtools.host; its real
/object_info handler and execution.validate_prompt are used.
"""

import copy
import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from devtools import host  # noqa: E402
from devtools.host import model_folder  # noqa: E402
from devtools.workflow_api import (  # noqa: E402
    find_nodes,
    load_ui_workflow,
    override_inputs,
    ui_to_api,
    widget_inputs,
    widget_map,
)

pytestmark = pytest.mark.host  # imports the real ComfyUI in-process (`pytest -m "not host"` skips it)

MODEL_EXTS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".gguf")


@pytest.fixture(scope="session")
def comfy(comfy_dir):
    return host.import_comfy(comfy_dir)


@pytest.fixture(scope="session")
def object_info(comfy):
    return host.object_info()


@pytest.fixture
def input_dir(tmp_path, comfy):
    """Point ComfyUI's input directory at a temp dir for the test (restored afterwards)."""
    fp = comfy["folder_paths"]
    old = fp.get_input_directory()
    d = tmp_path / "input"
    d.mkdir()
    fp.set_input_directory(str(d))
    try:
        yield d
    finally:
        fp.set_input_directory(old)


def _make_images(api, directory):
    from PIL import Image

    for entry in api.values():
        if entry["class_type"] in ("LoadImage", "LoadImageMask"):
            name = entry["inputs"]["image"]
            path = directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGBA", (64, 64), (120, 30, 200, 255)).convert(
                "RGB" if name.lower().endswith((".jpg", ".jpeg")) else "RGBA").save(path)


def _validate(api):
    return host.validate_graph(copy.deepcopy(api), "devtools")


def _only_missing_model_errors(result):
    """Assert the validator's only complaints are model files not found (value_not_in_list)."""
    ok, error, outputs, node_errors = result
    bad = []
    for nid, e in node_errors.items():
        for r in e["errors"]:
            received = str(r.get("extra_info", {}).get("received_value", ""))
            if r["type"] != "value_not_in_list" or not received.lower().endswith(MODEL_EXTS):
                bad.append((nid, e["class_type"], r["type"], r["message"], r["details"]))
    assert not bad, bad
    if not ok:
        assert error["type"] == "prompt_outputs_failed_validation", error
        assert node_errors, error
    return node_errors


# --------------------------------------------------------------------------- hand-written cases
# Shapes as comfyui-frontend 1.32 saves them (every widget also listed in `inputs` with `widget`).

def _w(name, typ, link=None):
    return {"localized_name": name, "name": name, "type": typ, "widget": {"name": name}, "link": link}


def _s(name, typ, link):
    return {"localized_name": name, "name": name, "type": typ, "link": link}


def _o(name, typ, links):
    return {"localized_name": name, "name": name, "type": typ, "links": links}


def _node(nid, typ, inputs, outputs, widgets_values, mode=0, **extra):
    node = {"id": nid, "type": typ, "pos": [0, 0], "size": [300, 100], "flags": {}, "order": 0,
            "mode": mode, "inputs": inputs, "outputs": outputs,
            "properties": {"cnr_id": "comfy-core", "ver": "0.3.75", "Node name for S&R": typ},
            "widgets_values": widgets_values}
    node.update(extra)
    return node


def _workflow(nodes, links, **extra):
    wf = {"id": "00000000-0000-4000-8000-000000000000", "revision": 0,
          "last_node_id": max(n["id"] for n in nodes), "last_link_id": max([l[0] for l in links] or [0]),
          "nodes": nodes, "links": links, "groups": [], "config": {},
          "extra": {"ds": {"scale": 1, "offset": [0, 0]}, "frontendVersion": "1.32.9"},
          "version": 0.4}
    wf.update(extra)
    return wf


def txt2img_workflow():
    """Checkpoint -> 2x CLIPTextEncode; EmptyLatent -> (bypassed) LatentUpscale -> KSampler whose
    seed comes from a PrimitiveNode; VAE through a Reroute; VAEDecode -> SaveImage; Note + MarkdownNote."""
    nodes = [
        _node(4, "CheckpointLoaderSimple", [_w("ckpt_name", "COMBO")],
              [_o("MODEL", "MODEL", [1]), _o("CLIP", "CLIP", [3, 5]), _o("VAE", "VAE", [8])],
              ["v1-5-pruned-emaonly-fp16.safetensors"]),
        _node(6, "CLIPTextEncode", [_s("clip", "CLIP", 3), _w("text", "STRING")],
              [_o("CONDITIONING", "CONDITIONING", [4])], ["a photo of a cat"]),
        _node(7, "CLIPTextEncode", [_s("clip", "CLIP", 5), _w("text", "STRING")],
              [_o("CONDITIONING", "CONDITIONING", [6])], ["blurry, watermark"]),
        _node(5, "EmptyLatentImage",
              [_w("width", "INT"), _w("height", "INT"), _w("batch_size", "INT")],
              [_o("LATENT", "LATENT", [10])], [512, 512, 1]),
        _node(12, "LatentUpscale",
              [_s("samples", "LATENT", 10), _w("upscale_method", "COMBO"), _w("width", "INT"),
               _w("height", "INT"), _w("crop", "COMBO")],
              [_o("LATENT", "LATENT", [2])], ["nearest-exact", 768, 768, "disabled"], mode=4),
        _node(3, "KSampler",
              [_s("model", "MODEL", 1), _s("positive", "CONDITIONING", 4),
               _s("negative", "CONDITIONING", 6), _s("latent_image", "LATENT", 2),
               _w("seed", "INT", 11), _w("steps", "INT"), _w("cfg", "FLOAT"),
               _w("sampler_name", "COMBO"), _w("scheduler", "COMBO"), _w("denoise", "FLOAT")],
              [_o("LATENT", "LATENT", [7])],
              [156680208700286, "randomize", 20, 8, "euler", "normal", 1]),
        {"id": 13, "type": "PrimitiveNode", "pos": [0, 0], "size": [210, 82], "flags": {}, "order": 1,
         "mode": 0, "inputs": [],
         "outputs": [{"name": "INT", "type": "INT", "widget": {"name": "seed"}, "links": [11]}],
         "title": "seed", "properties": {"Run widget replace on values": False},
         "widgets_values": [42, "fixed"]},
        {"id": 10, "type": "Reroute", "pos": [0, 0], "size": [75, 26], "flags": {}, "order": 2,
         "mode": 0, "inputs": [{"name": "", "type": "*", "link": 8}],
         "outputs": [{"name": "", "type": "VAE", "links": [9]}],
         "properties": {"showOutputText": False, "horizontal": False}},
        _node(8, "VAEDecode", [_s("samples", "LATENT", 7), _s("vae", "VAE", 9)],
              [_o("IMAGE", "IMAGE", [12])], []),
        _node(9, "SaveImage", [_s("images", "IMAGE", 12), _w("filename_prefix", "STRING")], [],
              ["ComfyUI"]),
        {"id": 14, "type": "Note", "pos": [0, 0], "size": [300, 100], "flags": {}, "order": 3,
         "mode": 0, "inputs": [], "outputs": [], "properties": {"text": ""},
         "widgets_values": ["Download the checkpoint first"], "color": "#432", "bgcolor": "#653"},
        {"id": 15, "type": "MarkdownNote", "pos": [0, 0], "size": [300, 100], "flags": {},
         "order": 4, "mode": 0, "inputs": [], "outputs": [], "properties": {},
         "widgets_values": ["## Model links"]},
    ]
    links = [
        [1, 4, 0, 3, 0, "MODEL"], [3, 4, 1, 6, 0, "CLIP"], [5, 4, 1, 7, 0, "CLIP"],
        [4, 6, 0, 3, 1, "CONDITIONING"], [6, 7, 0, 3, 2, "CONDITIONING"],
        [10, 5, 0, 12, 0, "LATENT"], [2, 12, 0, 3, 3, "LATENT"], [11, 13, 0, 3, 4, "INT"],
        [7, 3, 0, 8, 0, "LATENT"], [8, 4, 2, 10, 0, "VAE"], [9, 10, 0, 8, 1, "VAE"],
        [12, 8, 0, 9, 0, "IMAGE"],
    ]
    return _workflow(nodes, links)


TXT2IMG_API = {
    "4": {"class_type": "CheckpointLoaderSimple",
          "inputs": {"ckpt_name": "v1-5-pruned-emaonly-fp16.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, watermark", "clip": ["4", 1]}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
    "3": {"class_type": "KSampler",
          "inputs": {"model": ["4", 0], "seed": 42, "steps": 20, "cfg": 8, "sampler_name": "euler",
                     "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
                     "latent_image": ["5", 0], "denoise": 1}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}


def test_txt2img_exact(object_info):
    api = ui_to_api(txt2img_workflow(), object_info)
    assert api == TXT2IMG_API
    # input order follows object_info
    assert list(api["3"]["inputs"]) == object_info["KSampler"]["input_order"]["required"]


def test_txt2img_validates_except_model(object_info):
    api = ui_to_api(txt2img_workflow(), object_info)
    node_errors = _only_missing_model_errors(_validate(api))
    assert set(node_errors) == {"4"}


def test_txt2img_with_model_present_validates(object_info, comfy, tmp_path):
    """override_inputs swaps the checkpoint for a file that exists: the graph then fully validates."""
    fp = comfy["folder_paths"]
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    (ckpt_dir / "tiny-sd15.safetensors").write_bytes(b"")
    with model_folder(fp, "checkpoints", ckpt_dir):
        api = ui_to_api(txt2img_workflow(), object_info)
        assert override_inputs(api, "CheckpointLoaderSimple", "ckpt_name", "tiny-sd15.safetensors") == ["4"]
        ok, error, outputs, node_errors = _validate(api)
        assert ok, (error, node_errors)
        assert outputs == ["9"] and node_errors == {}


def test_include_meta(object_info):
    api = ui_to_api(txt2img_workflow(), object_info, include_meta=True)
    assert api["3"]["_meta"] == {"title": "KSampler"}
    assert api["8"]["_meta"] == {"title": "VAE Decode"}


def test_seed_widget_value_skips_control_value(object_info):
    """Without the PrimitiveNode the seed comes from widgets_values and "randomize" is skipped."""
    wf = txt2img_workflow()
    wf["nodes"] = [n for n in wf["nodes"] if n["id"] != 13]
    wf["links"] = [l for l in wf["links"] if l[0] != 11]
    ks = next(n for n in wf["nodes"] if n["id"] == 3)
    next(i for i in ks["inputs"] if i["name"] == "seed")["link"] = None
    api = ui_to_api(wf, object_info)
    assert api["3"]["inputs"]["seed"] == 156680208700286
    assert api["3"]["inputs"]["steps"] == 20
    assert api["3"]["inputs"]["sampler_name"] == "euler"


def test_old_frontend_shape_without_widget_inputs(object_info):
    """Older frontends list only sockets (and converted widgets) in `inputs`."""
    wf = txt2img_workflow()
    for n in wf["nodes"]:
        n["inputs"] = [i for i in n["inputs"] if "widget" not in i or i.get("link") is not None]
    assert ui_to_api(wf, object_info) == TXT2IMG_API


def test_dict_links_and_dict_widgets_values(object_info):
    """Workflow schema 1.0 keeps links as objects; some nodes save widgets_values as a dict."""
    wf = txt2img_workflow()
    wf["links"] = [{"id": l[0], "origin_id": l[1], "origin_slot": l[2], "target_id": l[3],
                    "target_slot": l[4], "type": l[5]} for l in wf["links"]]
    wf["version"] = 1
    empty = next(n for n in wf["nodes"] if n["id"] == 5)
    empty["widgets_values"] = {"width": 512, "height": 512, "batch_size": 1, "not_an_input": 3}
    assert ui_to_api(wf, object_info) == TXT2IMG_API


def test_bypass_without_matching_input_removes_link(object_info):
    """A bypassed VAEDecode has no IMAGE input: the SaveImage's images input is removed."""
    wf = txt2img_workflow()
    next(n for n in wf["nodes"] if n["id"] == 8)["mode"] = 4
    api = ui_to_api(wf, object_info)
    assert "8" not in api
    assert api["9"] == {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI"}}


def test_bypass_chain_and_muted_source(object_info):
    """Bypass through two nodes; then mute the first source: the link is removed."""
    wf = txt2img_workflow()
    # insert a second bypassed LatentUpscaleBy between LatentUpscale (12) and KSampler (3)
    wf["nodes"].append(_node(16, "LatentUpscaleBy",
                             [_s("samples", "LATENT", 2), _w("upscale_method", "COMBO"),
                              _w("scale_by", "FLOAT")],
                             [_o("LATENT", "LATENT", [20])], ["nearest-exact", 1.5], mode=4))
    for l in wf["links"]:
        if l[0] == 2:
            l[3], l[4] = 16, 0
    wf["links"].append([20, 16, 0, 3, 3, "LATENT"])
    ks = next(n for n in wf["nodes"] if n["id"] == 3)
    next(i for i in ks["inputs"] if i["name"] == "latent_image")["link"] = 20
    assert ui_to_api(wf, object_info) == TXT2IMG_API

    next(n for n in wf["nodes"] if n["id"] == 5)["mode"] = 2  # mute EmptyLatentImage
    api = ui_to_api(wf, object_info)
    assert "5" not in api and "latent_image" not in api["3"]["inputs"]


def loadimage_workflow():
    """LoadImage (old frontend: extra "image" upload value) -> muted ImageInvert -> SaveImage;
    LoadImage (current frontend: no upload value) -> PreviewImage; ImageScale whose width comes
    from a real PrimitiveInt node (a link, not a value)."""
    nodes = [
        _node(1, "LoadImage", [_w("image", "COMBO")],
              [_o("IMAGE", "IMAGE", [1]), _o("MASK", "MASK", [])], ["example.png", "image"]),
        _node(2, "ImageInvert", [_s("image", "IMAGE", 1)], [_o("IMAGE", "IMAGE", [2])], [], mode=2),
        _node(3, "SaveImage", [_s("images", "IMAGE", 2), _w("filename_prefix", "STRING")], [],
              ["inverted"]),
        _node(4, "LoadImage", [_w("image", "COMBO")],
              [_o("IMAGE", "IMAGE", [3]), _o("MASK", "MASK", None)], ["example.png"]),
        _node(5, "PrimitiveInt", [_w("value", "INT")], [_o("INT", "INT", [4])], [256, "increment"]),
        _node(6, "ImageScale",
              [_s("image", "IMAGE", 3), _w("upscale_method", "COMBO"), _w("width", "INT", 4),
               _w("height", "INT"), _w("crop", "COMBO")],
              [_o("IMAGE", "IMAGE", [5])], ["bilinear", 512, 128, "center"]),
        _node(7, "PreviewImage", [_s("images", "IMAGE", 5)], [], []),
    ]
    links = [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"], [3, 4, 0, 6, 0, "IMAGE"],
             [4, 5, 0, 6, 2, "INT"], [5, 6, 0, 7, 0, "IMAGE"]]
    return _workflow(nodes, links)


LOADIMAGE_API = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
    "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "inverted"}},
    "4": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
    "5": {"class_type": "PrimitiveInt", "inputs": {"value": 256}},
    "6": {"class_type": "ImageScale",
          "inputs": {"image": ["4", 0], "upscale_method": "bilinear", "width": ["5", 0],
                     "height": 128, "crop": "center"}},
    "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
}


def test_loadimage_upload_muted_and_converted_widget(object_info):
    assert ui_to_api(loadimage_workflow(), object_info) == LOADIMAGE_API


def test_loadimage_graph_validation(object_info, input_dir):
    api = ui_to_api(loadimage_workflow(), object_info)
    _make_images(api, input_dir)
    ok, error, outputs, node_errors = _validate(api)
    # SaveImage lost its images (fed by a muted node): the real validator reports exactly that
    assert set(node_errors) == {"3"}
    assert [r["type"] for r in node_errors["3"]["errors"]] == ["required_input_missing"]
    assert outputs == ["7"] and ok  # the PreviewImage branch is valid
    del api["3"]
    ok, error, outputs, node_errors = _validate(api)
    assert ok and node_errors == {}, (error, node_errors)


def test_widget_map_and_widget_inputs(object_info):
    ks = next(n for n in txt2img_workflow()["nodes"] if n["id"] == 3)
    assert widget_map(ks, object_info) == {"seed": 156680208700286, "steps": 20, "cfg": 8,
                                           "sampler_name": "euler", "scheduler": "normal",
                                           "denoise": 1}
    w = {x["name"]: x for x in widget_inputs(object_info["KSampler"])}
    assert w["seed"]["control"] == 1 and w["steps"]["control"] == 0
    assert [x["name"] for x in widget_inputs(object_info["LoadImage"])] == ["image"]
    assert widget_inputs(object_info["LoadImage"])[0]["upload"] is True


def test_widget_map_synthetic_defs():
    """Combo with control_after_generate (control + filter values), forceInput (old value), a V3
    COMBO with options, a FLOAT with control_after_generate, noise_seed without explicit flag."""
    info = {"X": {"input": {"required": {
        "a": [["p", "q"], {"control_after_generate": True}],
        "b": ["FLOAT", {"forceInput": True}],
        "c": ["COMBO", {"options": ["u", "v"]}],
        "d": ["FLOAT", {"control_after_generate": True}],
        "noise_seed": ["INT", {}],
        "m": ["MODEL"],
    }, "optional": {"e": ["BOOLEAN", {}]}},
        "input_order": {"required": ["a", "b", "c", "d", "noise_seed", "m"], "optional": ["e"]}}}
    node = {"id": 1, "type": "X"}
    expected = {"a": "q", "c": "v", "d": 0.5, "noise_seed": 7, "e": True}
    node["widgets_values"] = ["q", "fixed", "", "v", 0.5, "fixed", 7, "randomize", True]
    assert widget_map(node, info) == expected
    node["widgets_values"] = ["q", "fixed", "", 3.0, "v", 0.5, "fixed", 7, "randomize", True]
    assert widget_map(node, info) == expected  # older frontend stored a forceInput value
    node["widgets_values"] = ["q", "fixed", "v", 0.5, "fixed", 7, "randomize", True]
    assert widget_map(node, info) == expected  # no filter-list value


def test_unknown_node_raises_with_pack_hint(object_info):
    wf = txt2img_workflow()
    vae = next(n for n in wf["nodes"] if n["id"] == 10)
    vae.update(type="VAEFromSomePack", properties={"cnr_id": "comfyui-somepack", "ver": "1.2.3"})
    with pytest.raises(ValueError) as exc:
        ui_to_api(wf, object_info)
    msg = str(exc.value)
    assert "node 10" in msg and "VAEFromSomePack" in msg and "comfyui-somepack" in msg


def test_unknown_unlinked_node_dropped(object_info):
    wf = txt2img_workflow()
    wf["nodes"].append({"id": 30, "type": "Image Comparer (rgthree)", "mode": 0,
                        "inputs": [{"name": "image_a", "type": "IMAGE", "link": 30}],
                        "outputs": [], "properties": {"cnr_id": "rgthree-comfy"},
                        "widgets_values": [[]]})
    wf["links"].append([30, 8, 0, 30, 0, "IMAGE"])
    assert ui_to_api(wf, object_info) == TXT2IMG_API


def test_subgraph_raises(object_info):
    wf = txt2img_workflow()
    sg_id = "11111111-2222-4333-8444-555555555555"
    wf["nodes"].append({"id": 40, "type": sg_id, "mode": 0, "inputs": [], "outputs": [],
                        "properties": {}, "widgets_values": []})
    wf["definitions"] = {"subgraphs": [{"id": sg_id, "name": "My Upscaler", "nodes": [], "links": []}]}
    with pytest.raises(NotImplementedError, match="My Upscaler"):
        ui_to_api(wf, object_info)


def test_override_inputs_helpers(object_info):
    api = ui_to_api(txt2img_workflow(), object_info)
    new, ids = override_inputs(api, "CLIPTextEncode", "text", str.upper, copy_graph=True)
    assert ids == ["6", "7"] and new["6"]["inputs"]["text"] == "A PHOTO OF A CAT"
    assert api["6"]["inputs"]["text"] == "a photo of a cat"
    # a link is not replaced by a plain value
    assert override_inputs(api, "VAEDecode", "vae", "x") == []
    assert find_nodes(api, "CLIPTextEncode") == ["6", "7"]


def test_load_ui_workflow(tmp_path):
    p = tmp_path / "wf.json"
    p.write_text(json.dumps(txt2img_workflow()))
    assert load_ui_workflow(p)["version"] == 0.4
    p.write_text(json.dumps(TXT2IMG_API))
    with pytest.raises(ValueError, match="not a UI-format workflow"):
        load_ui_workflow(p)


# --------------------------------------------------------------------------- real templates

def _sd15_templates():
    try:
        from comfyui_workflow_templates_core import iter_templates, get_asset_path
    except ImportError:
        return []
    # the frontend's index (media-other bundle) lists which templates are SD1.5
    try:
        idx_path = get_asset_path("default", "index.json")
    except Exception:
        idx_path = None
    names = []
    if idx_path and os.path.isfile(idx_path):
        with open(idx_path, encoding="utf-8") as f:
            for cat in json.load(f):
                for t in cat.get("templates", []):
                    if "SD1.5" in (t.get("models") or []):
                        names.append(t["name"])
    return sorted(set(names))


SD15 = _sd15_templates()


def _template_path(name):
    from comfyui_workflow_templates_core import get_asset_path

    return get_asset_path(name, f"{name}.json")


def test_sd15_templates_found():
    assert len(SD15) >= 15, SD15
    for name in ("default", "image2image", "area_composition"):
        assert name in SD15


@pytest.mark.parametrize("name", SD15 or ["<none>"])
def test_sd15_template_converts_and_validates(name, object_info, input_dir):
    if name == "<none>":
        pytest.skip("comfyui_workflow_templates not installed")
    wf = load_ui_workflow(_template_path(name))
    subgraphs = (wf.get("definitions") or {}).get("subgraphs") or []
    used = {n["type"] for n in wf["nodes"]} & {s["id"] for s in subgraphs}
    if used:
        with pytest.raises(NotImplementedError, match="subgraph"):
            ui_to_api(wf, object_info)
        pytest.skip(f"uses a subgraph: {sorted(s['name'] for s in subgraphs if s['id'] in used)}")
    try:
        api = ui_to_api(wf, object_info)
    except ValueError as exc:
        # only acceptable when a core node is missing from this ComfyUI's object_info because
        # its comfy_extras module failed to import (e.g. kornia/spandrel not installed)
        missing = sorted({n["type"] for n in wf["nodes"]
                          if n.get("mode", 0) == 0 and n["type"] not in object_info
                          and n["type"] not in ("Note", "MarkdownNote", "Reroute", "PrimitiveNode")})
        assert missing and any(t in str(exc) for t in missing), exc
        assert "comfy-core" in str(exc)
        pytest.skip(f"core node(s) {missing} not in object_info (optional dependency missing)")
    assert api
    for nid, entry in api.items():
        assert entry["class_type"] in object_info
        for v in entry["inputs"].values():
            if isinstance(v, list) and len(v) == 2 and isinstance(v[1], int):
                assert v[0] in api, (nid, v)
    _make_images(api, input_dir)
    node_errors = _only_missing_model_errors(_validate(api))
    loaders = {nid for nid in node_errors}
    assert all(api[n]["class_type"].endswith("Loader") or "Loader" in api[n]["class_type"]
               for n in loaders), loaders


def test_default_template_exact(object_info):
    """The stock default workflow gives the API graph ComfyUI's own example prompt has."""
    api = ui_to_api(load_ui_workflow(_template_path("default")), object_info)
    assert api["3"] == {"class_type": "KSampler", "inputs": {
        "model": ["4", 0], "seed": 685468484323813, "steps": 20, "cfg": 8, "sampler_name": "euler",
        "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
        "latent_image": ["5", 0], "denoise": 1}}
    assert set(api) == {"3", "4", "5", "6", "7", "8", "9"}
    assert api["9"] == {"class_type": "SaveImage", "inputs": {"filename_prefix": "SD1.5",
                                                              "images": ["8", 0]}}


def test_all_templates_convert_or_raise_documented_errors(object_info):
    """Every bundled template (all models) converts, or fails only with the documented errors:
    NotImplementedError for subgraphs, ValueError naming a node type missing from object_info."""
    try:
        from comfyui_workflow_templates_core import iter_templates
    except ImportError:
        pytest.skip("comfyui_workflow_templates not installed")
    counts = {"ok": 0, "subgraph": 0, "missing": 0}
    for entry in iter_templates():
        name = entry.template_id
        try:
            wf = load_ui_workflow(_template_path(name))
        except (FileNotFoundError, ValueError):
            continue
        try:
            api = ui_to_api(wf, object_info)
        except NotImplementedError as exc:
            assert "subgraph" in str(exc), (name, exc)
            counts["subgraph"] += 1
            continue
        except ValueError as exc:
            assert "is not in object_info" in str(exc), (name, exc)
            assert any(f"'{n['type']}'" in str(exc) for n in wf["nodes"]
                       if n["type"] not in object_info), (name, exc)
            counts["missing"] += 1
            continue
        counts["ok"] += 1
        for entry_ in api.values():
            assert entry_["class_type"] in object_info
    assert counts["ok"] >= 50, counts
