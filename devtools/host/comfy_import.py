"""ComfyUI as a library: the one place the pack's tools import ComfyUI (no server, no port).

    from devtools.host.comfy_import import import_comfy
    mods = import_comfy("--comfyui value or None", cpu=None)   # mods["comfy_dir"], mods["model_management"], ...

Which ComfyUI (`find_comfyui`), first match wins:
1. the folder passed explicitly (a script's --comfyui);
2. $EMMA_COMFYUI_DIR;
3. the ComfyUI this pack is installed in (`ComfyUI/custom_nodes/<pack>/`, also through a symlink);
4. the tree `scripts/setup_env.sh` provisioned in this checkout (`.cache/ComfyUI`), for development.
Anything else is an error that says what to pass.

The order of the imports is the point of this module:
- `comfy.cli_args.args.cpu` is set before `comfy.model_management` is imported: the device and the attention
  implementation are chosen at that import, the only time the flag is read;
- `utils.extra_config` is imported before `nodes`: nodes.py puts `comfy/` first on sys.path, after which a
  bare `import utils` finds `comfy/utils.py`;
- ComfyUI's folder goes first on sys.path, before a checkout of this pack (which has a `nodes/` package of
  its own: a bare `import nodes` must find ComfyUI's nodes.py).

Only the standard library is imported at module level. The pack's command-line scripts (scripts/) use this
module directly; the rest of the test host (devtools.host.inprocess) builds on it; emma_core never imports ComfyUI.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[2]
# The tree scripts/setup_env.sh provisions in a development checkout (devtools.host.provision).
DEV_TREE = REPO / ".cache" / "ComfyUI"

_STATE: dict[str, Any] = {}


class ComfyUINotFound(RuntimeError):
    """No usable ComfyUI folder: the message says where the tool looked and what to pass."""


def is_comfyui(path: os.PathLike) -> bool:
    path = Path(path)
    return (path / "main.py").is_file() and (path / "nodes.py").is_file() and (path / "comfy").is_dir()


def _containing_comfyui() -> Optional[Path]:
    """The ComfyUI whose custom_nodes/ holds this pack (the pack folder itself may be a symlink)."""
    for pack in (Path(os.path.abspath(__file__)).parents[2], REPO):
        if pack.parent.name == "custom_nodes" and is_comfyui(pack.parent.parent):
            return pack.parent.parent.resolve()
    return None


def find_comfyui(explicit: Optional[os.PathLike] = None) -> Path:
    """The ComfyUI folder to import (see the module docstring for the order). Raises ComfyUINotFound."""
    for value, origin in ((explicit, "--comfyui"), (os.environ.get("EMMA_COMFYUI_DIR"), "EMMA_COMFYUI_DIR")):
        if value:
            path = Path(value).expanduser().resolve()
            if not is_comfyui(path):
                raise ComfyUINotFound(f"{origin}={value} is not a ComfyUI folder (no main.py, nodes.py and comfy/ "
                                      f"in {path})")
            return path
    containing = _containing_comfyui()
    if containing is not None:
        return containing
    if is_comfyui(DEV_TREE):
        return DEV_TREE.resolve()
    raise ComfyUINotFound(
        "ComfyUI not found: pass --comfyui PATH (the ComfyUI folder, the one with main.py), set "
        "EMMA_COMFYUI_DIR=PATH, or run the script from the pack installed in ComfyUI/custom_nodes/. "
        f"This pack is at {REPO}, which is not inside a ComfyUI's custom_nodes/ folder.")


def _module_dir(name: str) -> Optional[Path]:
    """Folder of an imported module; for a package (ComfyUI's `comfy` is a namespace package) its own folder's
    parent, so both answer "which tree"."""
    module = sys.modules.get(name)
    if module is None:
        return None
    paths = list(getattr(module, "__path__", None) or [])
    if paths:
        return Path(paths[0]).resolve().parent
    where = getattr(module, "__file__", None)
    return Path(where).resolve().parent if where else None


def _check_not_another(comfy_dir: Path) -> None:
    """One ComfyUI per process: refuse when another tree (or the pack's own `nodes` package) is imported."""
    nodes_dir = _module_dir("nodes")
    if nodes_dir is not None and nodes_dir != comfy_dir:
        raise RuntimeError(f"sys.modules['nodes'] comes from {nodes_dir}, not from ComfyUI's {comfy_dir}: import "
                           f"ComfyUI before anything imports the pack's `nodes` package, and only one ComfyUI "
                           f"per process")
    comfy_tree = _module_dir("comfy")
    if comfy_tree is not None and comfy_tree != comfy_dir:
        raise RuntimeError(f"ComfyUI from {comfy_tree} is already imported in this process; cannot also "
                           f"import {comfy_dir}")


def run_coroutine(coro):
    """asyncio.run, also when called from a thread that already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _gpu_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or bool(mps is not None and mps.is_available())


def import_comfy(comfy_dir: Optional[os.PathLike] = None, *, cpu: Optional[bool] = True, nodes: bool = True,
                 builtin_nodes: bool = False, disable_smart_memory: bool = False) -> dict:
    """Import ComfyUI into this process (once) and return its main modules.

    comfy_dir: as `find_comfyui` (None: $EMMA_COMFYUI_DIR, the ComfyUI holding the pack, the dev tree).
    cpu: True forces ComfyUI's --cpu; False lets it pick the GPU as a server started without --cpu would;
        None uses the CPU only when there is no CUDA or MPS device. Read once: the first import decides.
    nodes: also import folder_paths, nodes and execution (False: only comfy.*, e.g. model loading).
    builtin_nodes: also register comfy_extras' nodes (nodes.init_extra_nodes without custom or API nodes).
    disable_smart_memory: ComfyUI's --disable-smart-memory (models stay where the caller put them).

    Returns {"comfy_dir", "cli_args", "model_management"} plus, with nodes, {"folder_paths", "nodes",
    "execution", "utils_extra_config"}.
    """
    comfy_dir = find_comfyui(comfy_dir)
    loaded = _STATE.get("comfy_dir")
    if loaded is not None and loaded != comfy_dir:
        raise RuntimeError(f"ComfyUI from {loaded} is already imported in this process; cannot also import "
                           f"{comfy_dir}")
    _check_not_another(comfy_dir)
    # ComfyUI's folder first on sys.path, before the repo root (see the module docstring).
    with contextlib.suppress(ValueError):
        sys.path.remove(str(comfy_dir))
    sys.path.insert(0, str(comfy_dir))

    import comfy.cli_args

    if "comfy.model_management" not in sys.modules:  # the flags are read at that import only
        comfy.cli_args.args.cpu = (not _gpu_available()) if cpu is None else bool(cpu)
        if disable_smart_memory:
            comfy.cli_args.args.disable_smart_memory = True
    import comfy.model_management

    mods: dict[str, Any] = dict(comfy_dir=comfy_dir, cli_args=comfy.cli_args,
                                model_management=comfy.model_management)
    if nodes:
        import utils.extra_config  # before `nodes`, see the module docstring
        import folder_paths
        import nodes as comfy_nodes
        import execution

        if builtin_nodes and not _STATE.get("builtin_nodes"):
            if "LatentAdd" not in comfy_nodes.NODE_CLASS_MAPPINGS:  # not registered by someone else already
                run_coroutine(comfy_nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
            _STATE["builtin_nodes"] = True
        mods.update(folder_paths=folder_paths, nodes=comfy_nodes, execution=execution,
                    utils_extra_config=utils.extra_config)
    _STATE["comfy_dir"] = comfy_dir
    return mods


def import_comfy_for_script(comfy_dir: Optional[os.PathLike] = None, **options) -> str:
    """import_comfy for a command-line script (`options` as import_comfy's): a ComfyUI that cannot be found
    ends the script with the message that says where it looked; returns the ComfyUI folder."""
    try:
        return str(import_comfy(comfy_dir, **options)["comfy_dir"])
    except ComfyUINotFound as e:
        raise SystemExit(str(e)) from None


def comfyui_version(comfy_dir: os.PathLike) -> str:
    """`__version__` of comfyui_version.py, read as text (nothing imported)."""
    import re

    text = (Path(comfy_dir) / "comfyui_version.py").read_text()
    match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", text)
    return match.group(1) if match else "unknown"
