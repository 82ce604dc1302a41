"""The first run: the 32 px demo world (`ci`) built (or reused), then the shipped world workflow on the real ComfyUI
server, once per demo prompt -> out/world-picture.png (caption + object reference + background patch -> result).

    python -m devtools.world demo [--out out/] [--schedule ci] [--root DIR]

The server finds the world's models only through the build's extra_model_paths.yaml, as a user's own ComfyUI
would (docs/world.md, "Open it in your ComfyUI"); the workflow runs as shipped, with only its prompt, its two
features files and (for a reduced world) its picture size changed.
"""
from __future__ import annotations

import argparse
import copy
import logging
import time
from pathlib import Path

from devtools.host import REPO_ROOT

log = logging.getLogger("world")
WORKFLOW = REPO_ROOT / "workflows" / "emma_world_assembled.json"


def _set_widget(graph: dict, class_type: str, key: str, old, new) -> None:
    """Set input `key` of the one `class_type` node whose value is `old` (the shipped workflow's)."""
    nodes = [n for n in graph.values() if n["class_type"] == class_type and n["inputs"].get(key) == old]
    if len(nodes) != 1:
        raise RuntimeError(f"{WORKFLOW.name}: expected one {class_type} node with {key}={old!r}, found {len(nodes)}")
    nodes[0]["inputs"][key] = new


def rows_through_the_server(models_yaml: Path, feature_names: list, size: int, comfy_dir=None) -> list:
    """The result picture of each demo row, made by the shipped workflow on a ComfyUI server that knows the
    world's models only through `models_yaml`, at the world's picture size (the shipped workflow's is the full
    world's, 96 px; the reduced worlds train at 32 px, `ci`, or 48 px, `shape-48`)."""
    from PIL import Image

    from devtools.build_workflows import WORLD_OBJECT_REFERENCE, WORLD_PROMPT, WORLD_STYLE_REFERENCE
    from devtools.world.build import SCHEDULES
    from devtools.host import ComfyServer
    from devtools.workflow_api import load_ui_workflow, ui_to_api

    from .picture import DEMO

    results = []
    with ComfyServer(comfy_dir, None, extra_args=("--extra-model-paths-config", str(models_yaml))) as server:
        shipped = ui_to_api(load_ui_workflow(WORKFLOW), server.object_info())
        for (caption, _, _), (object_name, style_name) in zip(DEMO, feature_names):
            graph = copy.deepcopy(shipped)
            _set_widget(graph, "EMMATextEncode", "text", WORLD_PROMPT, caption)
            _set_widget(graph, "EMMALoadFeatures", "features_name", WORLD_OBJECT_REFERENCE, object_name)
            _set_widget(graph, "EMMALoadFeatures", "features_name", WORLD_STYLE_REFERENCE, style_name)
            _set_widget(graph, "EmptyLatentImage", "width", SCHEDULES["full"].size, size)
            _set_widget(graph, "EmptyLatentImage", "height", SCHEDULES["full"].size, size)
            images = server.output_images(server.run(graph, timeout=600))
            if len(images) != 1:
                raise RuntimeError(f"{WORKFLOW.name} saved {len(images)} pictures for {caption!r}")
            with Image.open(images[0]) as picture:
                results.append(picture.convert("RGB"))
    return results


def run(out: Path, schedule: str = "ci", root: Path | None = None) -> Path:
    from . import build, picture

    t0 = time.perf_counter()
    w = build.run(schedule, until="style", root=root)  # finished stages are kept: a second run only samples
    names = picture.write_references(w.models / "emma_features", w.schedule.size)
    log.info("world ready in %.0f s; sampling the shipped workflow on the ComfyUI server", time.perf_counter() - t0)
    results = rows_through_the_server(w.root / "extra_model_paths.yaml", names, w.schedule.size)
    note = f"{schedule} world, {w.schedule.size} px; {WORKFLOW.name} on a ComfyUI server"
    path = picture.compose(results, w.schedule.size, Path(out) / "world-picture.png", note=note)
    log.info("wrote %s in %.0f s", path, time.perf_counter() - t0)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.world demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "out")
    parser.add_argument("--schedule", default="ci", help="the world to build or reuse (default: the 32 px demo world)")
    parser.add_argument("--root", type=Path, help="the world's folder (default .cache/world/<schedule>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    path = run(args.out, args.schedule, args.root)
    print(f"demo: {path}")
    return 0
