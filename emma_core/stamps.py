"""A cheap stamp of files that changes when any of them changes (name, size, modification time; nothing is
read), for caches and ComfyUI's re-run decisions."""
from __future__ import annotations

import hashlib
import os
from typing import Iterable


def files_stamp(paths: Iterable[str | os.PathLike], extra: str = "") -> str:
    """sha256 hex over the existing files among `paths` (missing ones count as absent), then `extra`."""
    h = hashlib.sha256()
    for path in paths:
        if os.path.isfile(path):
            st = os.stat(path)
            h.update(f"{os.path.basename(path)}:{st.st_size}:{st.st_mtime_ns};".encode())
    h.update(extra.encode("utf-8"))
    return h.hexdigest()
