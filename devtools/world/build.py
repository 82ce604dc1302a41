"""Build the world end to end, cached and resumable: models, modules, measurements, docs.

    python -m devtools.world build                   # the full schedule (docs/world.md); hours on 2 cores
    python -m devtools.world build --schedule shape-48  # the reduced one CI runs (about 10 minutes)
    python -m devtools.world build --schedule ci     # the 32 px one scripts/demo.sh runs (about 2 minutes)
    python -m devtools.world build --until base      # stop after a stage
    python -m devtools.world build --only codec      # one stage (codec and base are independent: two
                                                     # processes with --threads 1 can run them side by side)

Stages (each skipped when its output exists; the training stages resume from their last checkpoint):
  t5       the stand-in flan-T5 encoder file (frozen, random: the world's text features)
  codec    the VAE: fixed encoder, decoder trained on world pictures -> models/vae_approx/taesd_*.safetensors
  base     UNet + ELLA pre-training on captioned pictures -> runs/base/unet.safetensors, models/ella
  checkpoint  the UNet and the VAE as one SD1.5 checkpoint -> models/checkpoints
  object   the object module, trained in this process through the pack's job builder (emma_core/train/job.py,
           as the node and scripts/train_emma.py) -> models/emma
  style    the style module, likewise
  adapter  the IP-Adapter-style peer (ipadapter.py) on the object module's data, cache, schedule and loop
           -> <root>/peer/ (the full schedule only)
  eval     sampling through ComfyUI, reading, the report -> <out>/ (docs/world for the full schedule)

Schedules: "full" (docs/world), "shape-48" (the reduced world CI runs: 48 px, its base draws the shape its text
names; about 9.6 minutes) and "ci" (the 32 px world scripts/demo.sh runs: colour only, about 2 minutes).

Everything lives under .cache/world/<schedule>/ (git-ignored): models/ (a ComfyUI models folder), runs/,
data/, eval/. Weights are never committed; the report, the grids and the plots are.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from devtools.host import DEFAULT_CACHE

from . import report
from . import scene as world
from .files import ADAPTER_FILE, CHECKPOINT, ELLA_FILE, OBJECT_MODULE, STYLE_MODULE, T5_FILE

log = logging.getLogger("world")
STAGES = ("t5", "codec", "base", "checkpoint", "object", "style", "adapter", "eval")
_TRAINER_THREADS: list = []  # torch's own thread count, as main() found it before --threads (see _trainer_threads)


@dataclass(frozen=True)
class Schedule:
    name: str
    decoder_steps: int
    base_pictures: int
    base_steps: int
    module_pictures: int
    module_steps: int
    module_lr: float
    rows: tuple = ("text only, full caption", "text naming only the shape", "+ object module",
                   "+ object module, reference shows another shape", "+ style module",
                   "+ both, trained apart, assembled", "+ adapter", "+ adapter, reference shows another shape")
    n_per_row: int = 200
    n_unseen: int = 120
    n_sweep: int = 60
    n_range: int = 100
    batch: int = 16
    base_lr: float = 3e-4
    preview_every: int = 250
    validate_every: int = 250
    out: str = "docs/world"        # relative to the repository; "" = <root>/report
    size: int = world.SIZE
    style_steps: int = 0           # 0: module_steps (CI: the style module only has to exist, for the workflow test)
    style_pictures: int = 0        # 0: module_pictures
    module_warmup: int = 50        # at most a third of the steps
    sample_steps: int = 15         # KSampler steps of the evaluation pictures (the world picture keeps the workflow's)
    unet: str = "two-level"        # a key of base.UNETS
    ella_layers: int = 2
    ella_latents: int = 16
    peer: bool = True              # the IP-Adapter peer: its stage, its rows and the trade-off sweep
    object_side: tuple = world.OBJECT_SIDE  # the object's size range in every picture the stages train on
    base_precision: str = "auto"   # the loop's precision (auto: fp32 on CPU); bf16 halves a CPU step on AMX
    base_timestep_power: float = 1.0  # base.BaseTask.timestep_power: 1 uniform, < 1 more high-noise steps
    base_warmup: int = 100         # at most a third of the base steps
    module_precision: str = "auto"  # the module trainer's precision (the node's default: auto)

    def module_size(self, kind: str) -> tuple[int, int]:
        """(pictures, steps) of the `kind` module's training: the style overrides where set."""
        if kind == "style":
            return self.style_pictures or self.module_pictures, self.style_steps or self.module_steps
        return self.module_pictures, self.module_steps


