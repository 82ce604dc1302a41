"""Atomic file writes: a crash leaves the old file or the new one, never a torn one."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Callable


def fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, write: Callable, binary: bool = True) -> None:
    """Call write(handle) on a temporary file next to `path`, fsync it, then rename it over `path`."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(folder)


def write_json_atomic(path, data) -> None:
    write_atomic(path, lambda h: json.dump(data, h, indent=1), binary=False)


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Temporary files a killed process left behind (never renamed, so never used)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if name.startswith(".") and name.endswith(".tmp"):
            try:
                os.unlink(os.path.join(folder, name))
            except OSError:
                pass


def save_safetensors_atomic(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> None:
    """A .safetensors file written through write_atomic (the one way this package writes weights)."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    write_atomic(path, lambda handle: handle.write(data))
