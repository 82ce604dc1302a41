"""Model folders of the pack, added to ComfyUI's registry without overwriting what a user configured."""
from __future__ import annotations

import os

import folder_paths

SAFETENSORS = {".safetensors"}
# folder name -> default location under ComfyUI's models dir
PACK_FOLDERS = {"ella": "ella", "emma": "emma", "emma_features": "emma_features", "insightface": "insightface",
                "umm": "umm"}


def register_folders() -> None:
    for name, sub in PACK_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, sub)
        if name in folder_paths.folder_names_and_paths:
            # extra_model_paths.yaml is applied before packs import: keep its paths, add ours after them
            paths, extensions = folder_paths.folder_names_and_paths[name]
            if default not in paths:
                paths.append(default)
            folder_paths.folder_names_and_paths[name] = (paths, extensions or SAFETENSORS)
        else:
            folder_paths.folder_names_and_paths[name] = ([default], SAFETENSORS)


def safetensors_files(folder: str) -> list[str]:
    return [n for n in folder_paths.get_filename_list(folder) if n.lower().endswith(".safetensors")]


def t5_choices() -> list[str]:
    """Single .safetensors files in text_encoders, plus Hugging Face folders shown as 'name/'."""
    folders = []
    for root in folder_paths.get_folder_paths("text_encoders"):
        if not os.path.isdir(root):
            continue
        for entry in sorted(os.listdir(root)):
            path = os.path.join(root, entry)
            if os.path.isfile(os.path.join(path, "config.json")) and any(
                f.endswith(".safetensors") for f in os.listdir(path)
            ):
                folders.append(entry + "/")
    files = [n for n in safetensors_files("text_encoders") if not n.replace(os.sep, "/").startswith(tuple(folders))]
    return folders + files


def resolve_t5(name: str) -> str:
    """Full path of a choice from t5_choices(); names outside the registered folders are refused. A folder that
    is there but cannot be loaded (no config.json, no weights) is returned: the loader says what it lacks."""
    if name.endswith("/"):
        entry = name.rstrip("/")
        if entry not in ("", ".", "..") and "/" not in entry and os.sep not in entry:
            for root in folder_paths.get_folder_paths("text_encoders"):
                path = os.path.join(root, entry)
                if os.path.isdir(path):
                    return path
        raise FileNotFoundError(f"T5 folder {name!r} is not in any text_encoders folder: "
                                f"{folder_paths.get_folder_paths('text_encoders')}")
    return folder_paths.get_full_path_or_raise("text_encoders", name)
