"""Training checkpoints: atomic, self-checking, resumable exactly.

    <run_dir>/checkpoint-00000300.pt    torch.save of a dict of tensors and plain values (weights_only loads)
    <run_dir>/latest.json               {"step": 300, "file": "checkpoint-00000300.pt"}, rewritten last

A checkpoint is written to a temporary file, fsynced and renamed; only then does latest.json move to it. A
crash (or SIGKILL) during the write leaves a stray temporary file that is never read (and is removed on the
next start), so a half-written checkpoint can never replace a good one. Loading falls back to the newest
older checkpoint that loads if the newest one is unreadable.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
from pathlib import Path
from typing import Optional

import torch

from .. import atomic

log = logging.getLogger(__name__)

FORMAT = "emma-train-checkpoint"
VERSION = 1
_NAME = re.compile(r"^checkpoint-(\d{8})\.pt$")


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:08d}.pt"


def rng_state() -> dict:
    """The process-global RNG states (torch CPU, CUDA, Python, NumPy) as tensors and plain values."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached": float(cached)}
    except ImportError:
        pass
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuplify(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["cached"]))


def _tuplify(value):
    return tuple(_tuplify(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_checkpoint(run_dir: str | os.PathLike, step: int, state: dict, keep: int = 2) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / checkpoint_name(step)
    payload = {"format": FORMAT, "version": VERSION, "step": int(step), **state}
    atomic.write_atomic(path, lambda h: torch.save(payload, h))
    atomic.write_json_atomic(run_dir / "latest.json", {"step": int(step), "file": path.name})
    if keep > 0:
        for old in sorted(list_checkpoints(run_dir))[:-keep]:
            try:
                old[1].unlink()
            except OSError:
                pass
    return path


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted((int(m.group(1)), run_dir / name) for name in os.listdir(run_dir) if (m := _NAME.match(name)))


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not an EMMA training checkpoint")
    if int(state.get("version", 0)) > VERSION:
        raise ValueError(f"{path} has checkpoint version {state['version']}; this trainer reads up to {VERSION}")
    return state


def load_latest(run_dir: str | os.PathLike, map_location="cpu") -> Optional[dict]:
    """The newest checkpoint that loads (latest.json first), or None when the run has none."""
    run_dir = Path(run_dir)
    atomic.remove_stale_temporaries(run_dir)
    candidates = []
    latest = run_dir / "latest.json"
    if latest.is_file():
        try:
            candidates.append(run_dir / json.loads(latest.read_text())["file"])
        except (ValueError, KeyError, OSError):
            log.warning("EMMA training: %s is unreadable; looking for checkpoints", latest)
    candidates += [p for _, p in reversed(list_checkpoints(run_dir)) if p not in candidates]
    for path in candidates:
        if not path.is_file():
            continue
        try:
            return load_checkpoint(path, map_location)
        except Exception as error:  # noqa: BLE001 - a damaged file: try the one before
            log.warning("EMMA training: checkpoint %s is unreadable (%s); trying an older one", path, error)
    return None
