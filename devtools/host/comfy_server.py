"""ComfyUI's own server (`python main.py --cpu ...`) as a subprocess, with this checkout as its pack.

    with ComfyServer(provision(), models_root=Path(".cache/test-models")) as srv:
        pid = srv.queue(api_graph)
        images = srv.output_images(srv.wait(pid, timeout=120))

`python` runs it with another interpreter (a second lane's venv), `front_end_root` serves another frontend
(ComfyUI's --front-end-root). Standard library only.
"""
from __future__ import annotations

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
from pathlib import Path
from typing import Any, Optional

from .errors import ComfyError, ComfyPromptError, execution_error
from .layout import ensure_model_folders, extra_model_paths_yaml, pack_custom_nodes_dir
from .provision import provision


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
                 python: Optional[str] = None, env: Optional[dict] = None,
                 front_end_root: Optional[os.PathLike] = None):
        self.comfy_dir = Path(comfy_dir) if comfy_dir else provision(cache_dir)
        self.models_root = Path(models_root).resolve() if models_root else None
        self.cache_dir = cache_dir
        self.load_pack = load_pack
        self.extra_args = tuple(extra_args)
        self.start_timeout = start_timeout
        self.python = python or sys.executable
        self.env = env
        self.front_end_root = Path(front_end_root).resolve() if front_end_root else None
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
            if self.front_end_root is not None:
                cmd += ["--front-end-root", str(self.front_end_root)]
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
                    raise execution_error(status.get("messages", []), f"prompt {prompt_id}")
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
        # --temp-directory D makes ComfyUI write its previews into D/temp
        roots = {"output": self.output_dir, "input": self.input_dir, "temp": self.workdir / "temp" / "temp"}
        paths = []
        for node_output in history.get("outputs", {}).values():
            for image in node_output.get("images", []) or []:
                root = roots.get(image.get("type", "output"), self.output_dir)
                paths.append(root / image.get("subfolder", "") / image["filename"])
        return paths
