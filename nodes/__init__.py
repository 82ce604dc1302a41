"""ComfyUI glue: the pack's V3 nodes. The work itself lives in emma_core."""
import logging

from typing_extensions import override

import folder_paths
from comfy_api.latest import ComfyExtension, io

from . import ella_nodes, emma_nodes, emu_nodes, example_inputs, folders, train_nodes, umm_nodes

folders.register_folders()
try:
    example_inputs.copy_example_inputs(folder_paths.get_input_directory())
except OSError as error:  # a read-only input folder must not stop the pack from loading
    logging.warning("ComfyUI-EMMA: could not copy the example reference pictures: %s", error)


class EMMAExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*ella_nodes.NODES, *emma_nodes.NODES, *umm_nodes.NODES, *train_nodes.NODES, *emu_nodes.NODES]


async def comfy_entrypoint() -> EMMAExtension:
    return EMMAExtension()
