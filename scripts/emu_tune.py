#!/usr/bin/env python
"""Emu quality-tuning without the UI: curate a folder and/or tune a LoRA from an SD1.5 checkpoint file, with
ComfyUI's own loaders imported as a library (no server).

    python scripts/emu_tune.py curate DATA --min-side 512                 report + contact sheet + review list
    python scripts/emu_tune.py tune DATA --checkpoint v1-5.safetensors --out models/loras/emu.safetensors \
        [--review DATA/emu_review.csv] [--mode lora|full] [--max-steps 15000] [--lr 1e-4] [--rank 16] ...

ComfyUI is found through --comfyui, $EMMA_COMFYUI_DIR or the ComfyUI whose custom_nodes/ holds this pack.
Runs resume: the same run folder (--run-dir, default ./emu-runs/<out name>/) continues from its last checkpoint.
Only the LoRA itself is written to --out: the run folder (checkpoints, encoding cache, logs) may not lie in a
loras folder, where Load LoRA would list its files.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LORA_FOLDER = "loras"  # ComfyUI's LoRA folder name (models/loras)
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def import_comfy(comfy_dir: str | None) -> str:
    """ComfyUI as a library (devtools/host/comfy_import.py); the CPU only when there is no CUDA or MPS device."""
    from devtools.host.comfy_import import import_comfy_for_script

    found = import_comfy_for_script(comfy_dir, cpu=None, nodes=False)
    import comfy.sd  # noqa: F401
    return found


def cmd_curate(args) -> int:
    from emma_core.emu import run
    from emma_core.emu.curate import CurationConfig, contact_sheet

    config = CurationConfig(min_side=args.min_side, min_aspect=args.min_aspect, max_aspect=args.max_aspect,
                            dedupe=not args.keep_duplicates, dedupe_distance=args.duplicate_distance)
    review = run.review_path(args.folder, args.review)
    result, report = run.curate(args.folder, config, review)
    print(report)
    sheet_dir = Path(args.sheet_dir or review.parent / "emu_contact_sheets")  # a sub-folder: never a candidate
    sheet_dir.mkdir(parents=True, exist_ok=True)
    for i, page in enumerate(contact_sheet(result, columns=args.columns), 1):
        path = sheet_dir / f"emu_contact_sheet_{i:03d}.png"
        page.save(path)
        print(f"contact sheet: {path}")
    return 0


def run_folder(out: Path, given: str | None) -> Path:
    """The run folder: --run-dir, else ./emu-runs/<out name>/. Never inside a loras folder: ComfyUI lists every
    file under one (checkpoint-*.pt, the cache, best.safetensors) in Load LoRA."""
    run_dir = Path(given) if given else Path("emu-runs") / out.stem
    if LORA_FOLDER in run_dir.resolve().parts:
        raise SystemExit(f"the run folder {run_dir} lies in a '{LORA_FOLDER}' folder, where Load LoRA would list "
                         "its checkpoints and cache: give --run-dir outside it (or run from another folder)")
    return run_dir


def cmd_tune(args) -> int:
    out = Path(args.out)
    run_dir = run_folder(out, args.run_dir)
    import_comfy(args.comfyui)
    import comfy.model_management as mm
    import comfy.sd

    from emma_core.emu import run
    from emma_core.emu.quality_tune import EmuRecipe

    model, clip, vae = comfy.sd.load_checkpoint_guess_config(args.checkpoint, output_vae=True, output_clip=True)[:3]
    recipe = EmuRecipe(mode=args.mode, rank=args.rank, lr=args.lr, max_steps=args.max_steps, patience=args.patience,
                       val_every=args.val_every, effective_batch=args.effective_batch, micro_batch=args.micro_batch,
                       noise_offset=args.noise_offset, seed=args.seed, save_dtype=args.save_dtype,
                       val_fraction=args.val_fraction, targets=args.targets)

    def on_step(step, steps, record):
        if "val_loss" in record or step % 10 == 0:
            val = f" val {record['val_loss']:.5f}" if "val_loss" in record else ""
            print(f"step {step}/{steps} loss {record['loss']:.5f}{val}", flush=True)

    done = run.tune(model, clip, vae, args.folder, run.existing_review(args.folder, args.review), out, recipe,
                    args.resolution, run_dir / "cache", run_dir=run_dir, load_model=lambda: mm.load_models_gpu([model]),
                    on_encode=lambda d, t: print(f"\rencoding {d}/{t}", end="", flush=True), on_step=on_step,
                    extra_metadata={"emu_base": Path(args.checkpoint).name})
    print("\n" + done.report())
    print(f"loss curve {run_dir / 'loss_curve.png'}; log {run_dir / 'log.csv'}")
    return 0


def main(argv=None) -> int:
    from emma_core.emu.quality_tune import DEFAULT_LR

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("curate", help="automatic filters, report, contact sheet, review list")
    c.add_argument("folder")
    c.add_argument("--min-side", type=int, default=512)
    c.add_argument("--min-aspect", type=float, default=0.5)
    c.add_argument("--max-aspect", type=float, default=2.0)
    c.add_argument("--keep-duplicates", action="store_true")
    c.add_argument("--duplicate-distance", type=int, default=6)
    c.add_argument("--review", help="review list path (default <folder>/emu_review.csv)")
    c.add_argument("--sheet-dir", help="where the contact sheet pages go (default: emu_contact_sheets/ next to the review list)")
    c.add_argument("--columns", type=int, default=8)
    c.set_defaults(run=cmd_curate)
    t = sub.add_parser("tune", help="quality-tune a LoRA (or the full UNet) on the curated folder")
    t.add_argument("folder")
    t.add_argument("--checkpoint", required=True, help="SD1.5 checkpoint file (.safetensors / .ckpt)")
    t.add_argument("--out", required=True, help="the LoRA file to write (e.g. ComfyUI/models/loras/emu.safetensors)")
    t.add_argument("--review", help="review list (default <folder>/emu_review.csv if present)")
    t.add_argument("--run-dir", help="checkpoints, encoding cache, logs; resumed from (default ./emu-runs/<out "
                                      "name>/; never inside a loras folder)")
    t.add_argument("--comfyui")
    t.add_argument("--mode", choices=["lora", "full"], default="lora")
    t.add_argument("--rank", type=int, default=16)
    t.add_argument("--targets", default="transformer", help="attention | transformer | all | a regex")
    defaults = ", ".join(f"{mode} {lr:g}" for mode, lr in DEFAULT_LR.items())
    t.add_argument("--lr", type=float, default=None, help=f"learning rate (default: the mode's, {defaults})")
    t.add_argument("--max-steps", type=int, default=15000)
    t.add_argument("--patience", type=int, default=5)
    t.add_argument("--val-every", type=int, default=100)
    t.add_argument("--val-fraction", type=float, default=0.1)
    t.add_argument("--effective-batch", type=int, default=64)
    t.add_argument("--micro-batch", type=int, default=4)
    t.add_argument("--noise-offset", type=float, default=0.1)
    t.add_argument("--resolution", type=int, default=512)
    t.add_argument("--save-dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(run=cmd_tune)
    args = p.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
