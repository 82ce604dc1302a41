"""The headless trainer under torchrun (2 processes, gloo on CPU) makes a module the inference nodes run."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.datasets import face_dataset
from devtools.host import free_port
from devtools.run_workflow import run_with_file
from emma_core.emma_module import load_module

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained_module(tmp_path_factory, comfy_dir, models_root, standins):
    work = tmp_path_factory.mktemp("train")
    dataset = face_dataset(work / "faces")
    out = work / "emma-trained-face.safetensors"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()),
        str(REPO / "scripts" / "train_emma.py"),
        "--checkpoint", str(models_root / "checkpoints" / standins["checkpoints"]),
        "--ella", str(models_root / "ella" / standins["ella"]),
        "--t5", str(models_root / "text_encoders" / standins["text_encoders"]),
        "--dataset", str(dataset), "--modality", "face", "--insightface-root", str(models_root / "insightface"),
        "--out", str(out), "--run-dir", str(work / "run"), "--comfyui", str(comfy_dir), "--cpu",
        "--resolution", "64", "--steps", "2", "--batch-size", "1", "--val-every", "2",
        "--checkpoint-every", "1", "--log-every", "1", "--text-length", "flexible",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    yield out, result.stdout + result.stderr, work
    shutil.rmtree(work, ignore_errors=True)  # the run folder's checkpoints are GBs


def test_two_processes_write_one_valid_module(trained_module):
    out, output, work = trained_module
    module = load_module(str(out))
    assert module.config.modality == "face" and module.config.feature_kind == "face"
    assert int(module.metadata()["training_steps"]) == 2
    assert module.metadata()["text_length"] == "flexible"  # what the module was trained with, for EMMA Assemble
    assert "processes 2" in output
    assert (work / "run" / "log.csv").exists()


def test_trained_module_drives_a_workflow_in_the_host(trained_module, comfy_server, models_root):
    out, _, _ = trained_module
    name = "emma-trained-face-test.safetensors"
    shutil.copyfile(out, models_root / "emma" / name)
    try:
        images = run_with_file(comfy_server, REPO / "workflows" / "emma_text_face.json", "EMMALoadModule",
                               "module_name", name)
        assert len(images) == 1
    finally:
        (models_root / "emma" / name).unlink()
