#!/usr/bin/env python
"""Train an EMMA condition module headless, on one or several GPUs (torch DDP, launched by torchrun).

    # one process (GPU if there is one, else CPU)
    python scripts/train_emma.py --checkpoint sd15.safetensors --ella ella-sd1.5-tsc-t5xl.safetensors \
        --t5 models/text_encoders/flan-t5-xl --dataset my_faces/ --modality face \
        --insightface-root models/insightface --out models/emma/my_face.safetensors --run-dir runs/my_face

    # 8 GPUs on one machine
    torchrun --nproc_per_node 8 scripts/train_emma.py ...same arguments...

The SD1.5 UNet and VAE come from the checkpoint through ComfyUI's own loader (ComfyUI imported as a library:
--comfyui, $EMMA_COMFYUI_DIR or the ComfyUI this pack is installed in); the UNet call is ComfyUI's model
apply with the ELLA/EMMA context. ELLA and T5 load through emma_core. Rank 0 builds the feature cache (the
others wait), then every process trains on its share of each batch; rank 0 writes checkpoints, the log and
the module. Re-running the same command resumes from the run folder's last checkpoint.
See docs/training.md.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from emma_core.state_dict import sha256_file  # noqa: E402
from emma_core.train.job import DEFAULT_EMA, DEFAULT_REFERENCE_VIEWS  # noqa: E402
from emma_core.train.loop import TrainConfig  # noqa: E402

log = logging.getLogger("train_emma")


def parse_args(argv=None):
    d = TrainConfig()
    p = argparse.ArgumentParser(description="Train an EMMA condition module (see docs/training.md)")
    p.add_argument("--checkpoint", required=True, help="SD1.5 checkpoint (.safetensors): UNet + VAE")
    p.add_argument("--ella", required=True, help="ELLA connector file (ella-sd1.5-tsc-t5xl.safetensors)")
    p.add_argument("--t5", required=True, help="flan-t5-xl encoder: a .safetensors file or an HF folder")
    p.add_argument("--dataset", required=True, help="folder of images with same-name .txt captions")
    p.add_argument("--modality", required=True, choices=["face", "object", "portrait", "style"])
    p.add_argument("--out", required=True, help="the module file to write (.safetensors)")
    p.add_argument("--run-dir", required=True, help="checkpoints, log.csv/jsonl, loss_curve.png; resumed from")
    p.add_argument("--cache-root", help="feature cache root (default: <dataset>/.emma_cache)")
    p.add_argument("--clip-vision", help="CLIP ViT-H/14 vision file (object / portrait / style); not needed "
                                          "when every image has a <name>_ref.safetensors features file")
    p.add_argument("--insightface-root", help="folder holding models/<pack>/*.onnx (face); not needed when every "
                                              "image has a <name>_ref.safetensors features file")
    p.add_argument("--pack", default="antelopev2", help="InsightFace pack name (face)")
    p.add_argument("--init-from", help="start from this module's weights (e.g. portrait from object)")
    p.add_argument("--comfyui", help="ComfyUI folder (default: $EMMA_COMFYUI_DIR, else the ComfyUI whose "
                                     "custom_nodes/ holds this pack)")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when CUDA is available")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--text-length", default="fixed 128", choices=["fixed 128", "flexible"])
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per process and micro-step")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-iters", type=int, default=d.warmup_iters, help="-1 (default): 5 %% of the steps")
    p.add_argument("--decay-to", type=float, default=d.decay_to,
                   help="cosine decay of the learning rate after warm-up to this fraction (1 = constant)")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
    p.add_argument("--precision", default=d.precision, choices=["auto", "fp16", "bf16", "fp32"])
    p.add_argument("--gradient-checkpointing", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--patience", type=int, default=0, help="early stopping: validations without improvement")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--cond-dropout", type=float, default=0.1)
    p.add_argument("--text-dropout", type=float, default=0.1)
    p.add_argument("--noise-offset", type=float, default=0.0)
    p.add_argument("--ema-decay", type=float, default=DEFAULT_EMA,
                   help="e.g. 0.999: the module file holds the moving average of the weights; "
                        "0 (default) = the last weights")
    p.add_argument("--reference-views", type=int, default=DEFAULT_REFERENCE_VIEWS,
                   help="augmented views per object / portrait / style reference (crop, flip, scale); 0 = none")
    p.add_argument("--min-snr-gamma", type=float, default=0.0, help="min-SNR-gamma loss weighting (e.g. 5); 0 = off")
    p.add_argument("--no-buckets", action="store_true", help="square centre crops instead of aspect buckets")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preview-every", type=int, default=d.preview_every,
                   help="sample pictures every N steps into <run-dir>/previews/ (0 = never)")
    p.add_argument("--preview-count", type=int, default=4, help="pictures per preview (held-out images first)")
    p.add_argument("--preview-steps", type=int, default=20, help="sampling steps of a preview picture")
    p.add_argument("--preview-cfg", type=float, default=5.0, help="guidance scale of a preview picture")
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints in --run-dir")
    return p.parse_args(argv)


def import_comfy(comfy_dir: str | None, cpu: bool) -> str:
    """ComfyUI as a library (devtools/host/comfy_import.py): --comfyui, $EMMA_COMFYUI_DIR or the ComfyUI this pack
    is installed in; models stay where this script puts them (--disable-smart-memory)."""
    from devtools.host.comfy_import import import_comfy_for_script

    found = import_comfy_for_script(comfy_dir, cpu=cpu, nodes=False, disable_smart_memory=True)
    import comfy.clip_vision  # noqa: F401
    import comfy.sd  # noqa: F401
    return found


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and not args.cpu
    if use_cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if world > 1:
        # Long timeout: rank 0 may spend a while building the feature cache while the others wait.
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(hours=6))
    try:
        return run(args, rank, world, device)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def run(args, rank: int, world: int, device: torch.device) -> int:
    """Load the frozen models from the files (T5 and the condition encoders on rank 0 only) and train through the
    job builder."""
    comfy_dir = import_comfy(args.comfyui, cpu=device.type == "cpu")
    import comfy.clip_vision

    from devtools.host.trainer_models import load_trainer_models
    from emma_core.train.job import TrainingJob, run_job

    models = load_trainer_models(args.checkpoint, args.ella, args.t5 if rank == 0 else None, comfy_dir=comfy_dir,
                                 device=device)
    if rank == 0:
        log.info("loaded %s (%s)", args.checkpoint, type(models.base_model).__name__)
    job = TrainingJob(
        modality=args.modality, dataset=args.dataset, out_path=args.out, run_dir=args.run_dir,
        cache_root=args.cache_root, config=TrainConfig(
            steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
            weight_decay=args.weight_decay, warmup_iters=args.warmup_iters, decay_to=args.decay_to,
            grad_clip=args.grad_clip, precision=args.precision, val_every=args.val_every,
            early_stopping_patience=args.patience, checkpoint_every=args.checkpoint_every,
            log_every=args.log_every, seed=args.seed, preview_every=args.preview_every, ema_decay=args.ema_decay),
        vae=models.vae, base_model=models.base_model, load_base=models.load_base, ella=models.ella, t5=models.t5,
        resolution=args.resolution, text_length=args.text_length, t5_name=os.path.basename(args.t5.rstrip("/")),
        vae_name=os.path.basename(args.checkpoint),
        clip_vision_name=os.path.basename(args.clip_vision) if args.clip_vision else "",
        ella_sha256=sha256_file(args.ella) if rank == 0 else "", val_fraction=args.val_fraction,
        cond_dropout=args.cond_dropout, text_dropout=args.text_dropout, noise_offset=args.noise_offset,
        min_snr_gamma=args.min_snr_gamma, buckets=not args.no_buckets, reference_views=args.reference_views,
        release_models=models.release,
        gradient_checkpointing={"auto": None, "on": True, "off": False}[args.gradient_checkpointing],
        init_from=args.init_from, resume=not args.no_resume, preview_count=args.preview_count,
        preview_steps=args.preview_steps, preview_cfg=args.preview_cfg, device=device)
    if rank == 0:
        # The condition encoders only build the feature cache (rank 0). Without --clip-vision /
        # --insightface-root every image needs its <name>_ref.safetensors features file.
        job.clip_vision = comfy.clip_vision.load(args.clip_vision) if args.clip_vision else None
        if args.modality == "face" and args.insightface_root:
            from emma_core.face import FaceAnalyzer

            job.face_analyzer = FaceAnalyzer(args.insightface_root, args.pack,
                                             "cpu" if device.type == "cpu" else "auto")
        models.t5 = None  # the job holds the only reference: run_job drops it once the cache is built

    def on_step(step, total, record):
        if rank == 0 and (step % max(1, args.log_every) == 0 or step == total):
            extra = f" val {record['val_loss']:.5f}" if record.get("val_loss") is not None else ""
            print(f"step {step}/{total} loss {record['loss']:.5f}{extra}", flush=True)

    out = run_job(job, cache_progress=lambda n, total: n % 50 == 0 and log.info("encoded %d/%d", n, total),
                  on_cache=lambda report: print(report.text(), flush=True), on_step=on_step)
    if rank == 0:
        r = out.result
        print(f"wrote {out.module_path} (steps {r.step}, resumed from {r.resumed_from}, best validation "
              f"{r.best_val_loss} at step {r.best_step}, processes {world}, train/held-out images "
              f"{out.train_count}/{out.val_count})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
