"""The world's build: the module stages train in this process through scripts/train_emma.py's own mapping onto
the job builder (no subprocess), on torch's own thread count; build and report do not import each other."""
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


def test_the_module_stage_trains_in_process_with_the_clis_arguments(monkeypatch, tmp_path):
    from devtools import host
    from devtools.world import build
    from scripts import train_emma

    calls = []

    def run(args, rank, world, device):
        calls.append((args, rank, world, device, torch.get_num_threads()))
        return 0

    unloaded = []
    mm = types.SimpleNamespace(unload_all_models=lambda: unloaded.append(1), soft_empty_cache=lambda: None)
    monkeypatch.setitem(sys.modules, "comfy", types.SimpleNamespace(model_management=mm))
    monkeypatch.setitem(sys.modules, "comfy.model_management", mm)
    monkeypatch.setattr(host, "import_comfy", lambda **kw: {"comfy_dir": tmp_path / "ComfyUI"})
    monkeypatch.setattr(train_emma, "run", run)
    threads = torch.get_num_threads()
    monkeypatch.setattr(build, "_TRAINER_THREADS", [threads + 1])  # torch's own count, as main() found it
    try:
        torch.set_num_threads(1)
        build.train_module(["--checkpoint", "c.safetensors", "--ella", "e.safetensors", "--t5", "t5.safetensors",
                            "--dataset", str(tmp_path), "--modality", "object", "--out", "o.safetensors",
                            "--run-dir", str(tmp_path / "run"), "--text-length", "flexible", "--cpu"])
        assert torch.get_num_threads() == 1  # --threads is back for the stages after
    finally:
        torch.set_num_threads(threads)
    [(args, rank, world, device, trainer_threads)] = calls
    assert (rank, world, device) == (0, 1, torch.device("cpu")) and trainer_threads == threads + 1
    assert args.modality == "object" and args.text_length == "flexible" and args.cpu
    assert args.comfyui == str(tmp_path / "ComfyUI")  # the ComfyUI this process imported
    assert unloaded == [1]
