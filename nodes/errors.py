"""Errors users read in ComfyUI's dialog: they start with the node's display name, then say the fix."""


def node_error(node: str, message: str) -> ValueError:
    return ValueError(f"[{node}] {message}")
