"""The measurement protocol and its report: which pictures are made, how they are graded, what is written.

Rows of the table (n pictures each, caption templates and references drawn from evaluation-only seeds):
  text only, full caption        the caption names shape, colour and background
  text naming only the shape     colour and background are not asked for (random targets: chance)
  + object module                shape from the text; colour from an object reference; half the references
                                 show another shape than the text names (reported apart)
  + style module                 shape from the text; background from a background patch
  + both, trained apart, assembled   both modules, assembled at inference
Beside the table: the full caption and both modules on combinations no training set ever showed; a sweep of
the object module's weight; the object and style modules active on the first or the second half of the
schedule only.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from . import scene as world
from .evaluate import ATTRIBUTES, CHANCE, Case, ModuleUse, Sampling, WorldModels, evaluate, score
from .files import CHECKPOINT, ELLA_FILE, OBJECT_MODULE, STYLE_MODULE, T5_FILE

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
HALVES = {"first half [0, 0.5]": ModuleUse(1.0, 0.0, 0.5), "second half [0.5, 1]": ModuleUse(1.0, 0.5, 1.0)}


def _ref_seed(split: str, index: int) -> int:
    return int(world.rng("reference", split, index).integers(2**48))


def _other_shape(shape: str, g) -> str:
    others = [s for s in world.SHAPES if s != shape]
    return others[int(g.integers(len(others)))]


BLOCK = 4  # cases in a row come in blocks of 4 that share the target combination and so the caption: they batch


def row_cases(row: str, n: int, combinations=world.SEEN, split: str = "") -> list[Case]:
    """n cases of one row (targets uniform over `combinations`, in blocks of BLOCK)."""
    split = split or f"eval/{row}"
    leaders = list(world.scenes(split, -(-n // BLOCK), combinations))
    cases = []
    for index in range(n):
        target = leaders[index // BLOCK]
        g = world.rng("case", split, index)
        full = world.caption(target, "full", variant=(index // BLOCK) % len(world.FULL))
        shape_only = world.caption(target, "shape", variant=0)
        object_ref = style_ref = None
        other = False
        if row == "text only, full caption":
            text = full
        elif row == "text naming only the shape":
            text = shape_only
        else:
            text = shape_only
            if "object" in row or "both" in row:
                other = index % 2 == 1
                object_ref = (_other_shape(target.shape, g) if other else target.shape, target.colour,
                              _ref_seed(split, index))
            if "style" in row or "both" in row:
                style_ref = (target.background, _ref_seed(split + "/style", index))
        cases.append(Case(text, target.combination, object_ref, style_ref, other_shape=other))
    return cases


def sweep_cases(n: int) -> dict[float, list[Case]]:
    out = {}
    for weight in WEIGHTS:
        base = row_cases("+ object module", n, split="eval/sweep")
        out[weight] = [Case(c.caption, c.target, (c.target[0],) + c.object_ref[1:], None, ModuleUse(weight))
                       for c in base]
    return out


def range_cases(n: int) -> dict[str, list[Case]]:
    out = {}
    for half, use in HALVES.items():
        objects = row_cases("+ object module", n, split="eval/range-object")
        out[f"object module, {half}"] = [Case(c.caption, c.target, (c.target[0],) + c.object_ref[1:], None, use)
                                         for c in objects]
        styles = row_cases("+ style module", n, split="eval/range-style")
        out[f"style module, {half}"] = [Case(c.caption, c.target, None, c.style_ref, style_use=use) for c in styles]
    return out


def _fmt(summary: dict, attribute: str) -> str:
    s = summary[attribute]
    if s["accuracy"] is None:
        return "-"
    lo, hi = s["interval"]
    return f"{s['accuracy']:.2f} [{lo:.2f}, {hi:.2f}]"


def grid(pictures, cases, path: Path, count: int = 8, cell: int = 96, size: int = world.SIZE) -> None:
    """One PNG: a column per case, rows: object reference, background reference, result; caption below."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    count = min(count, len(cases))
    rows = 3
    label = 26
    img = Image.new("RGB", (count * cell, rows * cell + label), "white")
    draw = ImageDraw.Draw(img)
    for i in range(count):
        case = cases[i]
        x = i * cell
        refs = [world.object_reference(*case.object_ref, size) if case.object_ref else None,
                world.background_patch(*case.style_ref, size) if case.style_ref else None, None]
        for r, ref in enumerate(refs):
            if ref is not None:
                img.paste(Image.fromarray(world.to_uint8(ref)).resize((cell, cell), Image.NEAREST), (x, r * cell))
            elif r < 2:
                draw.text((x + 4, r * cell + cell // 2 - 6), "no reference", fill=(150, 150, 150), font=font)
        img.paste(Image.fromarray(pictures[i]).resize((cell, cell), Image.NEAREST), (x, 2 * cell))
        words = case.caption.split()
        draw.text((x + 2, rows * cell + 1), " ".join(words[:3]), fill=(30, 30, 30), font=font)
        draw.text((x + 2, rows * cell + 13), " ".join(words[3:6]), fill=(30, 30, 30), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def plot_sweep(results: dict, path: Path, width: int = 560, height: int = 340) -> None:
    """Accuracy of colour (from the reference) and shape (from the text) against the object module's weight."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 60, width - 20, 30, height - 50
    draw.rectangle([left, top, right, bottom], outline=(120, 120, 120))
    weights = sorted(results)
    wmax = max(weights) or 1.0

    def xy(w, a):
        return left + (right - left) * w / wmax, bottom - (bottom - top) * a

    for a in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = xy(0, a)[1]
        draw.line([left, y, right, y], fill=(230, 230, 230))
        draw.text((8, y - 6), f"{a:.2f}", fill=(60, 60, 60), font=font)
    for w in weights:
        x = xy(w, 0)[0]
        draw.text((x - 10, bottom + 6), f"{w:g}", fill=(60, 60, 60), font=font)
    for attribute, colour in (("colour", (200, 60, 30)), ("shape", (30, 80, 200))):
        points = [xy(w, results[w][attribute]["accuracy"]) for w in weights]
        draw.line(points, fill=colour, width=2)
        for (x, y), w in zip(points, weights):
            lo, hi = results[w][attribute]["interval"]
            draw.line([x, xy(w, lo)[1], x, xy(w, hi)[1]], fill=colour)
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        chance = xy(0, CHANCE[attribute])[1]
        draw.line([left, chance, right, chance], fill=tuple(min(255, c + 120) for c in colour))
    draw.text((left, 8), "object module weight -> colour (red, from the reference) and shape (blue, from the "
                         "text); light lines: chance", fill=(30, 30, 30), font=font)
    draw.text((width // 2 - 40, height - 20), "module weight", fill=(30, 30, 30), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


# The world picture (docs, README, scripts/demo.sh --world): caption + references -> result. The first case is
# the shipped workflow workflows/emma_world_assembled.json, whose picture the tests compare with this one.
DEMO = (("a circle", ("square", "red", 11), ("stripes", 12)),
        ("a triangle", ("circle", "blue", 13), ("dots", 14)),
        ("a cross", ("triangle", "green", 15), ("checks", 16)),
        ("a square", ("cross", "magenta", 17), ("plain", 18)))


def world_picture(models, sampling, w, out: Path) -> Path:
    """Render the demo cases through the same graph as the shipped workflow (batch 1, its seed and features
    file names) and compose them into one picture; also writes the workflow case's raw picture."""
    from PIL import Image, ImageDraw, ImageFont

    from devtools.build_workflows import WORLD_OBJECT_REFERENCE, WORLD_SEED, WORLD_STYLE_REFERENCE
    from devtools.host import run_graph_in_process

    from . import features as world_features
    from .evaluate import api_graph

    folder = w.models / "emma_features"
    cell, label = 128, 18
    font = ImageFont.load_default()
    canvas = Image.new("RGB", (3 * cell, len(DEMO) * (cell + label) + 16), "white")
    draw = ImageDraw.Draw(canvas)
    for col, title in enumerate(("object reference", "background reference", "result")):
        draw.text((col * cell + 4, 2), title, fill=(40, 40, 40), font=font)
    for row, (caption, obj, style) in enumerate(DEMO):
        # references at the size the modules were trained on (their encoders' token counts follow it)
        refs = [world.object_reference(*obj, w.schedule.size), world.background_patch(*style, w.schedule.size)]
        names = (WORLD_OBJECT_REFERENCE, WORLD_STYLE_REFERENCE) if row == 0 else \
            (f"demo/object-{row}.safetensors", f"demo/style-{row}.safetensors")
        for kind, ref, name in zip(("object", "style"), refs, names):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            world_features.write_features(kind, [ref], folder / name)
        graph = api_graph(models, caption, 1, WORLD_SEED, sampling, names[0], names[1], prefix="world-picture")
        result = run_graph_in_process(graph)
        image = result["outputs"]["save"]["images"][0]
        with Image.open(result["output_dir"] / image.get("subfolder", "") / image["filename"]) as picture:
            picture = picture.convert("RGB")
            if row == 0:
                picture.save(out / "workflow-picture.png")
            top = 16 + row * (cell + label)
            for col, p in enumerate([Image.fromarray(world.to_uint8(r)) for r in refs] + [picture]):
                canvas.paste(p.resize((cell, cell), Image.NEAREST), (col * cell, top))
        draw.text((4, top + cell + 2), f'"{caption}"  +  {obj[1]} {obj[0]} reference  +  {style[0]} patch',
                  fill=(30, 30, 30), font=font)
    path = out / "world-picture.png"
    canvas.save(path)
    return path


def run(w) -> dict:
    """Measure the built world `w` (build.World: schedule, root, models) and write its report."""
    from devtools.host import REPO_ROOT, load_pack_in_process

    s = w.schedule
    out = REPO_ROOT / s.out if s.out else Path(w.root) / "report"
    load_pack_in_process(w.models)
    models = WorldModels(CHECKPOINT, ELLA_FILE, T5_FILE, OBJECT_MODULE, STYLE_MODULE)
    sampling = Sampling(size=s.size, steps=s.sample_steps)
    features_dir = w.models / "emma_features" / "eval"
    features_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"schedule": asdict(s), "sampling": asdict(sampling), "chance": CHANCE, "rows": {},
                    "unseen": {}, "sweep": {}, "ranges": {}}
    t0 = time.perf_counter()

    def measure(cases):
        pictures, readings = evaluate(models, cases, sampling, features_dir, batch=25)
        return pictures, readings

    for row in s.rows:
        cases = row_cases(row, s.n_per_row)
        pictures, readings = measure(cases)
        entry = {"all": score(cases, readings)}
        if any(c.object_ref for c in cases):
            entry["reference shows the caption's shape"] = score(cases, readings, lambda c: not c.other_shape)
            entry["reference shows another shape"] = score(cases, readings, lambda c: c.other_shape)
        report["rows"][row] = entry
        grid(pictures, cases, out / f"{_slug(row)}.png", size=s.size)
    if s.n_unseen:
        for row in ("text only, full caption", "+ both, trained apart, assembled"):
            cases = row_cases(row, s.n_unseen, combinations=world.HELD_OUT, split=f"eval/unseen/{row}")
            pictures, readings = measure(cases)
            report["unseen"][row] = score(cases, readings)
            grid(pictures, cases, out / f"unseen-{_slug(row)}.png", size=s.size)
    if s.n_sweep:
        for weight, cases in sweep_cases(s.n_sweep).items():
            report["sweep"][weight] = score(cases, measure(cases)[1])
        plot_sweep(report["sweep"], out / "object-weight-sweep.png")
    if s.n_range:
        for name, cases in range_cases(s.n_range).items():
            report["ranges"][name] = score(cases, measure(cases)[1])
    out.mkdir(parents=True, exist_ok=True)
    for final in (False, True):  # the measurements are kept even if the picture below fails
        if final:
            world_picture(models, Sampling(), w, out)
        report["seconds"] = round(time.perf_counter() - t0, 1)
        (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        (out / "results.md").write_text(markdown(report))
    return report


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-").replace("--", "-")


def markdown(report: dict) -> str:
    lines = ["| row | n | shape (from text) | colour | background |", "|---|---|---|---|---|"]
    for row, entry in report["rows"].items():
        for part, summary in entry.items():
            name = row if part == "all" else f"&nbsp;&nbsp;{row}: {part}"
            lines.append(f"| {name} | {summary['n']} | " + " | ".join(_fmt(summary, a) for a in ATTRIBUTES) + " |")
    lines.append("| chance | | " + " | ".join(f"{CHANCE[a]:.2f}" for a in ATTRIBUTES) + " |")
    if report["unseen"]:
        lines += ["", "Combinations never seen together in any training:", "",
                  "| row | n | shape | colour | background |", "|---|---|---|---|---|"]
        for row, summary in report["unseen"].items():
            lines.append(f"| {row} | {summary['n']} | " + " | ".join(_fmt(summary, a) for a in ATTRIBUTES) + " |")
    if report["sweep"]:
        lines += ["", "Object module weight sweep (text names the shape; the reference shows it too):", "",
                  "| weight | n | shape | colour | background |", "|---|---|---|---|---|"]
        for weight, summary in report["sweep"].items():
            lines.append(f"| {weight} | {summary['n']} | " + " | ".join(_fmt(summary, a) for a in ATTRIBUTES) + " |")
    if report["ranges"]:
        lines += ["", "Modules active on half of the schedule only:", "",
                  "| module, range | n | shape | colour | background |", "|---|---|---|---|---|"]
        for name, summary in report["ranges"].items():
            lines.append(f"| {name} | {summary['n']} | " + " | ".join(_fmt(summary, a) for a in ATTRIBUTES) + " |")
    return "\n".join(lines) + "\n"
