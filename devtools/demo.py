"""The pack's main job, headless: start ComfyUI with the pack, run a shipped workflow, save the image.

    python -m devtools.demo [--workflow workflows/ella_text_to_image.json] [--out out/]

Real weights are used when the host ComfyUI has them under the names in the workflow (see README's model
table; point EMMA_COMFYUI_DIR at your ComfyUI); otherwise generated stand-ins with random weights are
used and listed, and the image shows noise, not a picture.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from PIL import Image

from . import host, standins
from .run_workflow import ensure_input_images, prepare

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORKFLOW = REPO / "workflows" / "emma_text_face_object.json"
STANDIN_ROOT = REPO / ".cache" / "test-models"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW)
    parser.add_argument("--out", type=Path, default=REPO / "out")
    parser.add_argument("--steps", type=int, default=None, help="override the sampler steps")
    args = parser.parse_args(argv)

    comfy_dir = host.provision()
    standins.ensure_standins(STANDIN_ROOT, comfy_dir=comfy_dir)
    t0 = time.perf_counter()
    with host.ComfyServer(comfy_dir, STANDIN_ROOT) as server:
        prepared = prepare(args.workflow, server.object_info(), steps=args.steps)
        if prepared.standins_used:
            print("Real weights not found; using generated stand-ins (random weights, the image is noise):")
            for line in prepared.standins_used:
                print("  -", line)
        ensure_input_images(server.input_dir, comfy_dir)
        history = server.run(prepared.graph, timeout=3600)
        images = server.output_images(history)
        args.out.mkdir(parents=True, exist_ok=True)
        written = []
        for image in images:
            target = args.out / f"{args.workflow.stem}_{image.name}"
            shutil.copyfile(image, target)
            written.append(target)
    for path in written:
        with Image.open(path) as im:
            print(f"wrote {path} ({im.size[0]}x{im.size[1]}) in {time.perf_counter() - t0:.1f} s")
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
