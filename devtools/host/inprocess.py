"""ComfyUI in this process (no port, no subprocess; one ComfyUI per Python process), the pack loaded through
ComfyUI's own loader, graphs run by ComfyUI's own executor.

    import_comfy(comfy_dir); load_pack_in_process(models_root); run_graph_in_process(api_graph)
    object_info(); validate_graph(api_graph)    # ComfyUI's own /object_info handler and validator

Importing ComfyUI itself is comfy_import.py's job (the one place that knows the import order);
this module adds the test host's defaults: the provisioned tree, the CPU, comfy_extras' nodes.
"""
from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Optional

from . import comfy_import
from .errors import ComfyError, ComfyPromptError, execution_error
from .layout import PACK_LINK_NAME, ensure_model_folders, extra_model_paths_yaml, pack_custom_nodes_dir
from .provision import provision

_INPROC: dict[str, Any] = {}


def _run_coro(coro):
    return comfy_import.run_coroutine(coro)


def import_comfy(comfy_dir: Optional[os.PathLike] = None, *, builtin_nodes: bool = True, cpu: bool = True) -> dict:
    """Import ComfyUI from comfy_dir (default: the provisioned tree, or $EMMA_COMFYUI_DIR) into this process
    (once) and return its main modules; `cpu=False` lets ComfyUI pick the GPU (benchmarks), as a server
    started without --cpu would. See comfy_import.py for the import order it keeps."""
    mods = comfy_import.import_comfy(Path(comfy_dir or provision()).resolve(), cpu=cpu, nodes=True,
                                     builtin_nodes=builtin_nodes)
    _INPROC.update(mods)
    return dict(mods)


def register_model_folders(models_root: os.PathLike, cache_dir: Optional[os.PathLike] = None) -> Path:
    """Apply the same YAML the server gets, through ComfyUI's own loader (utils.extra_config)."""
    mods = import_comfy(_INPROC.get("comfy_dir"))
    models_root = Path(models_root).resolve()
    if _INPROC.get("models_root") == models_root:
        return _INPROC["workdir"]
    ensure_model_folders(models_root)
    tmp = Path(tempfile.mkdtemp(prefix="emma-inproc-"))
    # Outputs here include trainer checkpoints (hundreds of MB each): left behind by every test process they
    # once filled a CI disk. EMMA_KEEP_COMFY_WORKDIR=1 keeps them for a post-mortem, as for the server.
    if not os.environ.get("EMMA_KEEP_COMFY_WORKDIR"):
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    yaml_path = tmp / "extra_model_paths.yaml"
    yaml_path.write_text(extra_model_paths_yaml(models_root, None))
    mods["utils_extra_config"].load_extra_path_config(str(yaml_path))
    # Keep in-process outputs out of the ComfyUI tree.
    fp = mods["folder_paths"]
    for sub, setter in (("output", fp.set_output_directory), ("temp", fp.set_temp_directory),
                        ("input", fp.set_input_directory)):
        (tmp / sub).mkdir()
        setter(str(tmp / sub))
    _INPROC.update(models_root=models_root, workdir=tmp)
    return tmp


@contextlib.contextmanager
def model_folder(folder_paths, name: str, path: os.PathLike, is_default: bool = False):
    """Add `path` to ComfyUI's `name` folders for a with-block, then put the list back as it was and drop
    ComfyUI's cached file list for it: that cache holds each folder's mtime and raises FileNotFoundError on
    every later listing once a registered folder is gone (a passing test's tmp_path is removed)."""
    entry = folder_paths.folder_names_and_paths.get(name)
    before = list(entry[0]) if entry is not None else None
    folder_paths.add_model_folder_path(name, str(path), is_default=is_default)
    try:
        yield Path(path)
    finally:
        if before is None:
            folder_paths.folder_names_and_paths.pop(name, None)
        else:
            folder_paths.folder_names_and_paths[name][0][:] = before
        folder_paths.filename_list_cache.pop(name, None)


