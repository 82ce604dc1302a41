"""The ELLA loaders' errors in the real host: each names its node (as the UI shows it), the file and the fix."""
import shutil

import pytest


def test_a_t5_folder_without_config_json_says_what_it_lacks(comfy_inprocess, standins, tmp_path, add_model_folder):
    m = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS
    folder = tmp_path / "flan-t5-no-config"
    folder.mkdir()
    shutil.copyfile(comfy_inprocess.models_root / "text_encoders" / standins["text_encoders"],
                    folder / "model.safetensors")
    add_model_folder("text_encoders", tmp_path)
    with pytest.raises(ValueError) as error:
        m["EMMALoadT5"].execute(t5_name="flan-t5-no-config/", precision="auto")
    assert str(error.value).startswith(f"[Load flan-T5 Encoder (ELLA)] {folder}: this T5 folder has no "
                                       "config.json. A Hugging Face folder holds its config.json")
    with pytest.raises(ValueError, match=r"^\[Load flan-T5 Encoder \(ELLA\)\] t5_name: 'nowhere/' is not in the "
                                         r"text_encoders folders \(searched: "):
        m["EMMALoadT5"].execute(t5_name="nowhere/", precision="auto")
    with pytest.raises(ValueError, match=r"^\[Load flan-T5 Encoder \(ELLA\)\] t5_name: '\.\./' is a path, not a name"):
        m["EMMALoadT5"].execute(t5_name="../", precision="auto")  # never a folder outside the registered ones


def test_a_missing_connector_file_names_the_node_once(comfy_inprocess):
    with pytest.raises(ValueError) as error:
        comfy_inprocess.nodes.NODE_CLASS_MAPPINGS["EMMALoadELLA"].execute(ella_name="not-there.safetensors")
    assert str(error.value).startswith("[Load ELLA Connector] ") and "not-there.safetensors" in str(error.value)
    assert str(error.value).count("[") == 1
