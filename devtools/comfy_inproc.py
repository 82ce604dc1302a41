"""Import a real ComfyUI tree in-process (no server, no port) and expose what tests need.

    from devtools.comfy_inproc import object_info, load_comfy, validate_prompt
    info = object_info()                      # the same dict GET /object_info returns
    ok, err, outputs, node_errors = validate_prompt(api_graph)

The first call imports ComfyUI (torch, comfy, comfy_extras: ~5-10 s on CPU); results are
cached for the life of the process. Only one ComfyUI tree can be loaded per process.

ComfyUI itself is imported by scripts/comfy_library.py (the one place that knows the import order: args.cpu
before comfy.model_management, utils.extra_config before nodes, ComfyUI first on sys.path); custom nodes and
API nodes are not loaded unless asked.

Note that importing ComfyUI adds its folder (and ``comfy/``) to ``sys.path`` of the process.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import sys
import threading
from typing import Optional

__all__ = [
    "default_comfy_dir",
    "load_comfy",
    "object_info",
    "validate_prompt",
]

_lock = threading.RLock()
_loaded_dir: Optional[str] = None
_modules: dict = {}
_object_info_cache: dict = {}


def default_comfy_dir() -> str:
    """``$EMMA_COMFYUI_DIR`` or ``$COMFYUI_DIR`` if set, else ``<repo>/.cache/ComfyUI``."""
    env = os.environ.get("EMMA_COMFYUI_DIR") or os.environ.get("COMFYUI_DIR")
    if env:
        return os.path.abspath(env)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(repo, ".cache", "ComfyUI")


def _run(coro):
    """Run a coroutine to completion even if called from inside a running loop."""
    try:
        asyncio.get_running_loop()
        in_loop = True
    except RuntimeError:
        in_loop = False
    if not in_loop:
        return asyncio.run(coro)
    result: dict = {}

    def target():
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:  # pragma: no cover - re-raised below
            result["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def load_comfy(comfy_dir: Optional[str] = None, *, init_custom_nodes: bool = False,
               init_api_nodes: bool = False) -> dict:
    """Import ComfyUI from ``comfy_dir`` and register its built-in extra nodes (once per process).

    Returns a dict of the imported modules: ``nodes``, ``execution``, ``folder_paths``,
    ``comfy`` (package), ``model_management``, ``cli_args``.
    Raises RuntimeError if a different ComfyUI tree was already loaded in this process.
    """
    global _loaded_dir
    comfy_dir = os.path.abspath(comfy_dir or default_comfy_dir())
    with _lock:
        if _loaded_dir is not None:
            if _loaded_dir != comfy_dir:
                raise RuntimeError(
                    f"ComfyUI from {_loaded_dir} is already loaded in this process; "
                    f"cannot also load {comfy_dir}")
            return _modules
        if not os.path.isfile(os.path.join(comfy_dir, "nodes.py")):
            raise FileNotFoundError(f"no ComfyUI tree at {comfy_dir} (nodes.py missing)")
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if repo not in sys.path:
            sys.path.insert(0, repo)
        from scripts import comfy_library

        extra = init_custom_nodes or init_api_nodes
        mods = comfy_library.import_comfy(comfy_dir, cpu=True, nodes=True, builtin_nodes=not extra)
        nodes = mods["nodes"]
        if extra and "SamplerCustom" not in nodes.NODE_CLASS_MAPPINGS:
            _run(nodes.init_extra_nodes(init_custom_nodes=init_custom_nodes, init_api_nodes=init_api_nodes))
        import comfy  # noqa: E402

        _modules.update(nodes=nodes, execution=mods["execution"], folder_paths=mods["folder_paths"],
                        comfy=comfy, model_management=mods["model_management"], cli_args=mods["cli_args"])
        _loaded_dir = comfy_dir
        return _modules


def _server_object_info() -> dict:
    """Call the real ``GET /object_info`` handler of server.PromptServer (no socket is opened)."""
    import server  # ComfyUI's server.py

    ps = getattr(server.PromptServer, "instance", None)
    loop = None
    if ps is None or not hasattr(ps, "routes"):
        loop = asyncio.new_event_loop()
        ps = server.PromptServer(loop)
    handler = None
    for route in ps.routes:
        if getattr(route, "method", None) == "GET" and getattr(route, "path", None) == "/object_info":
            handler = route.handler
            break
    if handler is None:
        raise RuntimeError("server.PromptServer has no GET /object_info route")
    try:
        if loop is not None:
            response = loop.run_until_complete(handler(None))
        else:
            response = _run(handler(None))
    finally:
        if loop is not None:
            loop.close()
    return json.loads(response.body)


def object_info(comfy_dir: Optional[str] = None) -> dict:
    """The dict ``GET /object_info`` of the ComfyUI at ``comfy_dir`` would return (JSON round-tripped).

    Built by the server's own handler in-process; cached per process. Returns a deep copy, so
    callers may mutate it.
    """
    mods = load_comfy(comfy_dir)
    key = _loaded_dir
    with _lock:
        if key not in _object_info_cache:
            try:
                info = _server_object_info()
            except ImportError:
                # server.py could not be imported (e.g. a missing optional dependency): use the
                # same per-class logic the server uses, through the node classes themselves.
                info = _fallback_object_info(mods["nodes"])
            _object_info_cache[key] = info
        return copy.deepcopy(_object_info_cache[key])


def _fallback_object_info(nodes) -> dict:  # pragma: no cover - only when server.py fails
    from comfy_api.internal import _ComfyNodeInternal

    out = {}
    for name, cls in nodes.NODE_CLASS_MAPPINGS.items():
        if issubclass(cls, _ComfyNodeInternal):
            info = cls.GET_NODE_INFO_V1()
        else:
            inputs = cls.INPUT_TYPES()
            info = {
                "input": inputs,
                "input_order": {k: list(v.keys()) for k, v in inputs.items()},
                "output": cls.RETURN_TYPES,
                "output_is_list": getattr(cls, "OUTPUT_IS_LIST", [False] * len(cls.RETURN_TYPES)),
                "output_name": getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES),
                "name": name,
                "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(name, name),
                "description": getattr(cls, "DESCRIPTION", ""),
                "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"),
                "category": getattr(cls, "CATEGORY", "sd"),
                "output_node": getattr(cls, "OUTPUT_NODE", False) is True,
            }
        out[name] = info
    return json.loads(json.dumps(out, default=str))


def validate_prompt(prompt: dict, comfy_dir: Optional[str] = None, *,
                    prompt_id: str = "devtools", partial_execution_list=None):
    """Run ComfyUI's real ``execution.validate_prompt`` on an API graph.

    Returns its tuple ``(ok, error, good_output_ids, node_errors)``.
    """
    mods = load_comfy(comfy_dir)
    execution = mods["execution"]
    result = execution.validate_prompt(prompt_id, prompt, partial_execution_list)
    if asyncio.iscoroutine(result):
        result = _run(result)
    return result
