"""scripts/emu_tune.py tune as docs/emu.md runs it: --out in a ComfyUI loras folder gets the LoRA and nothing
else (Load LoRA lists every file under that folder); the run folder goes to ./emu-runs/<name>/."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors import safe_open

REPO = Path(__file__).resolve().parents[2]


def emu_tune(*args, cwd):
    command = [sys.executable, str(REPO / "scripts" / "emu_tune.py"), *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=900)


def test_only_the_lora_lands_in_the_loras_folder_and_full_mode_defaults_to_1e_5(tmp_path, comfy_dir, models_root,
                                                                                  standins):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(data / f"img{i}.png")
        (data / f"img{i}.txt").write_text(f"a photo number {i}")
    loras = tmp_path / "ComfyUI" / "models" / "loras"
    work = tmp_path / "work"
    work.mkdir()
    result = emu_tune("tune", data, "--checkpoint", models_root / "checkpoints" / standins["checkpoints"],
                      "--out", loras / "emu.safetensors", "--comfyui", comfy_dir, "--mode", "full",
                      "--max-steps", 2, "--val-every", 1, "--effective-batch", 2, "--micro-batch", 2,
                      "--resolution", 32, cwd=work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert sorted(p.relative_to(loras).as_posix() for p in loras.rglob("*")) == ["emu.safetensors"]
    run_dir = work / "emu-runs" / "emu"
    assert (run_dir / "log.csv").is_file() and list(run_dir.glob("checkpoint-*.pt")) and (run_dir / "cache").is_dir()
    assert f"run folder {Path('emu-runs') / 'emu'}" in result.stdout and "at learning rate 1e-05;" in result.stdout
    with safe_open(str(loras / "emu.safetensors"), "pt") as f:
        assert f.metadata()["ss_learning_rate"] == "1e-05"


def test_a_run_folder_inside_a_loras_folder_is_refused_before_anything_loads(tmp_path):
    loras = tmp_path / "models" / "loras"
    result = emu_tune("tune", tmp_path, "--checkpoint", tmp_path / "none.safetensors", "--out",
                      loras / "emu.safetensors", "--run-dir", loras / "emu-run", cwd=tmp_path)
    assert result.returncode != 0 and not loras.exists()
    assert f"the run folder {loras / 'emu-run'} lies in a 'loras' folder" in result.stderr
    loras.mkdir(parents=True)  # run from the loras folder itself: the default ./emu-runs/ would lie in it
    result = emu_tune("tune", tmp_path, "--checkpoint", tmp_path / "none.safetensors", "--out", "emu.safetensors",
                      cwd=loras)
    assert result.returncode != 0 and list(loras.iterdir()) == []
    assert f"the run folder {Path('emu-runs') / 'emu'} lies in a 'loras' folder" in result.stderr
