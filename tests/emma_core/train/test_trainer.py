"""The trainer in emma_core: dataset format, cache, learning, exact resume, crash safety (CPU, toy sizes)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from emma_core import atomic
from emma_core.train import checkpoint as ckpt
from devtools import toy_train as toy
from emma_core.train.cache import CachedDataset, build_cache
from emma_core.train.dataset import scan_dataset
from emma_core.train.loop import TrainConfig, adamw, train
from emma_core.train.schedule import scaled_linear_alphas_cumprod, warmup_factor

REPO = Path(__file__).resolve().parents[3]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_schedule_and_warmup():
    a = scaled_linear_alphas_cumprod()
    assert a.shape == (1000,) and abs(float(a[0]) - (1 - 0.00085)) < 1e-6
    assert warmup_factor(0) == pytest.approx(0.1) and warmup_factor(500) == pytest.approx(0.55)
    assert warmup_factor(1000) == 1.0 == warmup_factor(5000)


def test_the_optimiser_is_adamw_fused_where_torch_has_it():
    # The fused kernel is a speed choice only: the weights after a few steps must be AdamW's, to float noise.
    config = TrainConfig(lr=1e-2, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(300, 7, generator=g), torch.randn(5, generator=g)]
    grads = [[torch.randn(t.shape, generator=g) for t in start] for _ in range(4)]
    ours = [torch.nn.Parameter(t.clone()) for t in start]
    reference = [torch.nn.Parameter(t.clone()) for t in start]
    opt = adamw(ours, config)
    ref = torch.optim.AdamW(reference, lr=1e-2, weight_decay=0.01, foreach=False)
    for step_grads in grads:
        for params, o in ((ours, opt), (reference, ref)):
            for p, gr in zip(params, step_grads):
                p.grad = gr.clone()
            o.step()
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)
        assert not torch.equal(a.detach(), start[0] if a.shape == start[0].shape else start[1])
    torch_version = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    assert opt.defaults["fused"] is (True if torch_version >= (2, 4) else None)


def test_dataset_scan_reports_skips(tmp_path):
    toy.write_toy_dataset(tmp_path, 3)
    (tmp_path / "0001.txt").unlink()
    (tmp_path / "0002_mask.png").write_bytes((tmp_path / "0002.png").read_bytes())
    (tmp_path / "orphan_mask.png").write_bytes((tmp_path / "0002.png").read_bytes())
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "broken.txt").write_text("x")
    scan = scan_dataset(tmp_path)
    assert [i.name for i in scan.items] == ["0000.png", "0002.png", "broken.png"]
    assert scan.items[1].mask.name == "0002_mask.png"
    reasons = dict(scan.skipped)
    assert "no caption" in reasons["0001.png"] and "without an image" in reasons["orphan_mask.png"]
    report = build_cache(scan.items, tmp_path / "cache", toy.toy_encoders(), shard_size=1, scan_skipped=scan.skipped)
    assert report.items == 2 and "unreadable" in dict(report.skipped)["broken.png"]
    again = build_cache(scan.items, tmp_path / "cache", toy.toy_encoders(), shard_size=1)
    assert again.folder == report.folder and again.encoded == 0  # reused, nothing re-encoded
    data = CachedDataset(report.folder)
    s = data.sample(0)
    assert s["latents"].shape == (4, 8, 8) and s["features"]["embedding"].shape == (16,)


def test_learning_lowers_heldout_loss_and_swapped_features_raise_it(tmp_path):
    out = toy.learn(tmp_path, steps=240, pretrain_steps=200, verbose=False)
    print(json.dumps(out))
    assert out["trained_val_loss"] < 0.9 * out["untrained_val_loss"]
    assert out["swapped_features_val_loss"] > out["trained_val_loss"] * 1.1
    assert (Path(out["run_dir"]) / "loss_curve.png").is_file() and (Path(out["run_dir"]) / "log.csv").is_file()


def _run(run_dir, steps=12, every=4):
    task, data = toy.toy_task()
    config = TrainConfig(steps=steps, batch_size=4, lr=1e-3, warmup_iters=5, checkpoint_every=every, log_every=1)
    return task, train(task, data, config, run_dir)


def test_resume_is_exact_and_a_crash_during_the_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    ref_task, ref = _run(tmp_path / "ref")
    real = atomic.write_atomic

    def half_written(handle):
        handle.write(b"half a checkpoint")
        raise OSError("disk full (simulated)")

    def crashing(path, write, binary=True):
        # the crash happens inside the real atomic writer, mid-write of the step-8 checkpoint
        real(path, half_written if Path(path).name == ckpt.checkpoint_name(8) else write, binary)

    monkeypatch.setattr(atomic, "write_atomic", crashing)
    with pytest.raises(OSError):
        _run(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "latest.json").read_text())["step"] == 4
    assert not (tmp_path / "run" / "checkpoint-00000008.pt").exists()
    monkeypatch.setattr(atomic, "write_atomic", real)
    task, result = _run(tmp_path / "run")
    assert result.resumed_from == 4 and result.step == 12
    for (k, a), b in zip(ref_task.trainable.state_dict().items(), task.trainable.state_dict().values()):
        assert torch.equal(a, b), k
    assert [r["loss"] for r in result.records] == [r["loss"] for r in ref.records]


def test_sigkill_mid_run_resumes_from_the_last_checkpoint(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "devtools.toy_train", "run", str(tmp_path / "run"), "--steps", "30",
           "--checkpoint-every", "10", "--sleep", "0.05"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    seen = []
    deadline = time.time() + 120
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("step 14 ") or time.time() > deadline:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((tmp_path / "run" / "latest.json").read_text())["step"] == 10
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    assert lines[0].startswith("step 11 ") and "resumed_from 10" in lines and lines[-1] == "done"
    ref = subprocess.run([*cmd[:4], str(tmp_path / "ref"), *cmd[5:]], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert ref.returncode == 0
    a = torch.load(tmp_path / "run" / "final.pt", weights_only=True)
    b = torch.load(tmp_path / "ref" / "final.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
