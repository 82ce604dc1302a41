"""ComfyUI-EMMA: ELLA text and EMMA multi-modal prompts for SD1.5 in ComfyUI.

ComfyUI imports this file as the pack. Nodes are registered through the V3 entry point only (defining
NODE_CLASS_MAPPINGS here would make ComfyUI ignore it).
"""
from .nodes import comfy_entrypoint

__all__ = ["comfy_entrypoint"]
