"""Shared fixtures. Everything that needs the ComfyUI host is lazy and session-scoped, so pure unit tests
never pay for provisioning, model generation or a server start.

Fixtures:
    comfy_dir        the provisioned ComfyUI tree (devtools.host.provision)
    models_root      .cache/test-models (git-ignored), filled with the stand-in models
    standins         {"checkpoints": <file name>, ...} (devtools.standins.ensure_standins)
    comfy_server     a running ComfyServer with this repo loaded as the pack (one per session)
    comfy_stock      ComfyUI imported in this process, model folders registered, pack NOT loaded
    comfy_inprocess  comfy_stock + the pack loaded through ComfyUI's own loader
    one_thread       torch on 1 thread for a module (training tests: far faster than 2 on a shared machine)

Tests using the host fixtures get the `host` marker automatically: `pytest -m "not host"` skips them.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

MODELS_ROOT = REPO_ROOT / ".cache" / "test-models"
LOG_DIR = REPO_ROOT / ".cache" / "logs"
HOST_FIXTURES = {"comfy_server", "comfy_stock", "comfy_inprocess"}


def pytest_configure(config):
    config.addinivalue_line("markers", "host: uses the real ComfyUI host (provisioned tree, server or in-process)")
    config.addinivalue_line("markers", "install: builds fresh virtual environments (slow)")


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        if HOST_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.host)
        # The repo root is the pack, so it has an __init__.py, so pytest makes it a Package and imports
        # that __init__.py before the first test (as package "<clone folder name>"). The pack's
        # __init__ needs ComfyUI on sys.path and is meant to be imported by ComfyUI only: skip that.
        for node in item.listchain():
            if isinstance(node, pytest.Package) and Path(node.path) == REPO_ROOT:
                node.setup = lambda: None


@pytest.fixture(scope="session")
def comfy_dir() -> Path:
    from devtools.host import provision

    return provision()


@pytest.fixture(scope="session")
def models_root(comfy_dir) -> Path:
    from devtools import standins

    missing = [p for paths, _ in standins._plan(MODELS_ROOT) for p in paths if not p.exists()]
    if missing:
        # Generate in a child process: the builders import ComfyUI, which a test session that only
        # talks to a server (or runs pure unit tests) should not carry around.
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "devtools.standins", str(MODELS_ROOT)], cwd=REPO_ROOT,
                       check=True, env=dict(os.environ, EMMA_COMFYUI_DIR=os.environ.get("EMMA_COMFYUI_DIR")
                                            or str(comfy_dir)))
        print(f"\nstand-in models generated in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return MODELS_ROOT


@pytest.fixture(scope="session")
def standins(models_root) -> dict:
    from devtools.standins import standin_names

    return standin_names()


@pytest.fixture(scope="session")
def comfy_server(comfy_dir, models_root):
    from devtools.host import ComfyServer

    server = ComfyServer(comfy_dir, models_root)
    try:
        server.start()
    finally:
        _keep_log(server, "comfy-server-start.log")
    try:
        yield server
    finally:
        _keep_log(server, "comfy-server.log")
        server.stop()


def _keep_log(server, name: str) -> None:
    """Copy the server log to .cache/logs/ so a CI failure can be read after the temp dir is gone."""
    try:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        if server.workdir is not None and server.log_path.exists():
            shutil.copyfile(server.log_path, LOG_DIR / name)
    except OSError:
        pass


@pytest.fixture(scope="session")
def comfy_stock(comfy_dir, models_root):
    from devtools import host

    mods = host.import_comfy(comfy_dir)
    workdir = host.register_model_folders(models_root)
    return SimpleNamespace(
        comfy_dir=comfy_dir,
        models_root=models_root,
        workdir=workdir,
        nodes=mods["nodes"],
        execution=mods["execution"],
        folder_paths=mods["folder_paths"],
        run=host.run_graph_in_process,
    )


@pytest.fixture(scope="session")
def comfy_inprocess(comfy_stock):
    from devtools import host

    pack_nodes = host.load_pack_in_process(comfy_stock.models_root, comfy_dir=comfy_stock.comfy_dir)
    return SimpleNamespace(**vars(comfy_stock), pack_nodes=pack_nodes)


@pytest.fixture(scope="module")
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
