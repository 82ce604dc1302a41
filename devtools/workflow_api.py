"""Convert a ComfyUI UI-format workflow (what the frontend saves and users share) to an API prompt.

UI format: ``{"nodes": [...], "links": [...], "groups": [...], "version": 0.4, ...}``; every node has
``id``, ``type``, ``inputs`` ([{name, type, link, widget?}]), ``outputs``, ``widgets_values`` (a list,
sometimes a dict keyed by widget name) and ``mode`` (0 normal, 2 muted/never, 4 bypassed).

API format (``POST /prompt``): ``{"<id>": {"class_type": ..., "inputs": {name: value | [src_id, slot]}}}``.

The conversion is driven by the node definitions of ``GET /object_info`` (pass the dict in), and
mirrors what the frontend's ``graphToPrompt`` does:

- widget values are matched to the node's widget inputs in ``input_order`` (required, then optional);
  the frontend stores extra values that are not inputs: the "control after generate" value after
  seed-like INT widgets (and after any INT/FLOAT/COMBO whose options set ``control_after_generate``;
  a COMBO also gets a filter-list value), the "upload" button value after an upload combo (older
  frontends), and values for ``forceInput`` inputs (older frontends). These are skipped;
- a linked input takes the link (``[str(origin_id), origin_slot]``), overriding a widget value;
- ``Reroute`` nodes are followed to the real source; a ``PrimitiveNode``'s value
  (``widgets_values[0]``) becomes the value of every input it feeds;
- muted nodes (mode 2) are dropped and links from them removed; bypassed nodes (mode 4) are dropped
  and links from them re-routed to the bypassed node's input of the same type (same slot index
  first, then the first input of that type), else removed (a widget input then keeps its widget
  value, as in the frontend);
- ``Note``/``MarkdownNote`` and unknown nodes whose outputs are not linked (UI-only) are dropped;
  unknown nodes that feed something raise ``ValueError``;
- subgraphs (``definitions.subgraphs``) and legacy group nodes raise ``NotImplementedError``.

Not done (the frontend does it at queue time): dynamic-prompt expansion of ``{a|b}`` and comment
stripping in ``dynamicPrompts`` STRING widgets, and applying "control before generate".
"""

from __future__ import annotations

import copy
import itertools
import json
import os
from typing import Any, Iterable, Optional, Union

__all__ = [
    "CONTROL_VALUES",
    "VIRTUAL_NODE_TYPES",
    "UI_ONLY_NODE_TYPES",
    "load_ui_workflow",
    "is_ui_workflow",
    "widget_inputs",
    "widget_map",
    "ui_to_api",
    "convert_file",
    "override_inputs",
    "find_nodes",
]

MODE_NORMAL = 0
MODE_NEVER = 2  # muted
MODE_BYPASS = 4

#: values the frontend stores in a "control after generate" widget
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize", "increment-wrap"})

#: node types that only exist in the frontend and are never sent to the server
UI_ONLY_NODE_TYPES = frozenset({"Note", "MarkdownNote", "Label (rgthree)", "Note Plus (mtb)"})
#: frontend-only nodes that forward a value (handled specially)
VIRTUAL_NODE_TYPES = frozenset({"Reroute", "PrimitiveNode"})

#: input types the frontend turns into widgets (besides COMBO lists)
WIDGET_TYPES = frozenset({
    "INT", "FLOAT", "STRING", "BOOLEAN", "COMBO",
    # frontend widget constructors that a backend type can name directly
    "MARKDOWN", "COLOR", "TEXTAREA", "IMAGECOMPARE", "CHART", "GALLERIA",
})
#: option keys that make the frontend add an upload button after a combo
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload", "audio_upload",
                  "file_upload", "upload")


# --------------------------------------------------------------------------- loading

def load_ui_workflow(path: Union[str, os.PathLike]) -> dict:
    """Read a UI-format workflow JSON file (raises ValueError if it is an API prompt instead)."""
    with open(path, "r", encoding="utf-8") as f:
        data = json.load(f)
    if not is_ui_workflow(data):
        raise ValueError(f"{path}: not a UI-format workflow (no 'nodes' list); "
                         "is it already an API prompt?")
    return data


def is_ui_workflow(data: Any) -> bool:
    """True for a UI-format workflow, False for an API prompt or anything else."""
    return isinstance(data, dict) and isinstance(data.get("nodes"), list)


# --------------------------------------------------------------------------- widgets

