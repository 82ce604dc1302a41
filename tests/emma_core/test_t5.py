"""flan-T5 features: the real loaders on tiny encoders saved in the real layouts, CPU precision, tokenizer."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from transformers import T5Config, T5ForConditionalGeneration

from emma_core.state_dict import WeightsFileError
from emma_core.t5 import FIXED_LENGTH, T5TextEncoder, compute_dtype, load_t5_encoder, load_tokenizer

TINY = dict(vocab_size=32128, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2,
            feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)


@pytest.fixture(scope="module")
def tokenizer_dir(comfy_dir):
    return str(comfy_dir / "comfy" / "text_encoders" / "t5_tokenizer")


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    return T5ForConditionalGeneration(T5Config(**TINY)).eval()


def hf_layout(model, encoder_only=True):
    """Keys as Hugging Face writes them: tied embeddings stored once as 'shared.weight'."""
    tied = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"}
    return {k: v.contiguous().clone() for k, v in model.state_dict().items() if k not in tied
            and (not encoder_only or k.startswith("encoder.") or k == "shared.weight")}


def encoder_output(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state


@pytest.mark.parametrize("layout", ["encoder-only fp16 file", "full seq2seq file", "hf folder"])
def test_loaders_reproduce_the_reference_encoder(tmp_path, reference, layout):
    ids = torch.tensor([[3, 9, 1712, 1]])
    if layout == "encoder-only fp16 file":
        path = tmp_path / "t5.safetensors"
        save_file({k: v.half() for k, v in hf_layout(reference).items()}, path)
    elif layout == "full seq2seq file":
        path = tmp_path / "t5-full.safetensors"
        full = hf_layout(reference, encoder_only=False)
        assert any(k.startswith("decoder.") for k in full)
        save_file(full, path)
    else:
        path = tmp_path / "flan-t5-tiny"
        path.mkdir()
        save_file(hf_layout(reference), path / "model.safetensors")
        (path / "config.json").write_text(json.dumps(reference.config.to_dict()))
    model = load_t5_encoder(str(path))
    assert model.config.d_model == 32 and model.config.num_layers == 2 and model.config.num_heads == 4
    assert model.config.is_gated_act
    want = encoder_output(reference.encoder, ids)
    tol = 2e-3 if "fp16" in layout else 1e-6
    assert torch.allclose(encoder_output(model, ids), want, atol=tol), layout


def test_loader_refuses_non_t5_and_pickles(tmp_path):
    path = tmp_path / "not-t5.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(WeightsFileError, match="does not look like a T5 encoder"):
        load_t5_encoder(str(path))
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(WeightsFileError, match="pickled weights are not loaded"):
        load_t5_encoder(str(folder))


def test_a_folder_without_config_json_says_so(tmp_path, reference):
    folder = tmp_path / "flan-t5-tiny"
    folder.mkdir()
    save_file(hf_layout(reference), folder / "model.safetensors")
    with pytest.raises(WeightsFileError, match=r"flan-t5-tiny: this T5 folder has no config.json"):
        load_t5_encoder(str(folder))
    (folder / "config.json").write_text("{not json")
    with pytest.raises(WeightsFileError, match=r"config.json could not be read as JSON"):
        load_t5_encoder(str(folder))


def test_tokenizer_is_comfyuis_bundled_flan_vocabulary_and_loads_offline(tokenizer_dir):
    code = ("import sys; sys.path.insert(0, '.'); from emma_core.t5 import load_tokenizer; "
            f"print(load_tokenizer({tokenizer_dir!r})('a cat').input_ids)")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HTTPS_PROXY="http://127.0.0.1:9",
               HTTP_PROXY="http://127.0.0.1:9")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))), check=True)
    assert out.stdout.strip() == "[3, 9, 1712, 1]"


def test_cpu_precision_falls_back_to_fp32_with_a_notice():
    for requested in ("auto", "fp16", "bf16"):
        dtype, notice = compute_dtype(torch.device("cpu"), requested)
        assert dtype == torch.float32 and "fp32" in notice
    assert compute_dtype(torch.device("cuda"), "auto") == (torch.float16, None)


def test_fp16_file_encodes_on_cpu_flexible_and_fixed_lengths(tmp_path, reference, tokenizer_dir):
    path = tmp_path / "t5.safetensors"
    save_file({k: v.half() for k, v in hf_layout(reference).items()}, path)
    dtype, _ = compute_dtype(torch.device("cpu"), "fp16")
    encoder = T5TextEncoder(load_t5_encoder(str(path), dtype=dtype), load_tokenizer(tokenizer_dir))
    flexible = encoder.encode("a red cube on a blue sphere")
    assert flexible.dtype == torch.float32 and flexible.device.type == "cpu"
    assert flexible.shape == (len(encoder.tokenizer("a red cube on a blue sphere").input_ids), 32)
    fixed = encoder.encode("a red cube on a blue sphere", FIXED_LENGTH)
    assert fixed.shape == (FIXED_LENGTH, 32)
    # the attention mask keeps padding out of the real tokens' features
    assert torch.allclose(fixed[: flexible.shape[0]], flexible, atol=1e-5)
    long_text = " ".join(["word"] * 300)
    assert encoder.encode(long_text, FIXED_LENGTH).shape[0] == FIXED_LENGTH
    assert encoder.encode(long_text).shape[0] > FIXED_LENGTH


def test_repeated_prompt_is_served_from_the_cache(tmp_path, reference, tokenizer_dir):
    path = tmp_path / "t5.safetensors"
    save_file(hf_layout(reference), path)
    encoder = T5TextEncoder(load_t5_encoder(str(path)), load_tokenizer(tokenizer_dir))
    calls = []
    encoder.model.register_forward_hook(lambda *a: calls.append(1))
    first = encoder.encode("a cat")
    second = encoder.encode("a cat")
    assert len(calls) == 1 and second is first and encoder.cached("a cat")
    encoder.encode("a dog")
    assert len(calls) == 2
