"""ComfyUI glue: the pack's V3 nodes. The work itself lives in emma_core."""
from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from . import ella_nodes, emma_nodes, emu_nodes, folders, train_nodes, umm_nodes

folders.register_folders()


class EMMAExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*ella_nodes.NODES, *emma_nodes.NODES, *umm_nodes.NODES, *train_nodes.NODES, *emu_nodes.NODES]


async def comfy_entrypoint() -> EMMAExtension:
    return EMMAExtension()
