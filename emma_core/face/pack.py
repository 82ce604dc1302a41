"""The insightface model pack folder, checked before insightface ever reads it.

insightface's FaceAnalysis(name=, root=) reads `<root>/models/<name>/`; when that folder is missing it
downloads (which fails offline with a ConnectionError), and when it is empty or nested one level too deep it
raises a bare AssertionError. check_pack turns each of those cases, and the usual ways users get there (a
pack still zipped, loose .onnx files, an unzip that made <name>/<name>/), into a FaceError that names the
folder and the fix (README, Troubleshooting).
"""
from __future__ import annotations

import os
from pathlib import Path

# The released packs (models are routed by ONNX shape, so only the detector + recognizer matter to us).
KNOWN_PACKS = {
    "antelopev2": {"detector": "scrfd_10g_bnkps.onnx", "recognizer": "glintr100.onnx",
                   "files": ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx", "glintr100.onnx",
                             "scrfd_10g_bnkps.onnx")},
    "buffalo_l": {"detector": "det_10g.onnx", "recognizer": "w600k_r50.onnx",
                  "files": ("1k3d68.onnx", "2d106det.onnx", "det_10g.onnx", "genderage.onnx",
                            "w600k_r50.onnx")},
}


class FaceError(ValueError):
    """A face-feature problem the user can fix: model folder layout, no face found, bad feature file."""


def onnx_files(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".onnx")
    except OSError:
        return []


def _expected_files(name: str) -> str:
    pack = KNOWN_PACKS.get(name)
    if pack is None:
        return "the pack's .onnx files (a face detector and an ArcFace recognizer)"
    return ", ".join(pack["files"])


def _existing_packs(models_dir: Path) -> list[str]:
    if not models_dir.is_dir():
        return []
    found = []
    for sub in sorted(p for p in models_dir.iterdir() if p.is_dir()):
        if onnx_files(sub):
            found.append(sub.name)
        elif any(onnx_files(inner) for inner in sub.iterdir() if inner.is_dir()):
            found.append(f"{sub.name} (nested one folder too deep)")
    return found


def check_pack(root: str | os.PathLike, name: str) -> Path:
    """The pack folder `<root>/models/<name>/` with .onnx files directly inside, or a FaceError saying why not.

    insightface's FaceAnalysis(name=, root=) reads exactly that folder (and downloads it when missing, which
    fails offline with a ConnectionError, or raises a bare AssertionError when the folder is empty/nested).
    """
    if not name or any(sep in str(name) for sep in ("/", "\\")) or name in (".", ".."):
        raise FaceError(f"invalid face model pack name {name!r}: use a folder name such as 'antelopev2' or "
                        "'buffalo_l'")
    root = Path(os.path.expanduser(str(root)))
    models_dir = root / "models"
    pack = models_dir / name
    how = (f"download the {name} pack and unzip it so that the .onnx files ({_expected_files(name)}) lie "
           f"directly in {pack}{os.sep}")
    if not root.is_dir():
        raise FaceError(f"insightface model folder {root} does not exist: create it, then {how}")
    if not pack.is_dir():
        zipped = [p for p in (models_dir / f"{name}.zip", root / f"{name}.zip") if p.is_file()]
        if zipped:
            raise FaceError(f"face model pack {name!r} is still zipped ({zipped[0]}): unzip it so that the "
                            f".onnx files lie directly in {pack}{os.sep}")
        loose = onnx_files(models_dir) + onnx_files(root)
        existing = _existing_packs(models_dir)
        msg = f"face model pack {name!r} not found: no folder {pack}. "
        if existing:
            msg += f"Packs found in {models_dir}: {', '.join(existing)}. "
        else:
            msg += f"No packs found in {models_dir}. "
        if loose:
            msg += (f"Loose .onnx files ({', '.join(p.name for p in loose[:6])}) lie in {loose[0].parent}: "
                    f"move them into {pack}{os.sep}. ")
        raise FaceError(msg + f"To fix: {how}.")
    files = onnx_files(pack)
    if files:
        return pack
    # Nothing directly inside: the usual cause is an unzip that created <name>/<name>/.
    nested = []
    try:
        subs = sorted(p for p in pack.iterdir() if p.is_dir())
    except OSError:
        subs = []
    for sub in subs:
        if onnx_files(sub):
            nested.append(sub)
        else:
            nested += [inner for inner in sorted(sub.iterdir()) if inner.is_dir() and onnx_files(inner)]
    if nested:
        src = next((p for p in nested if p.name == name), nested[0])
        moved = ", ".join(p.name for p in onnx_files(src))
        raise FaceError(f"face model pack {name!r} is nested one folder too deep: the .onnx files are in "
                        f"{src}{os.sep} but insightface reads {pack}{os.sep}. Move {moved} from {src}{os.sep} "
                        f"to {pack}{os.sep}, then delete the emptied folder {src}{os.sep}.")
    zipped = sorted(pack.glob("*.zip"))
    if zipped:
        raise FaceError(f"face model folder {pack} holds {zipped[0].name} but no .onnx files: unzip it so that "
                        f"the .onnx files lie directly in {pack}{os.sep}")
    raise FaceError(f"face model folder {pack} has no .onnx files (it is empty or holds only other files): {how}")
