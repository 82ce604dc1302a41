"""The world's build: the module stages train in this process through the pack's job builder, with the models
loaded as scripts/train_emma.py loads them (no subprocess), on torch's own thread count; build and report do not import each other."""
import ast
import sys
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]
WORLD = REPO / "devtools" / "world"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {("." * node.level) + (node.module or "") + (":" + a.name if not node.module else "")
                      for a in node.names}
    return names


def test_build_and_report_do_not_import_each_other_and_nothing_runs_a_subprocess():
    build, report = _imports(WORLD / "build.py"), _imports(WORLD / "report.py")
    assert not {".build", ".:build", "devtools.world.build"} & report
    assert "subprocess" not in build
    assert ".files" in build and ".files" in report  # the model file names, in one place


def test_the_module_stage_trains_in_process_through_the_job_builder(monkeypatch, tmp_path):
    from devtools import host
    from devtools.host import trainer_models
    from devtools.world import build
    from emma_core.train import job as job_module

    loaded, jobs = [], []
    models = trainer_models.TrainerModels(patcher=types.SimpleNamespace(model="unet"), vae="vae", ella="ella",
                                          t5="t5")

    def load(checkpoint, ella, t5, *, comfy_dir, device):
        loaded.append((Path(checkpoint).name, Path(ella).name, Path(t5).name, comfy_dir, device))
        return models

    def run_job(job, **callbacks):
        jobs.append((job, torch.get_num_threads()))

    unloaded = []
    mm = types.SimpleNamespace(unload_all_models=lambda: unloaded.append(1), soft_empty_cache=lambda: None)
    monkeypatch.setitem(sys.modules, "comfy", types.SimpleNamespace(model_management=mm))
    monkeypatch.setitem(sys.modules, "comfy.model_management", mm)
    monkeypatch.setattr(host, "import_comfy", lambda **kw: {"comfy_dir": tmp_path / "ComfyUI"})
    monkeypatch.setattr(trainer_models, "load_trainer_models", load)
    monkeypatch.setattr(job_module, "run_job", run_job)
    w = build.World(build.SCHEDULES["ci"], tmp_path / "world")
    (w.path("ella", build.ELLA_FILE)).parent.mkdir(parents=True)
    w.path("ella", build.ELLA_FILE).write_bytes(b"ella")
    threads = torch.get_num_threads()
    monkeypatch.setattr(build, "_TRAINER_THREADS", [threads + 1])  # torch's own count, as main() found it
    try:
        torch.set_num_threads(1)
        build.train_module(w, "object", tmp_path / "data", tmp_path / "o.safetensors", 150)
        assert torch.get_num_threads() == 1  # --threads is back for the stages after
    finally:
        torch.set_num_threads(threads)
    [(checkpoint, ella, t5, comfy_dir, device)] = loaded
    assert (checkpoint, ella, t5) == (build.CHECKPOINT, build.ELLA_FILE, build.T5_FILE)
    assert comfy_dir == tmp_path / "ComfyUI" and device == torch.device("cpu")  # the ComfyUI this process imported
    [(job, trainer_threads)] = jobs
    assert trainer_threads == threads + 1
    assert job.modality == "object" and job.text_length == "flexible" and job.device == torch.device("cpu")
    assert (job.base_model, job.vae, job.ella, job.t5) == ("unet", "vae", "ella", "t5")
    assert job.load_base == models.load_base and models.t5 is None  # the job holds the encoder's only reference
    assert job.config.steps == 150 and job.config.batch_size == w.schedule.batch
    assert unloaded == [1]
