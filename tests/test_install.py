"""The README's install ("Install into your ComfyUI") in FRESH virtual environments.

1. A ComfyUI-like environment that already has torch (torch==2.13.0, a CPU build where pip's find-links
   provide one; EMMA_TEST_TORCH_SPEC names another):
   `pip install -r requirements.txt` then `python install.py` leaves torch's version unchanged and ends with
   exactly one onnxruntime distribution, which imports and runs face extraction on the CPU
   (emma_core.face on the generated antelopev2 pack, a real face photo).
2. A CUDA user's environment with onnxruntime-gpu already installed: the same install keeps it as the
   only build (insightface's hard requirement on `onnxruntime` must not add the CPU build), and
   install.py repairs the broken doubled state (both builds in one folder) back to onnxruntime-gpu alone.

Slow (two venvs, real pip): marked `install` and `slow`; `pytest -m "not slow"` skips them. Wheels come from pip's
cache or the configured indexes; onnxruntime-gpu (a 256 MB wheel) is downloaded once into .cache/wheels.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".cache" / "wheels"
TORCH_SPEC = os.environ.get("EMMA_TEST_TORCH_SPEC", "torch==2.13.0")  # not .venv's torch, on purpose
ORT_GPU_SPEC = "onnxruntime-gpu==1.31.1"

# The two fresh-venv tests carry `install` (and so `slow`, tests/conftest.py); the others are quick.


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def _venv(path: Path) -> Path:
    _run([sys.executable, "-m", "venv", path])
    py = path / "bin" / "python"
    return py


def _pip(py: Path, *args) -> subprocess.CompletedProcess:
    extra = ["--find-links", WHEELS] if WHEELS.is_dir() else []
    return _run([py, "-m", "pip", *args, *extra] if args[0] == "install" else [py, "-m", "pip", *args],
                env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))


def _readme_install(py: Path) -> str:
    """What README's "Install into your ComfyUI" says, run with the environment's Python."""
    _pip(py, "install", "-q", "-r", REPO / "requirements.txt")
    return _run([py, REPO / "install.py"], cwd=REPO).stdout


STATE = textwrap.dedent("""
    import json, importlib.metadata as md
    builds = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
              "onnxruntime-silicon", "onnxruntime-rocm", "onnxruntime-qnn", "onnxruntime-training")
    found = {}
    for d in md.distributions():
        name = (d.metadata["Name"] or "").lower().replace("_", "-")
        if name in builds or name in ("torch", "insightface"):
            found[name] = d.version
    print(json.dumps(found))
""")

FACE = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import onnxruntime
    from skimage import data
    from emma_core.face import FaceAnalyzer
    analyzer = FaceAnalyzer(sys.argv[2], "antelopev2", providers=["CPUExecutionProvider"], det_size=320)
    face = analyzer.analyze(data.astronaut())
    assert face.embedding.shape == (512,), face.embedding.shape
    print(onnxruntime.__version__, analyzer.providers, round(float(face.det_score), 3))
""")


def _state(py: Path) -> dict:
    return json.loads(_run([py, "-c", STATE]).stdout)


def _face(py: Path, face_root: Path) -> str:
    return _run([py, "-c", FACE, REPO, face_root]).stdout


def _ort_builds(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith("onnxruntime")}


@pytest.fixture(scope="module")
def face_root(tmp_path_factory) -> Path:
    from devtools.face_packs import ensure_face_packs

    return ensure_face_packs(tmp_path_factory.mktemp("insightface"))


def test_requirements_match_pyproject_and_leave_torch_and_onnxruntime_out():
    reqs = [line.split("#", 1)[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    reqs = [r for r in reqs if r]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert reqs == project["project"]["dependencies"]
    names = {r.split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in reqs}
    assert not names & {"torch", "torchvision", "torchaudio", "onnxruntime", "onnxruntime-gpu", "insightface",
                        "opencv-python"}
    comfy = project["tool"]["comfy"]
    # The lowest ComfyUI the test lanes run (scripts/test.sh: the default lane's tree).
    assert comfy["requires-comfyui"] == ">=0.3.75" and comfy["PublisherId"] and comfy["DisplayName"]
    assert {m["location"].strip("/").split("/")[0] for m in comfy["Models"]} >= {
        "ella", "text_encoders", "checkpoints", "controlnet", "clip_vision", "insightface"}
    assert all(m["model_url"].startswith("https://") for m in comfy["Models"])


def test_install_choices_without_pip(monkeypatch):
    sys.path.insert(0, str(REPO))
    import install

    assert install.choose_build({}, None) == "onnxruntime"
    assert install.choose_build({"onnxruntime": "1"}, None) == "onnxruntime"
    assert install.choose_build({"onnxruntime-gpu": "1"}, None) == "onnxruntime-gpu"
    assert install.choose_build({"onnxruntime": "1", "onnxruntime-gpu": "1"}, None) == "onnxruntime-gpu"
    assert install.choose_build({"onnxruntime-gpu": "1"}, "cpu") == "onnxruntime"
    assert install.choose_build({"onnxruntime": "1"}, "gpu") == "onnxruntime-gpu"


@pytest.mark.install
def test_fresh_env_with_torch_gets_one_cpu_onnxruntime_and_runs_faces(tmp_path, face_root):
    py = _venv(tmp_path / "venv")
    _pip(py, "install", "-q", TORCH_SPEC)
    torch_before = _state(py)["torch"]

    log = _readme_install(py)

    state = _state(py)
    assert state["torch"] == torch_before, f"torch changed: {torch_before} -> {state['torch']}\n{log}"
    assert _ort_builds(state) == {"onnxruntime": state["onnxruntime"]}, state
    assert state["insightface"].startswith("2."), state
    print(_face(py, face_root))
    # Re-running (ComfyUI-Manager does on every update) changes nothing.
    again = _run([py, REPO / "install.py"], cwd=REPO).stdout
    assert "$ " not in again, again
    assert _state(py) == state


@pytest.mark.install
def test_existing_onnxruntime_gpu_stays_the_only_build(tmp_path, face_root):
    WHEELS.mkdir(parents=True, exist_ok=True)
    if not list(WHEELS.glob("onnxruntime_gpu-1.31.1-*.whl")):
        _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", WHEELS, ORT_GPU_SPEC])
    py = _venv(tmp_path / "venv")
    _pip(py, "install", "-q", ORT_GPU_SPEC)  # what a CUDA user installed first (README, CUDA section)

    log = _readme_install(py)
    state = _state(py)
    assert _ort_builds(state) == {"onnxruntime-gpu": "1.31.1"}, f"{state}\n{log}"
    print(_face(py, face_root))  # the GPU build runs on the CPU when asked to

    # The classic breakage: something (e.g. `pip install insightface`) adds the CPU build on top.
    _pip(py, "install", "-q", "onnxruntime==1.31.1")
    assert set(_ort_builds(_state(py))) == {"onnxruntime", "onnxruntime-gpu"}
    log = _run([py, REPO / "install.py"], cwd=REPO).stdout
    state = _state(py)
    assert _ort_builds(state) == {"onnxruntime-gpu": "1.31.1"}, f"{state}\n{log}"
    print(_face(py, face_root))
