"""Contexts kept across sampling runs: a repeated run (new seed, same prompt, conditions and schedule) makes
no connector call at all. One cache per connector handle (nodes.handles.ELLAHandle)."""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from typing import Optional

import torch

# What the cache keeps across runs, in MiB (least recently used first out).
CACHE_LIMIT_MB = float(os.environ.get("EMMA_CONTEXT_CACHE_MB", "1024"))


class ContextCache:
    """Schedule contexts by content (prompt, conditions, weights, timesteps, connector), least recently used out.

    One per connector handle, so ComfyUI's node cache drops it with the handle ("free model and node cache"
    empties it); the tables held on a GPU are dropped when ComfyUI unloads the connector from it.
    """

    def __init__(self, limit_mb: float = CACHE_LIMIT_MB):
        self.limit = int(limit_mb * 2**20)
        self.entries: "OrderedDict[str, dict]" = OrderedDict()

    @property
    def bytes(self) -> int:
        return sum(table_bytes(t) for t in self.entries.values())

    def get(self, key: str) -> Optional[dict]:
        table = self.entries.get(key)
        if table is not None:
            self.entries.move_to_end(key)
        return table

    def put(self, key: str, table: dict) -> None:
        self.entries[key] = table
        self.entries.move_to_end(key)
        while len(self.entries) > 1 and self.bytes > self.limit:
            self.entries.popitem(last=False)

    def clear_device_tables(self) -> None:
        for key in [k for k, table in self.entries.items()
                    if any(t.device.type != "cpu" for t in table.values())]:
            del self.entries[key]


def table_bytes(table: dict) -> int:
    return sum(t.numel() * t.element_size() for t in table.values())


def _digest(h, value) -> None:
    if torch.is_tensor(value):
        value = value.detach().to("cpu").contiguous()
        h.update(f"{tuple(value.shape)}{value.dtype}".encode())
        h.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    else:
        h.update(repr(value).encode())


def schedule_key(handle, run, timesteps: torch.Tensor) -> str:
    """The key of a run's contexts (handle: nodes.handles.ELLAHandle; run: emma_core.prompt.PromptRun): the
    connector and every condition's module by their load tokens (nodes.handles.load_token: never reused,
    unlike id()), the rest by content."""
    prompt = run.prompt
    param = next(handle.connector.parameters())
    h = hashlib.sha256()
    for part in (handle.token, param.device, param.dtype, prompt.text_features, prompt.clip_tokens, timesteps):
        _digest(h, part)
    for condition, weight in zip(prompt.conditions, run.weights):
        _digest(h, condition.handle.token)
        for name, tensor in sorted(condition.features.tensors.items()):
            _digest(h, name)
            _digest(h, tensor)
        _digest(h, weight)
    return h.hexdigest()