SCHEDULES = {
    # 96 px (12 x 12 latents): at 64 px the trained decoder itself read shapes at only 0.844 (centred objects),
    # under the 0.90 bar; at 96 px 0.958. The base at 96 px and 1 000 steps drew shapes at 0.68, still rising.
    # Modules: at 96 px (145 reference tokens) 400 steps at lr 3e-4 took the reference's colour at 0.36 (0.97 at
    # 64 px); lr 1e-3 at 400 steps 0.72, yellow and cyan lagging, so 1 000 steps. The peer trains the same way.
    "full": Schedule("full", decoder_steps=800, base_pictures=8000, base_steps=1500, module_pictures=3000,
                     module_steps=1000, module_lr=1e-3, n_unseen=100, n_sweep=40, n_range=60, size=96),
    # The first run's 32 px world (scripts/demo.sh; CI's until 2026-12-07): colour only, the codec cannot carry shape.
    "ci": Schedule("ci", decoder_steps=0, base_pictures=1200, base_steps=100, module_pictures=400,
                   module_steps=150, module_lr=1e-3,
                   rows=("text only, full caption", "text naming only the shape", "+ object module"),
                   n_per_row=60, n_unseen=0, n_sweep=0, n_range=0, preview_every=0, validate_every=0,
                   out="", size=32, style_steps=5, style_pictures=16, unet="one-level", ella_layers=1,
                   ella_latents=8, sample_steps=10, peer=False),
}

# The `ci` schedule at 48 px (CI's since 2026-12-07), the smallest world found whose base draws the shape its text
# names (docs/world.md, "Toward a CI world that reads shape"): objects of 0.80 to 0.90 of the side (the codec's
# ceiling 0.922 with the untrained decoder; at 0.62 to 0.78 the base read 0.62 to 0.67), the two-level UNet with
# full-resolution cross-attention, 450 base steps with timesteps drawn towards high noise, batch 64 and bf16 for
# the base and the object module (at batch 16 the module took the reference's colour 0.15). Text only: shape 0.82,
# colour 1.00; + object module: colour 0.92 (0.73 / 1.00 / 0.98 with the base's loop seed 1). About 9.6 minutes on
# 2 cores, over the 6 the issue allowed; CI builds it (tests/devtools/world/test_world_ci.py).
SCHEDULES["shape-48"] = replace(SCHEDULES["ci"], name="shape-48", size=48, unet="two-level-attn", base_pictures=4000,
                                base_steps=450, base_lr=1e-3, object_side=(0.80, 0.90), batch=64,
                                base_precision="bf16", module_precision="bf16", base_timestep_power=0.5,
                                base_warmup=30)


@dataclass
class World:
    schedule: Schedule
    root: Path
    timings: dict = field(default_factory=dict)

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def path(self, folder: str, name: str) -> Path:
        return self.models / folder / name

    def render(self, scene: world.Scene) -> np.ndarray:
        """A training picture of this schedule: its size and its objects' size range."""
        return world.render(scene, self.schedule.size, self.schedule.object_side)


# ---- stages ------------------------------------------------------------------------------------------------
def stage_t5(w: World) -> None:
    from devtools.standins import build_t5

    target = w.path("text_encoders", T5_FILE)
    if not target.is_file():
        build_t5(target)


