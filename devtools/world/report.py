"""The measurement protocol and its report: which pictures are made, how they are graded, what is written.

Rows of the table (n pictures each; every case its own target, stratified so each shape, colour and
background is asked for equally often; caption templates and references from evaluation-only seeds):
  text only, full caption        the caption names shape, colour and background
  text naming only the shape     colour and background are not asked for (random targets: chance)
  + object module                shape from the text; colour from an object reference of the same shape
  + object module, reference shows another shape   the reference's shape is another one (each equally often):
                                 does the text keep the shape?
  + style module                 shape from the text; background from a background patch
  + both, trained apart, assembled   both modules, assembled at inference
Each row reports per attribute the accuracy, its 95 % Wilson interval and the confusion table (wanted x read).
Beside the table: the full caption and both modules on combinations no training set ever showed; a sweep of
the object module's weight; the object and style modules active on the first or the second half of the
schedule only.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from . import scene as world
from .evaluate import ATTRIBUTES, CHANCE, VALUES, Case, ModuleUse, Sampling, WorldModels, evaluate, score
from .files import ADAPTER_FILE, CHECKPOINT, ELLA_FILE, OBJECT_MODULE, STYLE_MODULE, T5_FILE

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
EMMA, ADAPTER = "EMMA object module (condition weight)", "IP-Adapter peer (scale)"
HALVES = {"first half [0, 0.5]": ModuleUse(1.0, 0.0, 0.5), "second half [0.5, 1]": ModuleUse(1.0, 0.5, 1.0)}


def _ref_seed(split: str, index: int) -> int:
    return int(world.rng("reference", split, index).integers(2**48))


def _unevenness(targets) -> tuple[int, int]:
    """(how far some attribute's counts spread beyond one, the sum of squared counts): lower is more even."""
    beyond, squares = 0, 0
    for a, values in enumerate(VALUES[attribute] for attribute in ATTRIBUTES):
        counts = [0] * len(values)
        for t in targets:
            counts[values.index(t[a])] += 1
        beyond += max(0, max(counts) - min(counts) - 1)
        squares += sum(c * c for c in counts)
    return beyond, squares


def stratified_targets(n: int, combinations, key: str) -> list[tuple[str, str, str]]:
    """n targets from `combinations`: every combination as often as the others (within one), and every shape,
    colour and background asked for equally often (counts within one of each other): each case its own target,
    so a weak value cannot hide behind an easy one and cases are not copies of each other.

    Whole rounds of `combinations` (the world's seen and held-out sets are balanced in every attribute), then
    the rest: distinct combinations chosen by a swap search for the most even counts; the order is shuffled.
    """
    g = world.rng("targets", key)
    combinations = list(combinations)
    rounds, rest = divmod(n, len(combinations))
    order = [int(i) for i in g.permutation(len(combinations))]
    chosen, spare = order[:rest], order[rest:]
    base = combinations * rounds
    best = _unevenness(base + [combinations[i] for i in chosen])
    for _ in range(3000):
        if best[0] == 0 or not spare:  # every attribute within one
            break
        i, j = int(g.integers(len(chosen))), int(g.integers(len(spare)))
        chosen[i], spare[j] = spare[j], chosen[i]
        after = _unevenness(base + [combinations[k] for k in chosen])
        if after <= best:
            best = after
        else:
            chosen[i], spare[j] = spare[j], chosen[i]
    targets = base + [combinations[i] for i in chosen]
    return [tuple(targets[int(i)]) for i in g.permutation(n)]


def _other_shapes(targets, key: str) -> list[str]:
    """A reference shape other than each target's, every shape used equally often (within one): a greedy pick,
    then swaps between cases from the most used shape to the least used one."""
    g = world.rng("other shapes", key)
    counts = dict.fromkeys(world.SHAPES, 0)
    out = []
    for shape, _, _ in targets:
        others = [s for s in world.SHAPES if s != shape]
        low = min(counts[s] for s in others)
        choice = [s for s in others if counts[s] == low]
        out.append(choice[int(g.integers(len(choice)))])
        counts[out[-1]] += 1
    for _ in range(len(targets)):
        most, least = max(counts, key=counts.get), min(counts, key=counts.get)
        if counts[most] - counts[least] <= 1:
            break
        # a case showing `most` whose caption's shape is not `least` takes `least` instead
        i = next(i for i, (t, ref) in enumerate(zip(targets, out)) if ref == most and t[0] != least)
        out[i] = least
        counts[most] -= 1
        counts[least] += 1
    return out


def row_cases(row: str, n: int, combinations=world.SEEN, split: str = "") -> list[Case]:
    """n cases of one row, each with its own target (stratified_targets), caption template, references and
    reference seeds. Rows whose caption names only the shape batch by caption (each picture still its own case,
    drawing its own noise); full captions run one picture per graph."""
    split = split or f"eval/{row}"
    targets = stratified_targets(n, combinations, split)
    other = "another shape" in row
    reference_shapes = _other_shapes(targets, split) if other else [t[0] for t in targets]
    cases = []
    for index, target in enumerate(targets):
        scene = world.Scene(*target, seed=int(world.rng("case", split, index).integers(2**48)))
        object_ref = style_ref = None
        if row.startswith("text only"):
            text = world.caption(scene, "full")
        else:
            text = world.caption(scene, "shape")
            if "object" in row or "both" in row or "adapter" in row:
                object_ref = (reference_shapes[index], target[1], _ref_seed(split, index))
            if "style" in row or "both" in row:
                style_ref = (target[2], _ref_seed(split + "/style", index))
        cases.append(Case(text, target, object_ref, style_ref, other_shape=other,
                          adapter_scale=1.0 if "adapter" in row else None))
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


def tradeoff_cases(n: int) -> dict[tuple[str, float], list[Case]]:
    """Cases whose object reference shows another shape than the caption, at each EMMA condition weight and
    each adapter scale in WEIGHTS (the same cases for both): colour should come from the reference, shape from
    the text."""
    base = row_cases("+ object module, reference shows another shape", n, split="eval/tradeoff")
    out = {}
    for weight in WEIGHTS:
        out[(EMMA, weight)] = [replace(c, object_use=ModuleUse(weight)) for c in base]
        out[(ADAPTER, weight)] = [replace(c, adapter_scale=weight) for c in base]
    return out


def _register_peer(path: Path) -> Path:
    """The IP-Adapter peer's node in this process's ComfyUI (never in the pack's own mappings)."""
    import nodes

    from . import ipadapter

    if not path.is_file():
        raise FileNotFoundError(f"the schedule measures the IP-Adapter peer, but {path} is missing: run the "
                                "adapter stage (python -m devtools.world build --only adapter)")
    nodes.NODE_CLASS_MAPPINGS.update(ipadapter.NODE_CLASS_MAPPINGS)
    return path


def plot_tradeoff(results: dict, path: Path, width: int = 560, height: int = 420) -> None:
    """Shape kept from the text (y) against colour taken from the reference (x), one curve per method, a point
    per weight / scale (labelled), with 95 % intervals; on cases whose reference shows another shape."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 60, width - 20, 40, height - 50

    def xy(x, y):
        return left + (right - left) * x, bottom - (bottom - top) * y

    for a in (0.0, 0.25, 0.5, 0.75, 1.0):
        draw.line([*xy(a, 0), *xy(a, 1)], fill=(235, 235, 235))
        draw.line([*xy(0, a), *xy(1, a)], fill=(235, 235, 235))
        draw.text((xy(a, 0)[0] - 10, bottom + 6), f"{a:.2f}", fill=(60, 60, 60), font=font)
        draw.text((8, xy(0, a)[1] - 6), f"{a:.2f}", fill=(60, 60, 60), font=font)
    draw.rectangle([left, top, right, bottom], outline=(120, 120, 120))
    for method, colour in ((EMMA, (200, 60, 30)), (ADAPTER, (30, 80, 200))):
        points = sorted(results.get(method, {}).items())
        if not points:
            continue
        coords = [xy(r["colour"]["accuracy"], r["shape"]["accuracy"]) for _, r in points]
        draw.line(coords, fill=colour, width=2)
        for (weight, r), (x, y) in zip(points, coords):
            (xlo, xhi), (ylo, yhi) = r["colour"]["interval"], r["shape"]["interval"]
            draw.line([*xy(xlo, r["shape"]["accuracy"]), *xy(xhi, r["shape"]["accuracy"])], fill=colour)
            draw.line([*xy(r["colour"]["accuracy"], ylo), *xy(r["colour"]["accuracy"], yhi)], fill=colour)
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
            draw.text((x + 4, y - 12), f"{weight:g}", fill=colour, font=font)
    draw.text((left, 8), "reference shows another shape: colour from the reference (x) vs shape kept from the text "
                         "(y)", fill=(30, 30, 30), font=font)
    draw.text((left, 22), "red: EMMA object module, by condition weight; blue: IP-Adapter peer, by scale",
              fill=(30, 30, 30), font=font)
    draw.text((width // 2 - 60, height - 20), "colour from the reference", fill=(30, 30, 30), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


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


def world_picture(models, sampling, w, out: Path) -> Path:
    """The demo rows (picture.DEMO) through the same graph as the shipped workflow (batch 1, its seed and
    features file names), composed into out/world-picture.png; also writes the workflow case's raw picture."""
    from PIL import Image

    from devtools.build_workflows import WORLD_SEED
    from devtools.host import run_graph_in_process

    from . import picture as demo
    from .evaluate import api_graph

    results = []
    for row, names in enumerate(demo.write_references(w.models / "emma_features", w.schedule.size)):
        graph = api_graph(models, demo.DEMO[row][0], 1, WORLD_SEED, sampling, names[0], names[1],
                          prefix="world-picture")
        result = run_graph_in_process(graph)
        image = result["outputs"]["save"]["images"][0]
        with Image.open(result["output_dir"] / image.get("subfolder", "") / image["filename"]) as saved:
            results.append(saved.convert("RGB"))
        if row == 0:
            results[0].save(out / "workflow-picture.png")
    return demo.compose(results, w.schedule.size, out / "world-picture.png")


def run(w) -> dict:
    """Measure the built world `w` (build.World: schedule, root, models) and write its report."""
    from devtools.host import REPO_ROOT, load_pack_in_process

    s = w.schedule
    out = REPO_ROOT / s.out if s.out else Path(w.root) / "report"
    load_pack_in_process(w.models)
    models = WorldModels(CHECKPOINT, ELLA_FILE, T5_FILE, OBJECT_MODULE, STYLE_MODULE)
    if s.peer:
        models.adapter = str(_register_peer(Path(w.root) / "peer" / ADAPTER_FILE))
    sampling = Sampling(size=s.size, steps=s.sample_steps)
    features_dir = w.models / "emma_features" / "eval"
    features_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"schedule": asdict(s), "sampling": asdict(sampling), "chance": CHANCE, "rows": {},
                    "unseen": {}, "sweep": {}, "ranges": {}, "tradeoff": {}, "stage_seconds": dict(w.timings)}
    if models.adapter:
        from .ipadapter_train import parameter_counts

        report["parameters"] = parameter_counts(s.unet, s.ella_layers, s.ella_latents, s.size)
    t0 = time.perf_counter()

    def measure(cases):
        pictures, readings = evaluate(models, cases, sampling, features_dir, batch=25)
        return pictures, readings

    for row in s.rows:
        cases = row_cases(row, s.n_per_row)
        pictures, readings = measure(cases)
        report["rows"][row] = {"all": score(cases, readings)}
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
    if models.adapter and s.n_sweep:
        for (method, weight), cases in tradeoff_cases(s.n_sweep).items():
            report["tradeoff"].setdefault(method, {})[weight] = score(cases, measure(cases)[1])
        plot_tradeoff(report["tradeoff"], out / "tradeoff.png")
    out.mkdir(parents=True, exist_ok=True)
    for final in (False, True):  # the measurements are kept even if the picture below fails
        if final:
            world_picture(models, Sampling(size=s.size), w, out)
        report["seconds"] = round(time.perf_counter() - t0, 1)
        (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        (out / "results.md").write_text(markdown(report))
    return report


def _per_value(summary: dict, attribute: str) -> str:
    """'circle 0.92 · square 0.75 · ...': the compact form of one attribute's confusion table."""
    return " · ".join(f"{value} {v['accuracy']:.2f}" for value, v in summary[attribute].get("per_value", {}).items())


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-").replace("--", "-")


def markdown(report: dict) -> str:
    lines = ["| row | n | shape (from text) | colour | background |", "|---|---|---|---|---|"]
    for row, entry in report["rows"].items():
        for part, summary in entry.items():
            name = row if part == "all" else f"&nbsp;&nbsp;{row}: {part}"
            lines.append(f"| {name} | {summary['n']} | " + " | ".join(_fmt(summary, a) for a in ATTRIBUTES) + " |")
    lines.append("| chance | | " + " | ".join(f"{CHANCE[a]:.2f}" for a in ATTRIBUTES) + " |")
    lines += ["", "Accuracy per wanted value (each row's cases are stratified: every value equally often):", "",
              "| row | shape | colour | background |", "|---|---|---|---|"]
    for row, entry in report["rows"].items():
        lines.append(f"| {row} | " + " | ".join(_per_value(entry["all"], a) for a in ATTRIBUTES) + " |")
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
    if report.get("tradeoff"):
        lines += ["", "Trade-off, reference shows another shape than the caption (the same cases at every setting):",
                  "", "| method | weight / scale | n | shape kept from the text | colour from the reference |",
                  "|---|---|---|---|---|"]
        for method, points in report["tradeoff"].items():
            for weight, summary in points.items():
                lines.append(f"| {method} | {weight} | {summary['n']} | {_fmt(summary, 'shape')} | "
                             f"{_fmt(summary, 'colour')} |")
    if report.get("parameters"):
        p = report["parameters"]
        lines += ["", f"Trained parameters: EMMA object module {p['emma_object_module'] / 1e6:.2f} M; IP-Adapter peer "
                      f"{p['adapter'] / 1e6:.2f} M ({p['adapter_layers']} cross-attention layers, "
                      f"{p['adapter_tokens']} image tokens)."]
    if report["ranges"]:
        lines += ["", "Modules active on half of the schedule only:", "",
                  "| module, range | n | shape | colour | background |", "|---|---|---|---|---|"]
        for name, summary in report["ranges"].items():
            lines.append(f"| {name} | {summary['n']} | " + " | ".join(_fmt(summary, a) for a in ATTRIBUTES) + " |")
    return "\n".join(lines) + "\n"