def _input_spec(info: dict, name: str) -> Optional[list]:
    inputs = info.get("input", {})
    for section in ("required", "optional"):
        spec = inputs.get(section, {}).get(name)
        if spec is not None:
            return spec
    return None


def _ordered_input_names(info: dict) -> list:
    inputs = info.get("input", {})
    order = info.get("input_order") or {}
    names = []
    for section in ("required", "optional"):
        sec_names = order.get(section)
        if sec_names is None:
            sec_names = list(inputs.get(section, {}).keys())
        names.extend(sec_names)
    return names


def _options(spec: list) -> dict:
    if len(spec) > 1 and isinstance(spec[1], dict):
        return spec[1]
    return {}


def _is_widget_type(spec: list) -> bool:
    t = spec[0]
    if isinstance(t, (list, tuple)):
        return True
    return isinstance(t, str) and t in WIDGET_TYPES


def _is_combo(spec: list) -> bool:
    return isinstance(spec[0], (list, tuple)) or spec[0] == "COMBO"


def combo_options(spec: list) -> Optional[list]:
    """The options of a COMBO input spec, in either form hosts send (``[[options], {...}]``, or
    ``["COMBO", {"options": [...]}]`` in newer hosts); None for any other input."""
    if spec and isinstance(spec[0], (list, tuple)):
        return list(spec[0])
    if spec and spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        return list(spec[1].get("options") or [])
    return None


def widget_inputs(info: dict) -> list:
    """The widget inputs of a node definition, in frontend order, as dicts:

    ``{"name", "type", "control": 0|1|2, "upload": bool, "force_input": bool}``.
    ``control`` is how many extra values the frontend stores after the widget (1 control value,
    plus 1 filter-list value for a COMBO). ``force_input`` widgets have no widget in current
    frontends (older ones stored a value for them).
    """
    out = []
    for name in _ordered_input_names(info):
        spec = _input_spec(info, name)
        if not spec or not _is_widget_type(spec):
            continue
        opts = _options(spec)
        wtype = "COMBO" if _is_combo(spec) else spec[0]
        cag = opts.get("control_after_generate")
        control = 0
        if wtype == "INT":
            # frontend: spec.control_after_generate ?? ["seed", "noise_seed"].includes(name)
            if cag is None:
                cag = name in ("seed", "noise_seed")
            control = 1 if cag else 0
        elif wtype == "FLOAT":
            control = 1 if cag else 0
        elif wtype == "COMBO":
            control = 2 if cag else 0
        upload = wtype == "COMBO" and any(opts.get(k) for k in UPLOAD_OPTIONS)
        out.append({"name": name, "type": wtype, "control": control, "upload": upload,
                    "force_input": bool(opts.get("forceInput"))})
    return out


def _layout(widgets: list, *, with_upload: bool, with_force: bool, with_filter: bool) -> list:
    """(kind, name) for each stored value; kind is 'value' or a kind of extra to skip."""
    layout = []
    for w in widgets:
        if w["force_input"]:
            if with_force:
                layout.append(("force", w["name"]))
            continue
        layout.append(("value", w["name"]))
        if w["control"]:
            layout.append(("control", w["name"]))
            if w["control"] == 2 and with_filter:
                layout.append(("filter", w["name"]))
        if w["upload"] and with_upload:
            layout.append(("upload", w["name"]))
    return layout


def _score(layout: list, values: list) -> tuple:
    bad_controls = sum(1 for (kind, _), v in zip(layout, values)
                       if kind == "control" and v not in CONTROL_VALUES)
    return (len(layout) != len(values), bad_controls)


def widget_map(node: dict, object_info: dict) -> dict:
    """``{input_name: value}`` from a UI node's ``widgets_values``, extras skipped.

    Works out which optional extras (upload value, forceInput values, COMBO filter value) the
    saving frontend stored by matching the number of values (and where the control values sit).
    """
    values = node.get("widgets_values")
    info = object_info.get(node.get("type"))
    if values is None or info is None:
        return {}
    widgets = widget_inputs(info)
    if isinstance(values, dict):
        names = {w["name"] for w in widgets}
        return {k: v for k, v in values.items() if k in names}
    values = list(values)
    best = None
    # try the current-frontend layout first, then the ones older frontends wrote
    for with_upload, with_force, with_filter in (
            (False, False, True), (True, False, True), (False, True, True), (True, True, True),
            (False, False, False), (True, False, False), (False, True, False), (True, True, False)):
        layout = _layout(widgets, with_upload=with_upload, with_force=with_force,
                         with_filter=with_filter)
        score = _score(layout, values)
        if best is None or score < best[0]:
            best = (score, layout)
        if score == (False, 0):
            break
    layout = best[1]
    return {name: value for (kind, name), value in zip(layout, values) if kind == "value"}


