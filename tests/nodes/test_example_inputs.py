"""The example workflows' reference pictures reach ComfyUI's input folder when the pack loads."""
from pathlib import Path

from tests.nodes.host_recording import pack_module

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.name for p in (REPO / "workflows" / "input").iterdir() if p.suffix != ".md")


def test_loading_the_pack_copied_the_pictures_into_the_input_folder(comfy_inprocess):
    input_dir = Path(comfy_inprocess.folder_paths.get_input_directory())
    assert SHIPPED and all((input_dir / name).is_file() for name in SHIPPED)
    for name in SHIPPED:
        assert (input_dir / name).read_bytes() == (REPO / "workflows" / "input" / name).read_bytes()


def test_a_users_file_of_the_same_name_is_kept(comfy_inprocess, tmp_path):
    copy_example_inputs = pack_module("nodes.example_inputs").copy_example_inputs
    (tmp_path / SHIPPED[0]).write_bytes(b"the user's own picture")
    copied = copy_example_inputs(tmp_path / "input-does-not-exist-yet") + copy_example_inputs(tmp_path)
    assert (tmp_path / SHIPPED[0]).read_bytes() == b"the user's own picture"
    assert sorted(copied) == sorted(SHIPPED + SHIPPED[1:])  # all into the new folder, the rest into the user's
    assert copy_example_inputs(tmp_path) == []      # a second load copies nothing
    assert not list(tmp_path.rglob("*.partial"))
