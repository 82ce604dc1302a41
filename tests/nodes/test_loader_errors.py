"""Every loader of the pack, given a file that is not in its folder (a stale workflow, a typo, a path): the error
names the node, the input, the file, the folders searched and the fix, and nothing outside the folders is opened."""
import pytest

# node id, input, ComfyUI folder, other inputs
LOADERS = [
    ("EMMALoadELLA", "ella_name", "ella", {}),
    ("EMMALoadT5", "t5_name", "text_encoders", {"precision": "auto"}),
    ("EMMALoadModule", "module_name", "emma", {}),
    ("EMMALoadFeatures", "features_name", "emma_features", {}),
    ("UMMLoadProjector", "projector_name", "umm", {}),
]


def error_of(node, **inputs) -> str:
    with pytest.raises(ValueError) as error:
        node.execute(**inputs)
    return str(error.value)


def assert_names_everything(message, node, input_name, name, searched):
    assert message.startswith(f"[{node.define_schema().display_name}] {input_name}: {name!r} ")
    assert f"(searched: {', '.join(searched)})" in message
    assert "Fix: put " in message and "into one of those folders" in message and "press R in ComfyUI" in message
    assert message.count("[") == 1


@pytest.mark.parametrize("node_id, input_name, folder, other", LOADERS)
def test_an_unknown_name_says_where_it_looked_and_what_to_do(comfy_inprocess, node_id, input_name, folder, other):
    node = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS[node_id]
    searched = comfy_inprocess.folder_paths.get_folder_paths(folder)
    message = error_of(node, **{input_name: "nope.safetensors"}, **other)
    assert_names_everything(message, node, input_name, "nope.safetensors", searched)
    assert f"'nope.safetensors' is not in the {folder} folders" in message
    assert f"Fix: put nope.safetensors into one of those folders (models/{folder}/)" in message
    listed = node.define_schema().inputs[0].options
    assert (f"or pick one from the list: {listed[0]}" in message) if listed else "the list is empty" in message


@pytest.mark.parametrize("node_id, input_name, folder, other", LOADERS)
def test_a_path_is_refused_before_anything_is_opened(comfy_inprocess, add_model_folder, tmp_path, node_id,
                                                     input_name, folder, other):
    """ComfyUI looks '../x' up as 'x' inside the folder; here it is refused even where that file exists (the
    loader would have failed on the junk bytes with another error), and so is an absolute path."""
    node = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS[node_id]
    (tmp_path / "inner").mkdir()
    (tmp_path / "inner" / "x.safetensors").write_bytes(b"not a model")
    (tmp_path / "x.safetensors").write_bytes(b"not a model")
    add_model_folder(folder, tmp_path / "inner")
    searched = comfy_inprocess.folder_paths.get_folder_paths(folder)
    for name in ("../x.safetensors", str(tmp_path / "x.safetensors"), "inner/../x.safetensors"):
        message = error_of(node, **{input_name: name}, **other)
        assert_names_everything(message, node, input_name, name, searched)
        assert f"is a path, not a name in the {folder} folders (nothing outside them is opened)" in message
        assert "Fix: put x.safetensors into one of those folders" in message


def test_a_t5_folder_name_that_is_not_there_or_a_path(comfy_inprocess):
    node = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS["EMMALoadT5"]
    searched = comfy_inprocess.folder_paths.get_folder_paths("text_encoders")
    message = error_of(node, t5_name="nowhere/", precision="auto")
    assert_names_everything(message, node, "t5_name", "nowhere/", searched)
    assert "'nowhere/' is not in the text_encoders folders" in message
    assert "Fix: put nowhere into one of those folders (models/text_encoders/)" in message
    for name in ("../", "/", "./"):
        message = error_of(node, t5_name=name, precision="auto")
        assert message.startswith(f"[Load flan-T5 Encoder (ELLA)] t5_name: {name!r} is a path, not a name")


def test_a_face_pack_that_is_not_there_names_the_input(comfy_inprocess):
    """The InsightFace pack is a folder, not a file: its checks (missing, zipped, nested) keep their own words,
    and the error names the node and the input it came from."""
    import torch

    node = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS["EMMAFaceFeatures"]
    message = error_of(node, image=torch.zeros(1, 64, 64, 3), pack="nope", face_index=-1, det_size=640,
                       provider="cpu")
    assert message.startswith(f"[{node.define_schema().display_name}] pack: ")
    assert "'nope'" in message and "insightface" in message and message.count("[") == 1