def stage_codec(w: World) -> None:
    import torch

    from emma_core.atomic import write_atomic

    from . import codec

    encoder_file = w.path("vae_approx", "taesd_encoder.safetensors")
    decoder_file = w.path("vae_approx", "taesd_decoder.safetensors")
    if encoder_file.is_file() and decoder_file.is_file():
        return
    encoder, decoder = codec.fixed_encoder(), codec.initial_decoder()
    optimizer = codec.decoder_optimizer(decoder)
    state_file = w.runs / "codec" / "state.pt"
    start = 0
    if state_file.is_file():
        state = torch.load(state_file, weights_only=True)
        decoder.load_state_dict(state["decoder"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
        log.info("codec: resuming the decoder at step %d", start)

    def pictures(step, batch):
        return np.stack([w.render(s) for s in world.scenes(f"decoder/{step}", batch, world.SEEN)])

    def checkpoint(step):
        write_atomic(state_file, lambda handle: torch.save(
            {"decoder": decoder.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, handle))

    if w.schedule.decoder_steps > start:
        codec.train_decoder(decoder, encoder, pictures, w.schedule.decoder_steps, optimizer, start_step=start,
                            log=lambda text: log.info("codec: %s", text), checkpoint=checkpoint)
    codec.save_taesd(encoder, decoder.eval(), w.models / "vae_approx")


def stage_base(w: World) -> None:
    import torch

    from emma_core.atomic import save_safetensors_atomic
    from emma_core.ella_file import save_ella
    from emma_core.train.loop import TrainConfig, train

    from . import base

    unet_file, ella_file = w.runs / "base" / "unet.safetensors", w.path("ella", ELLA_FILE)
    if unet_file.is_file() and ella_file.is_file():
        return
    data, s = base_data(w), w.schedule
    unet, ella = base.build_unet(s.unet), base.build_ella(base.ella_config(s.ella_layers, s.ella_latents))
    task = base.BaseTask(unet, ella, data.empty_text, timestep_power=s.base_timestep_power)
    config = TrainConfig(steps=s.base_steps, batch_size=1, lr=s.base_lr, weight_decay=0.01,
                         warmup_iters=min(s.base_warmup, s.base_steps // 3), decay_to=0.1, checkpoint_every=100,
                         log_every=25, seed=0, val_every=0, precision=s.base_precision)

    def on_step(step, total, record):
        if step % 25 == 0:
            log.info("base: step %d/%d loss %.4f", step, total, record["loss"])

    train(task, data, config, w.runs / "base", on_step=on_step)
    save_safetensors_atomic(unet_file, {k: v.half() for k, v in unet.state_dict().items()})
    save_ella(ella, str(ella_file), dtype=torch.float16,
              extra={"world": f"connector pre-trained with the world's UNet ({s.name} schedule, {s.base_steps} steps)"})


def stage_checkpoint(w: World) -> None:
    """The SD1.5 single-file checkpoint: the pre-trained UNet and the VAE (fixed encoder, trained decoder)."""
    from safetensors.torch import load_file

    from emma_core.atomic import save_safetensors_atomic

    from . import base, codec

    target = w.path("checkpoints", CHECKPOINT)
    if target.is_file():
        return
    unet = base.build_unet(w.schedule.unet)
    unet.load_state_dict({k: v.float() for k, v in load_file(str(w.runs / "base" / "unet.safetensors")).items()})
    tensors = base.checkpoint_tensors(unet, codec.checkpoint_vae_tensors(codec.fixed_encoder(), load_decoder(w)))
    s = w.schedule
    save_safetensors_atomic(target, tensors, {"world": json.dumps({"schedule": s.name, "base_steps": s.base_steps,
                                                                   "unet": s.unet, "decoder_steps": s.decoder_steps})})


def load_decoder(w: World):
    from . import codec

    path = w.path("vae_approx", "taesd_decoder.safetensors")
    return codec.load_decoder(path if path.is_file() else None)


def t5_encoder(w: World):
    from emma_core.t5 import T5TextEncoder, load_t5_encoder, load_tokenizer
    import torch

    from devtools.host import provision

    tokenizer = load_tokenizer(str(provision() / "comfy" / "text_encoders" / "t5_tokenizer"))
    return T5TextEncoder(load_t5_encoder(str(w.path("text_encoders", T5_FILE)), dtype=torch.float32), tokenizer)


def base_data(w: World):
    """The pre-training pictures' latents and their captions' T5 features, cached in data/base.safetensors."""
    import torch
    from safetensors.torch import load_file

    from emma_core.atomic import save_safetensors_atomic

    from . import base, codec

    path = w.data / "base.safetensors"
    if not path.is_file():
        scenes = list(world.scenes("pretrain", w.schedule.base_pictures, world.SEEN))
        encoder = codec.fixed_encoder()
        latents = []
        for start in range(0, len(scenes), 256):
            pictures = torch.from_numpy(np.stack([w.render(s) for s in scenes[start:start + 256]]))
            latents.append(codec.encode(encoder, pictures))
        t5 = t5_encoder(w)
        captions = [world.pretraining_caption(s) for s in scenes]
        unique = sorted(set(captions))
        tensors = {"latents": torch.cat(latents), "empty": t5.encode("", None).float(),
                   "caption_index": torch.tensor([unique.index(c) for c in captions])}
        for j, c in enumerate(unique):  # a caption may be the empty text: clone, so no two keys share storage
            tensors[f"caption.{j}"] = t5.encode(c, None).float().clone()
        save_safetensors_atomic(path, tensors, {"captions": json.dumps(unique)})
    tensors = load_file(str(path))
    texts = [tensors[f"caption.{j}"] for j in tensors["caption_index"].tolist()]
    batches = base.length_batches([t.shape[0] for t in texts], w.schedule.batch, seed=0)
    return base.BatchDataset(tensors["latents"], texts, batches, tensors["empty"])


def stage_module(w: World, kind: str) -> None:
    from safetensors import safe_open

    from . import features, modules

    target = w.path("emma", OBJECT_MODULE if kind == "object" else STYLE_MODULE)
    if target.is_file():
        with safe_open(str(target), "pt") as handle:
            trained_on = handle.metadata().get("feature_encoder")
        if trained_on == features.ENCODERS[kind][1]:
            return
        log.info("%s module: trained on %s features, the encoder is now %s: training it again", kind, trained_on,
                 features.ENCODERS[kind][1])
        target.unlink()
        shutil.rmtree(w.runs / kind, ignore_errors=True)  # its checkpoints would resume the old run
    s = w.schedule
    pictures, steps = s.module_size(kind)
    folder = modules.write_dataset(w.data / f"{kind}-dataset", kind, pictures, s.size, s.object_side)
    train_module(w, kind, folder, target, steps)


def _module_job(w: World, kind: str, dataset: Path, target: Path, steps: int):
    """(the loaded models, the TrainingJob of the `kind` module): the pack's job builder with the schedule's
    settings, the models loaded as scripts/train_emma.py loads them (devtools/host/trainer_models.py)."""
    import torch

    from devtools.host import import_comfy
    from devtools.host.trainer_models import load_trainer_models
    from emma_core.state_dict import sha256_file
    from emma_core.train.job import DEFAULT_EMA, TrainingJob
    from emma_core.train.loop import TrainConfig

    s, cpu = w.schedule, torch.device("cpu")
    comfy_dir = import_comfy(builtin_nodes=False)["comfy_dir"]
    checkpoint, ella, t5 = w.path("checkpoints", CHECKPOINT), w.path("ella", ELLA_FILE), w.path("text_encoders", T5_FILE)
    models = load_trainer_models(checkpoint, ella, t5, comfy_dir=comfy_dir, device=cpu)
    config = TrainConfig(steps=steps, batch_size=s.batch, lr=s.module_lr,
                         warmup_iters=min(s.module_warmup, steps // 3), decay_to=0.1, val_every=s.validate_every,
                         checkpoint_every=100, log_every=25, preview_every=s.preview_every, ema_decay=DEFAULT_EMA,
                         precision=s.module_precision)
    job = TrainingJob(modality=kind, dataset=dataset, out_path=target, run_dir=w.runs / kind,
                      cache_root=w.data / f"{kind}-cache", config=config, vae=models.vae,
                      base_model=models.base_model, load_base=models.load_base, ella=models.ella, t5=models.t5,
                      resolution=s.size, text_length="flexible", t5_name=T5_FILE, vae_name=CHECKPOINT,
                      ella_sha256=sha256_file(ella), val_fraction=0.05 if s.validate_every else 0.0,
                      preview_steps=15, release_models=models.release, device=cpu)
    models.t5 = None
    return models, job


def train_module(w: World, kind: str, dataset: Path, target: Path, steps: int) -> None:
    """The `kind` module through the pack's job builder (emma_core/train/job.py), in this process on the CPU."""
    from devtools.host.trainer_models import TrainerModels
    from emma_core.train.job import run_job

    with _trainer_threads():
        _, job = _module_job(w, kind, dataset, target, steps)

        def on_step(step, total, record):
            if step % 25 == 0 or step == total:
                log.info("%s module: step %d/%d loss %.5f", kind, step, total, record["loss"])

        log.info("%s module: %d pictures, %d steps, batch %d, lr %g", kind, len(list(dataset.glob("*.txt"))), steps,
                 w.schedule.batch, w.schedule.module_lr)
        run_job(job, on_cache=lambda report: log.info("%s module: %s", kind, report.text()), on_step=on_step)
    TrainerModels.release()  # a training stage leaves ComfyUI's loaded models; the eval loads its own


def stage_adapter(w: World) -> None:
    """The IP-Adapter-style peer (ipadapter.py) trained as the object module was: the object job's own feature
    cache (same pictures, references and reference views), steps, batch, learning-rate schedule, EMA, dropouts,
    validation split and loop; only the trained part differs. Written to <root>/peer/, not to a models folder."""
    from devtools.host.trainer_models import TrainerModels
    from emma_core.train.job import build_cache, frozen_ella

    from .ipadapter_train import train_adapter

    target = w.root / "peer" / ADAPTER_FILE
    if target.is_file():
        return
    pictures, steps = w.schedule.module_size("object")
    dataset = w.data / "object-dataset"
    if not dataset.is_dir():
        raise RuntimeError(f"the adapter trains on the object module's dataset {dataset}: run the object stage first")
    with _trainer_threads():
        models, job = _module_job(w, "object", dataset, w.path("emma", OBJECT_MODULE), steps)
        report, names = build_cache(job)  # the object stage's cache: found by its fingerprint, not rebuilt
        job.release_models()
        models.load_base()

        def on_step(step, total, record):
            if step % 25 == 0 or step == total:
                log.info("adapter: step %d/%d loss %.5f", step, total, record["loss"])

        log.info("adapter: %d cached pictures, %d steps, batch %d, lr %g", len(names), steps, w.schedule.batch,
                 w.schedule.module_lr)
        train_adapter(report.folder, names, model_patcher=models.patcher, ella=frozen_ella(job.ella, job.device),
                      out_path=target, run_dir=w.runs / "adapter", config=job.config, device=job.device,
                      val_fraction=job.val_fraction, cond_dropout=job.cond_dropout, text_dropout=job.text_dropout,
                      noise_offset=job.noise_offset, min_snr_gamma=job.min_snr_gamma,
                      gradient_checkpointing=job.gradient_checkpointing, on_step=on_step)
    TrainerModels.release()  # a training stage leaves ComfyUI's loaded models; the eval loads its own


@contextlib.contextmanager
def _trainer_threads():
    """The trainer runs on torch's own thread count, as it did in its own process: `--threads` (there to run the
    codec and base stages side by side) never reached it."""
    import torch

    before = torch.get_num_threads()
    if _TRAINER_THREADS:
        torch.set_num_threads(_TRAINER_THREADS[0])
    try:
        yield
    finally:
        torch.set_num_threads(before)


WORLD_FOLDERS = ("checkpoints", "vae_approx", "text_encoders", "ella", "emma", "emma_features")


def write_extra_model_paths(w: World) -> Path:
    """<root>/extra_model_paths.yaml: the section a user's own ComfyUI needs to list the world's models (pass it
    with --extra-model-paths-config, or paste it into ComfyUI's own extra_model_paths.yaml)."""
    from devtools.host.layout import extra_model_paths_yaml

    path = w.root / "extra_model_paths.yaml"
    text = extra_model_paths_yaml(w.models, None, section=f"emma_world_{w.schedule.name}", folders=WORLD_FOLDERS)
    path.write_text(f"# the world's models ({w.schedule.name} schedule), written by python -m devtools.world build\n"
                    + text)
    return path


def stage_eval(w: World) -> None:
    report.run(w)


def run(schedule, until: str | None = None, root: Path | None = None, only: str | None = None) -> World:
    """Build `schedule` (a name of SCHEDULES or a Schedule) under `root` (default .cache/world/<name>)."""
    s = SCHEDULES[schedule] if isinstance(schedule, str) else schedule
    w = World(s, Path(root or DEFAULT_CACHE / "world" / s.name).resolve())
    from devtools.host import ensure_model_folders, import_comfy

    ensure_model_folders(w.models)
    write_extra_model_paths(w)
    import_comfy(builtin_nodes=False)
    for stage in STAGES:
        if only is not None and stage != only:
            continue
        t0 = time.perf_counter()
        log.info("stage %s", stage)
        if stage == "t5":
            stage_t5(w)
        elif stage == "codec":
            stage_codec(w)
        elif stage == "base":
            stage_base(w)
        elif stage == "checkpoint":
            stage_checkpoint(w)
        elif stage in ("object", "style"):
            stage_module(w, stage)
        elif stage == "adapter":
            if w.schedule.peer:
                stage_adapter(w)
        else:
            stage_eval(w)
        w.timings[stage] = round(time.perf_counter() - t0, 1)
        log.info("stage %s done in %.0f s", stage, w.timings[stage])
        if stage == until:
            break
    return w


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.world", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--schedule", choices=sorted(SCHEDULES), default="full")
    b.add_argument("--until", choices=STAGES)
    b.add_argument("--root", type=Path)
    b.add_argument("--only", choices=STAGES, help="run this stage alone")
    b.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    _TRAINER_THREADS[:] = [torch.get_num_threads()]
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args.schedule, args.until, args.root, args.only)
    return 0
