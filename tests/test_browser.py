"""Every shipped workflow in ComfyUI's real frontend, in headless Chromium, in every frontend the lane names.

Frontends: the host's own (the version its requirements.txt pins: 1.32.9 on ComfyUI 0.3.75, 1.48.7 on 0.33.0)
and each version in $EMMA_FRONTENDS (scripts/test.sh names 1.58.1 on the second lane), served by the same
ComfyUI with --front-end-root. One server and one browser per frontend. For each file in workflows/ the page
loads it the way a user's drag-and-drop does (`app.loadGraphData`), and the test asserts what matters to a
user, by feature rather than by frontend version:

- every node type is known (registered in LiteGraph; no "missing nodes" dialog), no schema alert;
- right after loading, only loaders whose model file is absent may be flagged (newer frontends mark them red
  on purpose until a file is picked; older ones do not mark them at all): no other node has errors;
- every widget value is valid once the files exist: after the real model names are swapped for the
  generated stand-ins *in the page* (a test machine has no real weights), every combo holds one of its
  options and every number is a number;
- queueing from the page (`app.queuePrompt`, what the Run button calls) is accepted without node errors
  and produces an image (read back through the server's /history).

Two screenshots per workflow go to .cache/screenshots/comfyui-<version>_frontend-<version>/ (git-ignored):
<workflow>-loaded.png (what a user sees right after loading, without the model files) and <workflow>.png
(after the run, the stand-ins swapped in).

The browser is Debian's Chromium at /usr/bin/chromium (scripts/setup_env.sh installs it); playwright is
only the driver and never downloads a browser of its own. Marked slow: `-m "not slow"` skips it.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from devtools.build_workflows import TRAINING_WORKFLOWS, WORLD_WORKFLOWS
from devtools.host import ComfyServer, pinned_frontend, provision_frontend
from devtools.run_workflow import ensure_input_images, standin_for
from devtools.workflow_api import combo_options, load_ui_workflow

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# The host's own frontend, then each extra version (comma-separated) served with --front-end-root.
FRONTENDS = ["own", *[v.strip() for v in os.environ.get("EMMA_FRONTENDS", "").split(",") if v.strip()]]
# Heavier loaders stay in ComfyUI's cache between consecutive prompts: keep workflows that share them
# together (CLIP vision ViT-H is real size), then by name.
# EMMA_BROWSER_WORKFLOWS=<folder> runs the same checks on other UI workflows (a user's, a draft's).
WORKFLOW_DIR = Path(os.environ.get("EMMA_BROWSER_WORKFLOWS") or REPO / "workflows")
WORKFLOWS = sorted(WORKFLOW_DIR.glob("*.json"),
                   key=lambda p: ('"CLIPVisionLoader"' in p.read_text(), p.name))
SCREENSHOTS = REPO / ".cache" / "screenshots"
CHROMIUM = os.environ.get("EMMA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# A CPU run of a stand-in graph takes seconds at this size (each step recomputes the connector and the
# EMMA modules at their real size, so steps dominate).
SMALL = {"EmptyLatentImage": {"width": 64, "height": 64}, "KSampler": {"steps": 2},
         "BasicScheduler": {"steps": 2}, "KSamplerAdvanced": {"steps": 2}}
# Settings a first-time user would click away (the template browser opens on first start).
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Validation.Workflows": True}


def _chromium_or_skip() -> None:
    if Path(CHROMIUM).exists():
        return
    # CI runs scripts/setup_env.sh as root, which installs Debian's chromium: there a missing browser
    # is a set-up failure, not a reason to skip.
    if os.geteuid() == 0 or os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup_env.sh installs Debian's chromium")
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")


@pytest.fixture(scope="module", params=FRONTENDS, ids=[f"frontend-{f}" for f in FRONTENDS])
def frontend(request, comfy_server, comfy_dir, models_root):
    """(server, label, expected frontend version): the session's server for the host's own frontend, a
    server of its own (same ComfyUI, same models) for an extra frontend."""
    from devtools.host.comfy_import import comfyui_version

    version = request.param
    if version == "own":
        server, version = comfy_server, pinned_frontend(comfy_dir)
        yield server, f"comfyui-{comfyui_version(comfy_dir)}_frontend-{version}", version
        return
    server = ComfyServer(comfy_dir, models_root, front_end_root=provision_frontend(version))
    try:
        server.start()
        yield server, f"comfyui-{comfyui_version(comfy_dir)}_frontend-{version}", version
    finally:
        server.stop()


@pytest.fixture(scope="module")
def page(frontend):
    server, label, version = frontend
    _chromium_or_skip()
    playwright_api = pytest.importorskip("playwright.sync_api")
    import urllib.request

    for key, value in SETTINGS.items():
        req = urllib.request.Request(f"{server.url}/api/settings/{key}", data=json.dumps(value).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10).read()
    ensure_input_images(server.input_dir, server.comfy_dir)
    (SCREENSHOTS / label).mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="emma-chromium-")
    with playwright_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1920, "height": 1200})
        try:
            pg = context.pages[0] if context.pages else context.new_page()
            pg.page_errors = []
            pg.on("pageerror", lambda exc: pg.page_errors.append(str(exc)))
            pg.goto(server.url)
            pg.wait_for_function(
                "window.app && window.app.graph && window.LiteGraph && window.app.vueAppReady !== false"
                " && Object.keys(LiteGraph.registered_node_types).length > 100", timeout=120_000)
            served = pg.evaluate("window.__COMFYUI_FRONTEND_VERSION__")
            if version is not None:  # None: a ComfyUI (EMMA_COMFYUI_DIR) that pins no frontend
                assert served == version, f"the page runs frontend {served}, expected {version}"
            registered = pg.evaluate("Object.keys(LiteGraph.registered_node_types)")
            assert "EMMATextEncode" in registered, "the frontend did not register the pack's nodes"
            pg.server, pg.label = server, label
            yield pg
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


def _swaps_for(ui: dict, object_info: dict) -> tuple[dict, set]:
    """({node type: {widget name: {real value: stand-in}}}, {ids of the nodes that name an absent file}) for
    the model names this server lacks, from the same table the API-graph tests use
    (devtools.run_workflow.standin_for)."""
    swaps: dict = {}
    absent: set = set()
    for (class_type, name), standin in standin_for().items():
        if class_type not in object_info:
            continue
        spec = object_info[class_type]["input"]
        spec = spec.get("required", {}).get(name) or spec.get("optional", {}).get(name)
        values = combo_options(spec) or []
        for node in ui["nodes"]:
            if node["type"] != class_type:
                continue
            for real in node.get("widgets_values") or []:
                if not isinstance(real, str) or real in values:
                    continue
                absent.add(str(node["id"]))  # newer frontends keep node ids as strings
                replacement = standin(real) if callable(standin) else standin
                if replacement in values:
                    swaps.setdefault(class_type, {}).setdefault(name, {})[real] = replacement
    return swaps, absent


def _naming_unlisted_values(ui: dict, object_info: dict) -> set:
    """Ids of the nodes with a text widget value that none of their combo inputs lists: loaders naming a file
    this server does not have (e.g. the world workflow's models, which no stand-in replaces)."""
    ids = set()
    for node in ui["nodes"]:
        spec = object_info.get(node.get("type"), {}).get("input", {})
        options = [o for group in ("required", "optional") for v in spec.get(group, {}).values()
                   if (o := combo_options(v)) is not None]
        if not options:
            continue
        values = node.get("widgets_values") or []
        if any(isinstance(x, str) and x and not any(x in o for o in options) for x in values):
            ids.add(str(node["id"]))
    return ids


LOAD_JS = """async ([ui, name]) => {
    document.querySelectorAll('.p-toast-close-button').forEach(b => b.click());
    await new Promise(r => setTimeout(r, 100));
    await app.loadGraphData(ui, true, true, name);
    await new Promise(r => setTimeout(r, 500));
    const toasts = [...document.querySelectorAll('.p-toast-message')].map(t => t.innerText.slice(0, 600));
    const registered = LiteGraph.registered_node_types;
    const nodes = app.graph.nodes.map(n => ({id: n.id, type: n.type, registered: n.type in registered,
                                             has_errors: !!n.has_errors}));
    const dialogs = [...document.querySelectorAll('.p-dialog')].map(d => d.innerText.slice(0, 400));
    return {nodes, dialogs, toasts};
}"""

EDIT_JS = """([swaps, small]) => {
    const changed = [];
    for (const node of app.graph.nodes) {
        for (const w of node.widgets || []) {
            const table = (swaps[node.type] || {})[w.name];
            if (table && w.value in table) {
                changed.push(`${node.type}.${w.name}: ${w.value} -> ${table[w.value]}`);
                w.value = table[w.value];
                w.callback?.(w.value);
            }
            const size = (small[node.type] || {})[w.name];
            if (size !== undefined) { w.value = size; w.callback?.(w.value); }
        }
    }
    app.graph.setDirtyCanvas(true, true);
    return changed;
}"""

CHECK_JS = """() => {
    const errors = [];
    for (const node of app.graph.nodes) {
        for (const w of node.widgets || []) {
            let values = w.options?.values;
            if (typeof values === 'function') values = values(w, node);
            if (w.type === 'combo' && Array.isArray(values) && !values.includes(w.value))
                errors.push(`${node.type} #${node.id} ${w.name}=${JSON.stringify(w.value)} not in its options`);
            if (w.type === 'number' && (typeof w.value !== 'number' || Number.isNaN(w.value)))
                errors.push(`${node.type} #${node.id} ${w.name}=${JSON.stringify(w.value)} is not a number`);
        }
    }
    return errors;
}"""


def test_chromium_is_debians_and_playwright_did_not_download_one():
    _chromium_or_skip()
    cache = Path(os.environ.get("PLAYWRIGHT_BROWSERS_PATH") or Path.home() / ".cache" / "ms-playwright")
    # The driver is used with executable_path only; a downloaded browser would mean someone ran
    # `playwright install`, which cannot work offline and is not what CI relies on.
    assert not any(cache.glob("chromium*")) or os.environ.get("EMMA_ALLOW_PLAYWRIGHT_BROWSERS")


FIT_JS = """() => {
    for (const b of document.querySelectorAll('.p-toast-close-button')) b.click();
    const nodes = app.graph.nodes;
    const x0 = Math.min(...nodes.map(n => n.pos[0])), y0 = Math.min(...nodes.map(n => n.pos[1] - 30));
    const x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0]));
    const y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
    const left = 70, top = 110;  // the side bar and the tab/menu bars
    const scale = Math.max(0.6, Math.min(1.0, (window.innerWidth - left - 20) / (x1 - x0),
                                         (window.innerHeight - top - 20) / (y1 - y0)));
    app.canvas.ds.scale = scale;
    app.canvas.ds.offset = [left / scale - x0, top / scale - y0];
    app.graph.setDirtyCanvas(true, true);
}"""


def _screenshot(page, name: str) -> Path:
    for _ in range(3):  # dialogs (e.g. "Missing Models") would cover the graph
        page.keyboard.press("Escape")
    page.evaluate(FIT_JS)
    page.wait_for_timeout(200)
    shot = SCREENSHOTS / page.label / f"{name}.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    return shot


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_in_the_frontend(page, path):
    t0 = time.monotonic()
    server = page.server
    ui = load_ui_workflow(path)
    info = server.object_info()

    for _ in range(3):  # close what the previous workflow left open (e.g. the "Missing Models" dialog)
        page.keyboard.press("Escape")
    loaded = page.evaluate(LOAD_JS, [ui, path.name])
    missing = [n for n in loaded["nodes"] if not n["registered"]]
    assert not missing, f"{path.name}: missing node types in the frontend: {missing}"
    assert len(loaded["nodes"]) == len(ui["nodes"])
    # "Missing Models" (real weights named in properties.models) is expected on a test machine; a missing
    # node type is not.
    assert not [d for d in loaded["dialogs"] if "missing node" in d.lower()], loaded["dialogs"]
    # The frontend validates every loaded workflow against its schema (zod) and shows an alert per
    # problem, e.g. a `properties.models` entry without a `url`, or `"id": null`.
    alerts = [t for t in loaded["toasts"] if "invalid" in t.lower() or "error" in t.lower()]
    assert not alerts, f"{path.name}: the frontend reports: {alerts}"
    swaps, absent = _swaps_for(ui, info)
    absent |= _naming_unlisted_values(ui, info)
    flagged = {str(n["id"]) for n in loaded["nodes"] if n["has_errors"]}
    assert flagged <= absent, (f"{path.name}: nodes with errors right after loading that name no absent model "
                               f"file: {sorted(flagged - absent)}")
    _screenshot(page, f"{path.stem}-loaded")
    if path.name in WORLD_WORKFLOWS:
        # Its models are the world's own (no stand-in has their shapes): the world's CI test runs it on the
        # server and compares its picture with the evaluation's.
        print(f"{page.label} {path.stem}: loaded, {len(flagged)} loaders flagged (world models absent)")
        return
    if path.name in TRAINING_WORKFLOWS:
        # It trains on a folder of the user's pictures, which its note asks for: tests/test_workflows.py runs it
        # on the server with a generated folder.
        print(f"{page.label} {path.stem}: loaded (runs in test_workflows with a generated folder)")
        return

    changed = page.evaluate(EDIT_JS, [swaps, SMALL])
    assert changed, "a test machine has no real weights: the stand-ins must have been swapped in"
    widget_errors = page.evaluate(CHECK_JS)
    assert not widget_errors, f"{path.name}: widget errors: {widget_errors}"

    with page.expect_response(lambda r: r.url.endswith("/api/prompt") and r.request.method == "POST",
                              timeout=60_000) as answer:
        page.evaluate("() => app.queuePrompt(0)")
    body = answer.value.json()
    assert answer.value.status == 200, f"{path.name}: the server refused the prompt: {body}"
    assert not body.get("node_errors"), f"{path.name}: node errors: {body['node_errors']}"
    history = server.wait(body["prompt_id"], timeout=600)
    images = server.output_images(history)
    assert len(images) == 1 and images[0].exists() and images[0].stat().st_size > 0

    # Let the page receive the result (the preview on SaveImage), then record what the user sees.
    page.wait_for_timeout(500)
    _screenshot(page, path.stem)
    assert not [e for e in page.page_errors if "emma" in e.lower()], page.page_errors
    print(f"{page.label} {path.stem}: {time.monotonic() - t0:.1f} s, flagged {len(flagged)}, "
          f"swapped {len(changed)}")
