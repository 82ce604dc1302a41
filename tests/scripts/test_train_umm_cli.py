"""scripts/train_umm.py on the stand-in files: it writes a projector the UMM workflow runs with, resumes from its
run folder, and refuses captions without the subject word naming its flag."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.run_workflow import run_with_file
from devtools.toy_umm_comfy import subject_folder
from emma_core.umm import load_projector

REPO = Path(__file__).resolve().parents[2]


def train_umm(comfy_dir, models_root, standins, dataset, work, *extra):
    command = [
        sys.executable, str(REPO / "scripts" / "train_umm.py"),
        "--checkpoint", str(models_root / "checkpoints" / standins["checkpoints"]),
        "--clip-vision", str(models_root / "clip_vision" / standins["clip_vision"]),
        "--dataset", str(dataset), "--subject-word", "dog", "--out", str(work / "umm-trained.safetensors"),
        "--run-dir", str(work / "run"), "--comfyui", str(comfy_dir), "--cpu", "--resolution", "64",
        "--batch-size", "1", "--val-fraction", "0.5", "--val-every", "1", "--checkpoint-every", "1",
        "--log-every", "1", *extra,
    ]
    return subprocess.run(command, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="2"), capture_output=True,
                          text=True, timeout=1500)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, comfy_dir, models_root, standins):
    work = tmp_path_factory.mktemp("umm")
    dataset = subject_folder(work / "dog", ["a photo of a dog on the beach", "a cat on a sofa", "my dog in the snow"])
    runs = [train_umm(comfy_dir, models_root, standins, dataset, work, "--steps", str(steps)) for steps in (2, 3)]
    for result in runs:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    yield work, [r.stdout + r.stderr for r in runs]
    shutil.rmtree(work, ignore_errors=True)


def test_the_script_writes_a_projector_and_resumes_its_run(trained):
    work, (first, second) = trained
    assert "01.png: the caption does not contain the subject word 'dog'" in first
    assert "resumed from None" in first and "train/held-out images 1/1" in first
    assert "resumed from 2" in second and "step 3/3" in second and "step 1/3" not in second
    assert "(0 encoded now, 2 reused)" in second  # the second run reads the first run's feature cache
    projector = load_projector(str(work / "umm-trained.safetensors"))
    assert (projector.config.image_dim, projector.config.text_dim) == (1024, 768)
    assert projector.config.image_encoder == "emma-standin-clip-vit-h.safetensors"


def test_the_trained_projector_drives_the_umm_workflow(trained, comfy_server, models_root):
    work, _ = trained
    name = "umm-cli-trained-test.safetensors"
    shutil.copyfile(work / "umm-trained.safetensors", models_root / "umm" / name)
    try:
        workflow = REPO / "workflows" / "umm_subject.json"
        assert len(run_with_file(comfy_server, workflow, "UMMLoadProjector", "projector_name", name)) == 1
    finally:
        (models_root / "umm" / name).unlink()


def test_no_caption_with_the_subject_word_names_the_flag(tmp_path, comfy_dir, models_root, standins):
    dataset = subject_folder(tmp_path / "cats", ["a photo of a cat", "a cat in the snow"])
    result = train_umm(comfy_dir, models_root, standins, dataset, tmp_path, "--steps", "1")
    assert result.returncode != 0
    assert "--subject-word: the subject word 'dog' occurs in none of the 2 captions" in result.stderr
    assert not (tmp_path / "umm-trained.safetensors").exists()
