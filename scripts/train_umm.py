#!/usr/bin/env python
"""Train a UMM-Diffusion projector headless (one process; the GPU if there is one, else the CPU).

    python scripts/train_umm.py --checkpoint v1-5-pruned-emaonly-fp16.safetensors \
        --clip-vision models/clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors \
        --dataset data/my_dog --subject-word dog \
        --out models/umm/my-dog-projector.safetensors --run-dir runs/my_dog_umm --steps 2000

The dataset folder holds images with same-name .txt captions that contain the subject word ("a photo of a dog on
the beach"); a `<name>_ref.<image>` is that image's subject picture (else the image itself). The SD1.5 UNet, VAE and
CLIP text encoder come from the checkpoint, and CLIP Vision from its file, through ComfyUI's own loaders (ComfyUI
imported as a library: --comfyui, $EMMA_COMFYUI_DIR or the ComfyUI this pack is installed in); they stay frozen,
only the projector trains. The work is emma_core/train/umm_job.py, the job builder the UMM Train Projector node uses.
Re-running the same command resumes from the run folder's last checkpoint (--no-resume starts over).
See docs/training.md.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from emma_core.train.loop import TrainConfig  # noqa: E402

log = logging.getLogger("train_umm")


def parse_args(argv=None):
    d = TrainConfig()
    p = argparse.ArgumentParser(description="Train a UMM-Diffusion projector (see docs/training.md)")
    p.add_argument("--checkpoint", required=True, help="SD1.5 checkpoint (.safetensors): UNet + VAE + CLIP")
    p.add_argument("--clip-vision", help="CLIP ViT-H/14 vision file; not needed when every image has a "
                                         "<name>_ref.safetensors style features file")
    p.add_argument("--dataset", required=True, help="folder of images with same-name .txt captions")
    p.add_argument("--subject-word", required=True, help="the caption word the subject picture replaces")
    p.add_argument("--out", required=True, help="the projector file to write (.safetensors)")
    p.add_argument("--run-dir", required=True, help="checkpoints, log.csv/jsonl, loss_curve.png; resumed from")
    p.add_argument("--cache-root", help="feature cache root (default: <dataset>/.emma_cache)")
    p.add_argument("--comfyui", help="ComfyUI folder (default: $EMMA_COMFYUI_DIR, else the ComfyUI whose "
                                     "custom_nodes/ holds this pack)")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when CUDA is available")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--hidden-dim", type=int, default=1024, help="the projector MLP's hidden width")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--grad-accum", type=int, default=d.grad_accum)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-iters", type=int, default=d.warmup_iters)
    p.add_argument("--decay-to", type=float, default=d.decay_to,
                   help="cosine decay of the learning rate after warm-up to this fraction (1 = constant)")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
    p.add_argument("--precision", default=d.precision, choices=["auto", "fp16", "bf16", "fp32"])
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--val-every", type=int, default=200)
    p.add_argument("--patience", type=int, default=0, help="early stopping: validations without improvement")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--noise-offset", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints in --run-dir")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    from devtools.host.comfy_import import import_comfy_for_script

    import_comfy_for_script(args.comfyui, cpu=device.type == "cpu", nodes=False, disable_smart_memory=True)
    import comfy.clip_vision

    from devtools.host.trainer_models import load_checkpoint
    from emma_core.train.umm_job import SubjectWordError, UMMTrainingJob, run_umm_job

    models = load_checkpoint(args.checkpoint, clip=True)
    log.info("loaded %s (%s)", args.checkpoint, type(models.base_model).__name__)

    job = UMMTrainingJob(
        dataset=args.dataset, subject_word=args.subject_word, out_path=args.out, run_dir=args.run_dir,
        cache_root=args.cache_root, config=TrainConfig(
            steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
            weight_decay=args.weight_decay, warmup_iters=args.warmup_iters, decay_to=args.decay_to,
            grad_clip=args.grad_clip, precision=args.precision, val_every=args.val_every,
            early_stopping_patience=args.patience, checkpoint_every=args.checkpoint_every,
            log_every=args.log_every, seed=args.seed),
        vae=models.vae, base_model=models.base_model, load_base=models.load_base, clip=models.clip,
        clip_vision=comfy.clip_vision.load(args.clip_vision) if args.clip_vision else None,
        resolution=args.resolution, val_fraction=args.val_fraction, noise_offset=args.noise_offset,
        hidden_dim=args.hidden_dim, resume=not args.no_resume,
        clip_vision_name=os.path.basename(args.clip_vision) if args.clip_vision else "", device=device)

    def on_step(step, total, record):
        if step % max(1, args.log_every) == 0 or step == total:
            extra = f" val {record['val_loss']:.5f}" if record.get("val_loss") is not None else ""
            print(f"step {step}/{total} loss {record['loss']:.5f}{extra}", flush=True)

    try:
        out = run_umm_job(job, cache_progress=lambda n, total: n % 50 == 0 and log.info("encoded %d/%d", n, total),
                          on_cache=lambda report: print(report.text(), flush=True), on_step=on_step)
    except SubjectWordError as error:
        raise SystemExit(f"--subject-word: {error}") from None
    r = out.result
    print(f"wrote {out.projector_path} (steps {r.step}, resumed from {r.resumed_from}, best validation "
          f"{r.best_val_loss} at step {r.best_step}, train/held-out images {out.train_count}/{out.val_count})",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
