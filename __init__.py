"""ComfyUI-EMMA: ELLA text and EMMA multi-modal prompts for SD1.5 in ComfyUI.

ComfyUI imports this file as the pack. Nodes are registered through the V3 entry point only (defining
NODE_CLASS_MAPPINGS here would make ComfyUI ignore it).
"""
from .nodes import comfy_entrypoint

# Served by ComfyUI at /extensions/<pack folder>/: web/docs/<node id>.md is the node's help page in the
# frontend's node-docs side panel (no JavaScript is shipped).
WEB_DIRECTORY = "./web"

__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
