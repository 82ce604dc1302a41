"""The example workflows' reference pictures (workflows/input/) copied into ComfyUI's input folder, so a
shipped workflow opens with its Load Image nodes pointing at files that exist."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "workflows" / "input"
PICTURES = (".png", ".jpg", ".jpeg", ".webp")


def copy_example_inputs(input_dir: str | os.PathLike) -> list[str]:
    """Copies each shipped picture that `input_dir` lacks; a file the user has under that name is kept.
    Returns the names copied."""
    input_dir = Path(input_dir)
    copied = []
    for picture in sorted(EXAMPLES.iterdir()):
        target = input_dir / picture.name
        if picture.suffix.lower() not in PICTURES or target.exists():
            continue
        input_dir.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(picture, partial)
        os.replace(partial, target)  # a half-copied picture never shows in Load Image's list
        copied.append(picture.name)
    if copied:
        logging.info("ComfyUI-EMMA: copied the example workflows' reference pictures into %s: %s",
                     input_dir, ", ".join(copied))
    return copied