def load_pack_in_process(models_root: os.PathLike, cache_dir: Optional[os.PathLike] = None,
                         comfy_dir: Optional[os.PathLike] = None) -> list[str]:
    """Register the model folders and load this repo as a pack through ComfyUI's own loader
    (nodes.load_custom_node on the symlinked folder, as init_external_custom_nodes would).
    Returns the node ids the pack added. Idempotent per process."""
    mods = import_comfy(comfy_dir or _INPROC.get("comfy_dir"))
    if "pack_nodes" in _INPROC:
        return list(_INPROC["pack_nodes"])
    register_model_folders(models_root, cache_dir)
    nodes = mods["nodes"]
    link = pack_custom_nodes_dir(cache_dir) / PACK_LINK_NAME
    mods["folder_paths"].add_model_folder_path("custom_nodes", str(link.parent))
    before = set(nodes.NODE_CLASS_MAPPINGS)
    ok = _run_coro(nodes.load_custom_node(str(link), set(before), module_parent="custom_nodes"))
    if not ok:
        raise ComfyError(f"ComfyUI could not import the pack at {link} (see the log above)")
    _INPROC["pack_nodes"] = sorted(set(nodes.NODE_CLASS_MAPPINGS) - before)
    return list(_INPROC["pack_nodes"])


class _ServerStub:
    """What execution.PromptExecutor needs from server.PromptServer; records the messages."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata: dict = {}
        self.messages: list = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


def _executor(execution, server):
    """One PromptExecutor per process (its output cache then behaves like the server's), with every cache
    option off: CLASSIC caching and a cache_args that answers 0 for any key, including the ones newer
    ComfyUI releases read (0.33 reads "ram_inactive" as well as "lru" and "ram")."""
    executor = _INPROC.get("executor")
    if executor is None:
        cache_args = collections.defaultdict(int, lru=0, ram=0)
        executor = execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC, cache_args=cache_args)
        _INPROC["executor"] = executor
    executor.server = server
    return executor


def object_info() -> dict:
    """The dict GET /object_info returns, made by the handler of ComfyUI's own server.PromptServer (no socket
    is opened; the server object is made once per process)."""
    import_comfy(_INPROC.get("comfy_dir"))
    import server  # ComfyUI's server.py

    prompt_server, loop = getattr(server.PromptServer, "instance", None), None
    if prompt_server is None or not hasattr(prompt_server, "routes"):
        loop = asyncio.new_event_loop()
        prompt_server = server.PromptServer(loop)
    handler = next((route.handler for route in prompt_server.routes
                    if getattr(route, "method", None) == "GET" and getattr(route, "path", None) == "/object_info"),
                   None)
    if handler is None:
        raise ComfyError("server.PromptServer has no GET /object_info route")
    try:
        response = loop.run_until_complete(handler(None)) if loop is not None else _run_coro(handler(None))
    finally:
        if loop is not None:
            loop.close()
    return json.loads(response.body)


def validate_graph(api_graph: dict, prompt_id: Optional[str] = None) -> tuple:
    """ComfyUI's own execution.validate_prompt: (ok, error, good output ids, node errors)."""
    execution = import_comfy(_INPROC.get("comfy_dir"))["execution"]
    return _run_coro(execution.validate_prompt(prompt_id or uuid.uuid4().hex, api_graph, None))


def run_graph_in_process(api_graph: dict, prompt_id: Optional[str] = None) -> dict:
    """Validate and execute an API graph with ComfyUI's own execution.PromptExecutor.

    Returns {"outputs": {node_id: ui dict}, "meta": ..., "status_messages": [...], "output_dir": Path}.
    Raises ComfyPromptError on validation errors and ComfyExecutionError when a node fails.
    (The executor itself runs nodes under torch.inference_mode.)
    """
    mods = import_comfy(_INPROC.get("comfy_dir"))
    execution = mods["execution"]
    prompt_id = prompt_id or uuid.uuid4().hex
    valid = validate_graph(api_graph, prompt_id)
    if not valid[0]:
        raise ComfyPromptError(f"invalid graph: {valid[1]}; node_errors={valid[3]}", valid[1], valid[3])
    executor = _executor(execution, _ServerStub())
    executor.execute(api_graph, prompt_id, {"client_id": None}, valid[2])
    if not executor.success:
        raise execution_error(executor.status_messages, f"prompt {prompt_id}")
    result = dict(executor.history_result)
    result["status_messages"] = list(executor.status_messages)
    result["output_dir"] = Path(mods["folder_paths"].get_output_directory())
    return result
