"""Where things are: the repository, the cache, the pack link ComfyUI loads, the model folders and the YAML
that registers them. Standard library only."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO_ROOT / ".cache"

PACK_LINK_NAME = "ComfyUI-EMMA"
# Model folders the YAML registers under models_root (ComfyUI's key: relative folder(s)).
MODEL_FOLDERS: dict[str, list[str]] = {
    "checkpoints": ["checkpoints"],
    "vae": ["vae"],
    "vae_approx": ["vae_approx"],
    "controlnet": ["controlnet"],
    "text_encoders": ["text_encoders"],
    "clip_vision": ["clip_vision"],
    "diffusion_models": ["unet", "diffusion_models"],
    "loras": ["loras"],
    "insightface": ["insightface"],
    "ella": ["ella"],
    "emma": ["emma"],
    "emma_features": ["emma_features"],
    "umm": ["umm"],
}


def pack_custom_nodes_dir(cache_dir: Optional[os.PathLike] = None) -> Path:
    """`<cache>/custom_nodes/` holding ONE symlink `ComfyUI-EMMA -> <repo root>`.

    ComfyUI loads every entry of a custom_nodes folder; the link makes it load this checkout as the pack
    whatever the clone folder is called, without copying anything into the ComfyUI tree.
    """
    folder = Path(cache_dir or DEFAULT_CACHE).resolve() / "custom_nodes"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / PACK_LINK_NAME
    if not (link.is_symlink() and Path(os.readlink(link)) == REPO_ROOT):
        tmp = folder / f".{PACK_LINK_NAME}.{os.getpid()}.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(REPO_ROOT, target_is_directory=True)
        os.replace(tmp, link)  # atomic: a concurrent reader sees the old or the new link
    for entry in folder.iterdir():
        if entry.name != PACK_LINK_NAME and not entry.name.startswith("."):
            raise RuntimeError(f"{folder} must hold only {PACK_LINK_NAME}; found {entry.name}")
    return folder


def extra_model_paths_yaml(models_root: Optional[os.PathLike], custom_nodes_dir: Optional[os.PathLike],
                           section: str = "emma_devtools", folders: Optional[tuple[str, ...]] = None) -> str:
    """Text of an extra_model_paths.yaml in ComfyUI's format (utils/extra_config.py):

        <section>:
          base_path: <root>            # relative folder values are joined to it
          <folder key>: "<rel>\\n<rel2>"  # one or more folders, newline-separated
          custom_nodes: <abs path>     # os.path.join(base_path, abs) == abs

    Every key of the section goes to folder_paths.add_model_folder_path (unknown keys such as "ella"
    create a new entry that accepts any extension), so `custom_nodes` belongs inside the section too.
    Values are JSON strings, which YAML reads as double-quoted scalars: no PyYAML needed to write it.
    `folders`: the MODEL_FOLDERS keys to register (default: all).
    """
    lines = [f"{section}:"]
    if models_root is not None:
        lines.append(f"  base_path: {json.dumps(str(Path(models_root).resolve()))}")
        for key, rels in MODEL_FOLDERS.items():
            if folders is not None and key not in folders:
                continue
            lines.append(f"  {key}: {json.dumps(chr(10).join(rels))}")
    if custom_nodes_dir is not None:
        lines.append(f"  custom_nodes: {json.dumps(str(Path(custom_nodes_dir).resolve()))}")
    return "\n".join(lines) + "\n"


def ensure_model_folders(models_root: os.PathLike) -> None:
    for rels in MODEL_FOLDERS.values():
        for rel in rels:
            (Path(models_root) / rel).mkdir(parents=True, exist_ok=True)
