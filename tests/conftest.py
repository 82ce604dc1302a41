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

Markers, set here:
    host          tests using the host fixtures: `pytest -m "not host"` skips them
    comfy_facing  the pack through ComfyUI's own interfaces (nodes in-process, workflows, templates and node
                  docs on the server, the browser, the host itself): what every ComfyUI lane runs
    slow          the install tests and the browser test: `scripts/test.sh -m "not slow"` is the fast loop

EMMA_LANE (set by scripts/test.sh) names a second lane: only the comfy_facing tests are kept there, on the
ComfyUI that EMMA_COMFYUI_DIR names.
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
# Paths (relative to the repo) of the comfy_facing tests.
COMFY_FACING = ("tests/nodes/", "tests/test_workflows.py", "tests/test_templates.py", "tests/test_browser.py",
                "tests/test_node_docs.py", "tests/devtools/test_host.py")


def pytest_configure(config):
    config.addinivalue_line("markers", "host: uses the real ComfyUI host (provisioned tree, server or in-process)")
    config.addinivalue_line("markers", "install: builds fresh virtual environments (slow)")
    config.addinivalue_line("markers", "comfy_facing: the pack through ComfyUI's interfaces; every ComfyUI lane "
                                       "runs these")
    config.addinivalue_line("markers", "slow: install and browser tests (minutes); -m 'not slow' skips them")


def pytest_report_header(config):
    """Which ComfyUI this run is on (read from the tree, nothing is provisioned here)."""
    import torch  # noqa: F401  (the venv's own: the lanes differ in it)

    tree = Path(os.environ.get("EMMA_COMFYUI_DIR") or REPO_ROOT / ".cache" / "ComfyUI")
    version_file = tree / "comfyui_version.py"
    version = version_file.read_text().split("__version__", 1)[-1].strip(" =\n\"'") if version_file.exists() \
        else "not provisioned yet"
    lane = os.environ.get("EMMA_LANE") or "default"
    return f"EMMA lane {lane}: ComfyUI {version} at {tree}; torch {torch.__version__}"


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        if HOST_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.host)
        try:
            rel = Path(item.path).resolve().relative_to(REPO_ROOT).as_posix()
        except ValueError:
            rel = ""
        if rel.startswith(COMFY_FACING):
            item.add_marker(pytest.mark.comfy_facing)
        if item.get_closest_marker("install") is not None:
            item.add_marker(pytest.mark.slow)
        # The repo root is the pack, so it has an __init__.py, so pytest makes it a Package and imports
        # that __init__.py before the first test (as package "<clone folder name>"). The pack's
        # __init__ needs ComfyUI on sys.path and is meant to be imported by ComfyUI only: skip that.
        for node in item.listchain():
            if isinstance(node, pytest.Package) and Path(node.path) == REPO_ROOT:
                node.setup = lambda: None
    # The command-line tests start processes of their own (torchrun: three, about 7 GB): they run first, while
    # this process is small; it grows with every in-process model test (see _return_memory_after_each_module),
    # and both together once ran a 24 GB CI machine out of memory. A stable sort: modules stay together.
    items.sort(key=lambda item: 0 if Path(item.path).resolve().is_relative_to(REPO_ROOT / "tests" / "scripts") else 1)
    if os.environ.get("EMMA_LANE", "default") != "default":
        dropped = [item for item in items if item.get_closest_marker("comfy_facing") is None]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = [item for item in items if item.get_closest_marker("comfy_facing") is not None]


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


@pytest.fixture
def add_model_folder(comfy_inprocess):
    """add_model_folder(name, path, is_default=False): a folder ComfyUI lists for this test only (ComfyUI's
    list and its file-list cache are put back at teardown, before the passing test's tmp_path goes)."""
    import contextlib

    from devtools import host

    with contextlib.ExitStack() as stack:
        yield lambda name, path, is_default=False: stack.enter_context(
            host.model_folder(comfy_inprocess.folder_paths, name, path, is_default))


@pytest.fixture(scope="module")
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def _return_memory_after_each_module():
    """One pytest process runs every in-process test: a module's models (checkpoints loaded by its fixtures, a
    trainer's activations) are freed when it ends, but glibc keeps the freed heap, so the process only grows
    (15 GB at the end of the default lane, and the torchrun test's two processes on top ran a 24 GB CI machine out
    of memory). After each module: ComfyUI's loaded models out, a collection, and the free heap back to the OS."""
    yield
    import ctypes
    import gc
    import sys

    mm = sys.modules.get("comfy.model_management")
    if mm is not None:
        mm.unload_all_models()
        mm.soft_empty_cache()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