# --------------------------------------------------------------------------- graph

def _links_by_id(workflow: dict) -> dict:
    links = {}
    for link in workflow.get("links") or []:
        if isinstance(link, dict):  # workflow schema 1.0
            lid = link["id"]
            links[lid] = (link["origin_id"], link["origin_slot"], link["target_id"],
                          link["target_slot"], link.get("type"))
        else:
            lid, origin, oslot, target, tslot = link[:5]
            links[lid] = (origin, oslot, target, tslot, link[5] if len(link) > 5 else None)
    return links


def _pack_hint(node: dict) -> str:
    props = node.get("properties") or {}
    cnr = props.get("cnr_id")
    aux = props.get("aux_id")
    ver = props.get("ver")
    if cnr == "comfy-core":
        return ("it is a ComfyUI core node (properties.cnr_id 'comfy-core'"
                + (f", saved with ComfyUI {ver}" if ver else "")
                + "): this ComfyUI is older, or the comfy_extras module defining it failed to "
                "import (look for 'IMPORT FAILED' in the log: a missing Python dependency)")
    if cnr or aux:
        pack = cnr or aux
        return (f"probably the custom node pack '{pack}' is missing"
                + (f" (version {ver})" if ver else "")
                + (f", source {aux}" if aux and aux != pack else ""))
    return ("probably a custom node pack that defines it is not installed "
            "(the workflow does not say which: no properties.cnr_id)")


def _check_subgraphs(workflow: dict, nodes: Iterable[dict]) -> None:
    defs = (workflow.get("definitions") or {}).get("subgraphs") or []
    by_id = {d.get("id"): d for d in defs if isinstance(d, dict)}
    for node in nodes:
        sg = by_id.get(node.get("type"))
        if sg is not None:
            raise NotImplementedError(
                f"node {node.get('id')} is an instance of subgraph '{sg.get('name', '?')}' "
                f"(id {sg.get('id')}): subgraphs are not supported by this converter; "
                "unpack the subgraph in the ComfyUI editor (right click > Unpack Subgraph) "
                "or export the workflow in API format")
    group_nodes = ((workflow.get("extra") or {}).get("groupNodes") or {})
    for node in nodes:
        t = str(node.get("type"))
        if group_nodes and (t.startswith("workflow>") or t.startswith("workflow/")):
            raise NotImplementedError(
                f"node {node.get('id')} is a legacy group node '{t}': group nodes are not "
                "supported; convert the group node back to nodes in the editor")


