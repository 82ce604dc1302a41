"""Every node the pack registers has a help page for the frontend's node-docs side panel.

ComfyUI serves a pack's WEB_DIRECTORY at /extensions/<pack folder>/; the frontend (1.2x and later) shows
/extensions/<pack folder>/docs/<node id>/<locale>.md, else .../docs/<node id>.md, in place of the generic
description when a node's help is opened. The pages are web/docs/<node id>.md.
"""
import re
import urllib.request
from pathlib import Path

from devtools.host import PACK_LINK_NAME

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "web" / "docs"
SECTIONS = ("## Inputs", "## Outputs", "## Typical wiring", "## Usual errors")


def _pack_nodes(server) -> dict:
    return {name: node for name, node in server.object_info().items()
            if node.get("python_module") == f"custom_nodes.{PACK_LINK_NAME}"}


def test_every_registered_node_has_a_help_page_and_no_page_is_stale(comfy_server):
    nodes = _pack_nodes(comfy_server)
    assert nodes, "the pack registered no node"
    assert sorted(p.stem for p in DOCS.glob("*.md")) == sorted(nodes)


def test_help_pages_are_served_where_the_frontend_looks_and_cover_every_input_and_output(comfy_server):
    for name, node in sorted(_pack_nodes(comfy_server).items()):
        url = f"{comfy_server.url}/extensions/{PACK_LINK_NAME}/docs/{name}.md"
        with urllib.request.urlopen(url, timeout=30) as answer:
            assert answer.status == 200, url
            text = answer.read().decode()
        assert text == (DOCS / f"{name}.md").read_text(), f"{url} serves another file"
        assert text.startswith(f"# {node['display_name']}\n"), f"{name}: the title is not the node's display name"
        positions = [text.find(section) for section in SECTIONS]
        assert -1 not in positions and positions == sorted(positions), f"{name}: sections {SECTIONS} in order"
        inputs = [n for group in ("required", "optional") for n in node["input"].get(group, {})]
        outputs = list(node["output_name"])
        inputs_part = text[positions[0]:positions[1]]
        outputs_part = text[positions[1]:positions[2]]
        missing = [n for n in inputs if f"`{n}`" not in inputs_part]
        missing += [f"output {n}" for n in outputs if f"`{n}`" not in outputs_part]
        assert not missing, f"web/docs/{name}.md does not describe: {missing}"
        # What the node is for comes first (a paragraph before the inputs), and a wiring names other nodes.
        assert len(text[:positions[0]].split()) > 20, name
        assert re.search(r"->", text[positions[2]:positions[3]]), f"{name}: the typical wiring shows no link"
