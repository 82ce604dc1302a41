"""Errors of the test host, the same for the server and the in-process runner."""
from __future__ import annotations

from typing import Any


class ProvisionError(RuntimeError):
    pass


class ComfyError(RuntimeError):
    pass


class ComfyPromptError(ComfyError):
    """The graph was refused (validation); `.node_errors` is ComfyUI's per-node dict."""

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


def execution_error(status_messages, prefix: str) -> ComfyExecutionError:
    """The ComfyExecutionError for a failed run, from ComfyUI's status messages [(kind, data), ...]."""
    details: dict = {}
    for kind, data in status_messages or []:
        if kind in ("execution_error", "execution_interrupted"):
            details = dict(data, kind=kind)
    tb = "".join(details.get("traceback", []) or [])
    return ComfyExecutionError(
        f"{prefix} failed in node {details.get('node_id')} ({details.get('node_type')}): "
        f"{details.get('exception_type')}: {details.get('exception_message')}\n{tb}", details)