def ui_to_api(workflow: dict, object_info: dict, *, include_meta: bool = False) -> dict:
    """Convert a UI-format workflow to an API prompt graph, using ``object_info`` node definitions.

    Returns ``{"<node id>": {"class_type": str, "inputs": {...}}}`` (plus ``"_meta": {"title"}``
    when ``include_meta``). Raises ``ValueError`` for a node type unknown to ``object_info`` that
    feeds other nodes, ``NotImplementedError`` for subgraphs and group nodes.
    """
    if not is_ui_workflow(workflow):
        raise ValueError("not a UI-format workflow (no 'nodes' list)")
    nodes = workflow["nodes"]
    _check_subgraphs(workflow, nodes)
    by_id = {node["id"]: node for node in nodes}
    links = _links_by_id(workflow)

    linked_origins = {origin for origin, *_ in links.values()}

    def resolve(link_id, want_type):
        """('link', [id, slot]) | ('value', v) | None for the real source of ``link_id``."""
        seen = set()
        while link_id is not None:
            if link_id in seen:
                return None
            seen.add(link_id)
            link = links.get(link_id)
            if link is None:
                return None
            origin_id, origin_slot = link[0], link[1]
            src = by_id.get(origin_id)
            if src is None:
                return None
            src_type = src.get("type")
            if src_type == "Reroute":
                ins = src.get("inputs") or []
                link_id = ins[0].get("link") if ins else None
                continue
            if src_type == "PrimitiveNode":
                wv = src.get("widgets_values")
                if isinstance(wv, dict):
                    wv = list(wv.values())
                if not wv or src.get("mode", 0) == MODE_NEVER:
                    return None
                return ("value", copy.deepcopy(wv[0]))
            mode = src.get("mode", 0)
            if mode == MODE_NEVER:
                return None
            if mode == MODE_BYPASS:
                ins = src.get("inputs") or []
                nxt = None
                for k in itertools.chain([origin_slot], range(len(ins))):
                    if isinstance(k, int) and 0 <= k < len(ins) and ins[k].get("type") == want_type:
                        nxt = ins[k].get("link")
                        break
                link_id = nxt
                continue
            return ("link", [str(origin_id), int(origin_slot)])
        return None

    api = {}
    for node in nodes:
        nid = node["id"]
        ntype = node.get("type")
        mode = node.get("mode", 0)
        if mode in (MODE_NEVER, MODE_BYPASS):
            continue
        if ntype in VIRTUAL_NODE_TYPES or ntype in UI_ONLY_NODE_TYPES:
            continue
        info = object_info.get(ntype)
        if info is None:
            outputs_linked = any(o.get("links") for o in node.get("outputs") or []) \
                or nid in linked_origins
            if not outputs_linked:
                continue  # UI-only (a note, a label, a preview widget, ...)
            raise ValueError(
                f"node {nid} of type '{ntype}' (title {node.get('title', ntype)!r}) is not in "
                f"object_info and feeds other nodes: {_pack_hint(node)}")

        values = widget_map(node, object_info)
        inputs = {}
        order = _ordered_input_names(info)
        for name in order:
            if name in values:
                inputs[name] = values[name]
        for inp in node.get("inputs") or []:
            link_id = inp.get("link")
            if link_id is None:
                continue
            name = inp.get("name")
            wname = (inp.get("widget") or {}).get("name")
            if wname:
                name = wname
            res = resolve(link_id, inp.get("type"))
            if res is None:
                continue
            inputs[name] = res[1]
        # keep object_info order, then anything else
        ordered = {k: inputs[k] for k in order if k in inputs}
        ordered.update({k: v for k, v in inputs.items() if k not in ordered})
        entry = {"class_type": ntype, "inputs": ordered}
        if include_meta:
            entry["_meta"] = {"title": node.get("title") or info.get("display_name") or ntype}
        api[str(nid)] = entry

    # drop links to nodes that are not in the prompt (muted, UI-only), as the frontend does
    for entry in api.values():
        for name in list(entry["inputs"]):
            v = entry["inputs"][name]
            if _is_link(v) and v[0] not in api:
                del entry["inputs"][name]
    return api


def _is_link(v) -> bool:
    return (isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)
            and isinstance(v[1], int) and not isinstance(v[1], bool))


def convert_file(path: Union[str, os.PathLike], object_info: dict, **kw) -> dict:
    """``ui_to_api(load_ui_workflow(path), object_info, **kw)``."""
    return ui_to_api(load_ui_workflow(path), object_info, **kw)


# --------------------------------------------------------------------------- editing helpers

def find_nodes(api_graph: dict, class_type: str) -> list:
    """Ids of the API-graph nodes of ``class_type`` (sorted numerically when possible)."""
    ids = [k for k, v in api_graph.items() if v.get("class_type") == class_type]
    return sorted(ids, key=lambda s: (0, int(s)) if str(s).isdigit() else (1, str(s)))


def override_inputs(api_graph: dict, class_type: Optional[str], input_name: str, value: Any, *,
                    node_ids: Optional[Iterable[str]] = None, only_existing: bool = False,
                    copy_graph: bool = False) -> list:
    """Set ``inputs[input_name] = value`` on every node of ``class_type`` (or on ``node_ids``).

    ``value`` may be a callable ``f(old_value) -> new_value`` (old is None when absent), e.g.
    to map model file names. With ``only_existing`` nodes lacking the input (e.g. linked and
    removed, or never set) are skipped. Links are not overwritten unless ``value`` is itself a
    link or a callable. Returns the ids changed (or, with ``copy_graph=True``, a tuple
    ``(new_graph, ids)`` and the input graph is left untouched).
    """
    graph = copy.deepcopy(api_graph) if copy_graph else api_graph
    wanted = set(map(str, node_ids)) if node_ids is not None else None
    changed = []
    for nid, entry in graph.items():
        if wanted is not None and nid not in wanted:
            continue
        if class_type is not None and entry.get("class_type") != class_type:
            continue
        inputs = entry.setdefault("inputs", {})
        if only_existing and input_name not in inputs:
            continue
        old = inputs.get(input_name)
        if callable(value):
            new = value(old)
        else:
            if _is_link(old) and not _is_link(value):
                continue
            new = value
        inputs[input_name] = new
        changed.append(nid)
    if copy_graph:
        return graph, changed
    return changed
