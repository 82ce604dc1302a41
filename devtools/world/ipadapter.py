"""The peer (issue 20, point 4): an IP-Adapter-style object adapter in the world, measured beside EMMA's object
module. A developer baseline, not part of the shipped pack.

IP-Adapter (Ye et al. 2023), decoupled cross-attention: in every UNet cross-attention (attn2) the query also
attends to the reference's image tokens through the adapter's own key / value projections, and the two
attentions are added before the layer's output projection; the UNet stays frozen:

    attn2(x) = to_out( Attention(Q, K_text, V_text) + scale * Attention(Q, to_k_ip(c_img), to_v_ip(c_img)) )

- Image projection, "tokens" (the default): the features the world's object module reads (world-cells-v1,
  "clip_tokens": hidden [65, 6] + embeds [6] at 64 px) -> one token per hidden row plus one for the embedding
  (66), a linear map each to the UNet's context width (an own emma_core.adapters.CLIPTokensAdapter) and a
  LayerNorm: the same reference tokens EMMA's object adapter reads, so the two differ in how the tokens enter
  the UNet, not in what they see. "global": the paper's plain projection, embeds -> linear -> `num_tokens` (4)
  tokens -> LayerNorm.
- to_k_ip / to_v_ip per attn2 layer, initialised from that layer's to_k / to_v (as IP-Adapter does).
- scale: the default inference weight (1.0); training runs at 1 (0 for a dropped reference), as the paper.

How it enters ComfyUI's UNet (patch_model, the one implementation sampling and training share): an attn2
*replace* patch per transformer block on a model.clone(), keyed (block, number, index in the
SpatialTransformer). BasicTransformerBlock gives a replace patch q = to_q(norm2(x)), k = to_k(context),
v = to_v(context) and the extra options (n_heads, attn_precision, cond_or_uncond) and applies to_out to what
it returns; the patch returns ComfyUI's own optimized_attention(q, k, v), which is what the unpatched layer
computes, bit for bit, plus the weighted image attention. attn2_patch can only rewrite one attention's inputs,
and attn2_output_patch sees the output but not q: neither can add a second attention with its own keys.

Rows: ComfyUI runs conditionings in chunks of the latent batch's size b, listed in cond_or_uncond (0: the
positive, 1: the negative). The reference tokens are 1 row (every picture) or b rows (one per picture, in the
latent batch's order), used for every positive chunk. The negative, and any chunk other than 0, gets NO image
attention: its rows are the unpatched UNet's, bit for bit. Not IP-Adapter's zero image (the tokens of a zeroed
embedding), because the world's EMMA rows use the empty prompt without the module as their negative and both
trainers drop a reference by removing it (EMMA multiplies its branch by 0 for the row; here the row's weight
is 0): for both, what training shows for a dropped reference is exactly the negative at sampling, with no
learned "null image" on one side only.
"""
from __future__ import annotations

import json
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from emma_core.adapters import CLIPTokensAdapter, Features
from emma_core.atomic import save_safetensors_atomic
from emma_core.state_dict import WeightsFileError, read_safetensors
from emma_core.train.checkpointing import find_unet

FORMAT = "emma-world-ipadapter"
VERSION = 1
FEATURE_KIND = "clip_tokens"
PROJECTIONS = ("tokens", "global")

Key = tuple  # (block name, block number, index in its SpatialTransformer): ComfyUI's attn2 replace key


def layer_name(key: Key) -> str:
    return "_".join(str(part) for part in key)


def attn2_layers(model) -> list[tuple[Key, nn.Module]]:
    """(key, attn2) of every cross-attention of the UNet in `model` (the UNet, ComfyUI's BaseModel or its
    ModelPatcher), in forward order; the keys are the ones BasicTransformerBlock looks replace patches up by."""
    unet = find_unet(model)
    if unet is None:
        raise ValueError(f"no UNet (input_blocks / output_blocks) in {type(model).__name__}")
    blocks = [("input", i, b) for i, b in enumerate(unet.input_blocks)]
    if getattr(unet, "middle_block", None) is not None:
        blocks.append(("middle", 0, unet.middle_block))  # openaimodel.UNetModel.forward: ("middle", 0)
    blocks += [("output", i, b) for i, b in enumerate(unet.output_blocks)]
    found = []
    for name, number, block in blocks:
        transformers = [m for m in block if hasattr(m, "transformer_blocks")]
        if len(transformers) > 1:
            raise ValueError(f"{name} block {number} holds {len(transformers)} spatial transformers; ComfyUI's "
                             "replace keys cannot tell them apart")
        for transformer in transformers:
            for index, layer in enumerate(transformer.transformer_blocks):
                if getattr(layer, "attn2", None) is not None:
                    found.append(((name, number, index), layer.attn2))
    return found


class CrossAttentionIP(nn.Module):
    """One cross-attention layer's image key / value projections."""

    def __init__(self, context_dim: int, inner_dim: int):
        super().__init__()
        self.to_k_ip = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v_ip = nn.Linear(context_dim, inner_dim, bias=False)


class ImageAdapter(nn.Module):
    """Reference features -> image tokens [B, N, context_dim]; `layers[name]` holds the ip projections of the
    attn2 layer `name` (layer_name of its key). Build one for a UNet with ImageAdapter.for_unet."""

    feature_kind = FEATURE_KIND

    def __init__(self, layers: Sequence[tuple[str, int, int]], feature_dims: dict, context_dim: int = 768,
                 projection: str = "tokens", num_tokens: int = 4, scale: float = 1.0, feature_encoder: str = "",
                 training_steps: int = 0):
        super().__init__()
        if projection not in PROJECTIONS:
            raise ValueError(f"projection is one of {PROJECTIONS}, not {projection!r}")
        self.feature_dims = {k: tuple(int(d) for d in v) for k, v in feature_dims.items()}
        if set(self.feature_dims) != {"hidden", "embeds"}:
            raise ValueError(f"'clip_tokens' feature dims need 'hidden' and 'embeds'; got {feature_dims}")
        self.context_dim, self.projection, self.scale = int(context_dim), projection, float(scale)
        self.layer_specs = [(str(n), int(i), int(o)) for n, i, o in layers]
        if any(i != self.context_dim for _, i, _ in self.layer_specs):
            raise ValueError(f"every attn2 layer must take {self.context_dim}-d context; got {self.layer_specs}")
        if projection == "tokens":
            self.proj = CLIPTokensAdapter(self.feature_dims, self.context_dim)
            self.num_tokens = self.proj.num_tokens
        else:
            self.num_tokens = int(num_tokens)
            self.proj = nn.Linear(self.feature_dims["embeds"][0], self.num_tokens * self.context_dim)
        self.norm = nn.LayerNorm(self.context_dim)
        self.layers = nn.ModuleDict({n: CrossAttentionIP(i, o) for n, i, o in self.layer_specs})
        self.feature_encoder, self.training_steps = feature_encoder, int(training_steps)

    @classmethod
    def for_unet(cls, model, feature_dims: dict, **kwargs) -> "ImageAdapter":
        """An adapter with ip projections for every attn2 of `model`'s UNet, initialised from its to_k / to_v."""
        found = attn2_layers(model)
        if not found:
            raise ValueError("the UNet has no cross-attention layers")
        specs = [(layer_name(key), a.to_k.in_features, a.to_k.out_features) for key, a in found]
        adapter = cls(specs, feature_dims, context_dim=specs[0][1], **kwargs)
        with torch.no_grad():
            for key, attn in found:
                layer = adapter.layers[layer_name(key)]
                layer.to_k_ip.weight.copy_(attn.to_k.weight.detach())
                layer.to_v_ip.weight.copy_(attn.to_v.weight.detach())
        return adapter

    def tokens(self, features: Features) -> torch.Tensor:
        """The reference's image tokens [B, num_tokens, context_dim]."""
        if self.projection == "tokens":
            return self.norm(self.proj(features))  # the adapter checks kind and dims
        embeds = features.tensors.get("embeds") if isinstance(features, Features) else None
        if embeds is None or features.kind != FEATURE_KIND or tuple(embeds.shape[1:]) != self.feature_dims["embeds"]:
            found = features.describe() if isinstance(features, Features) else type(features).__name__
            raise ValueError(f"this adapter takes 'clip_tokens' features with embeds "
                             f"{list(self.feature_dims['embeds'])}; got {found}")
        out = self.proj(embeds.to(self.proj.weight))
        return self.norm(out.view(out.shape[0], self.num_tokens, self.context_dim))

    def check_unet(self, model) -> list[tuple[Key, nn.Module]]:
        """The UNet's attn2 layers; ValueError unless they are exactly the ones this adapter was made for."""
        found = attn2_layers(model)
        theirs = [(layer_name(k), a.to_k.in_features, a.to_k.out_features) for k, a in found]
        if theirs != self.layer_specs:
            raise ValueError(f"this adapter was made for a UNet with attn2 layers {self.layer_specs}; this UNet "
                             f"has {theirs}")
        return found

    def metadata(self) -> dict[str, str]:
        dims = {k: list(v) for k, v in self.feature_dims.items()}
        return {"format": FORMAT, "format_version": str(VERSION), "projection": self.projection,
                "feature_kind": FEATURE_KIND, "feature_dims": json.dumps(dims),
                "num_tokens": str(self.num_tokens), "context_dim": str(self.context_dim),
                "layers": json.dumps(self.layer_specs), "scale": repr(self.scale),
                "feature_encoder": self.feature_encoder, "training_steps": str(self.training_steps)}


class _IPAttention:
    """The attn2 replace patch of one layer (see the module docstring for the rows)."""

    def __init__(self, layer: CrossAttentionIP, tokens: torch.Tensor, weight):
        self.layer, self.tokens, self.weight = layer, tokens, weight

    def __deepcopy__(self, memo):
        # ModelPatcher.clone deep-copies model_options: the patch holds the adapter's live weights and tokens
        # (which carry the graph in training), so clones share it.
        return self

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules import attention

        heads, precision = extra_options["n_heads"], extra_options.get("attn_precision")
        out = attention.optimized_attention(q, k, v, heads, attn_precision=precision, transformer_options=extra_options)
        chunks = list(extra_options.get("cond_or_uncond") or [0])
        if 0 not in chunks or (not torch.is_tensor(self.weight) and self.weight == 0.0):
            return out
        b, rest = divmod(q.shape[0], len(chunks))
        if rest:
            raise ValueError(f"a batch of {q.shape[0]} rows does not split into {len(chunks)} chunks")
        tokens = self.tokens.to(q)
        rows = tokens.shape[0]
        if rows not in (1, b):
            raise ValueError(f"{rows} reference rows for a latent batch of {b}: give one, or one per picture")
        k_ip = F.linear(tokens, self.layer.to_k_ip.weight.to(q)).expand(b, -1, -1).contiguous()
        v_ip = F.linear(tokens, self.layer.to_v_ip.weight.to(q)).expand(b, -1, -1).contiguous()
        weight = self.weight.to(q).view(-1, 1, 1) if torch.is_tensor(self.weight) else self.weight
        parts = []
        for c, kind in enumerate(chunks):
            part = out[c * b:(c + 1) * b]
            if kind == 0:
                image = attention.optimized_attention(q[c * b:(c + 1) * b], k_ip, v_ip, heads, attn_precision=precision,
                                                      transformer_options=extra_options)
                part = part + weight * image
            parts.append(part)
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def patch_model(model_patcher, adapter: ImageAdapter, reference_tokens: Union[Features, torch.Tensor],
                scale: Union[float, torch.Tensor, None] = None):
    """A clone of `model_patcher` (ComfyUI's ModelPatcher; the given one is untouched) whose every attn2 also
    attends to the reference. reference_tokens: Features (through adapter.tokens) or tokens [1 or b, N, C].
    scale: float (default adapter.scale), or a tensor with one weight per reference row (training: 0 drops
    the row's reference). Rows and chunks as the module docstring says."""
    tokens = adapter.tokens(reference_tokens) if isinstance(reference_tokens, Features) else reference_tokens
    if not torch.is_tensor(tokens) or tokens.ndim != 3 or tokens.shape[-1] != adapter.context_dim:
        shape = list(tokens.shape) if torch.is_tensor(tokens) else type(tokens).__name__
        raise ValueError(f"reference tokens must be [rows, tokens, {adapter.context_dim}]; got {shape}")
    weight = adapter.scale if scale is None else scale
    if torch.is_tensor(weight):
        weight = weight.reshape(-1)
        if weight.shape[0] not in (1, tokens.shape[0]):
            raise ValueError(f"{weight.shape[0]} weights for {tokens.shape[0]} reference rows")
    else:
        weight = float(weight)
    found = adapter.check_unet(model_patcher)
    patched = model_patcher.clone()
    taken = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for key, _ in found:
        if key in taken or key[:2] in taken:
            raise ValueError(f"the model already has an attn2 replace patch at {key} (another adapter?); ComfyUI "
                             "holds one per layer")
        patched.set_model_attn2_replace(_IPAttention(adapter.layers[layer_name(key)], tokens, weight), *key)
    return patched


# ---- file ------------------------------------------------------------------------------------------------
def save_adapter(adapter: ImageAdapter, path, dtype: Optional[torch.dtype] = None) -> None:
    """.safetensors, atomically; the configuration in the metadata."""
    tensors = {k: (v.to(dtype) if dtype is not None else v) for k, v in adapter.state_dict().items()}
    save_safetensors_atomic(path, tensors, adapter.metadata())


def load_adapter(path, dtype: torch.dtype = torch.float32) -> ImageAdapter:
    """The adapter of a file save_adapter wrote (safetensors only), frozen, in eval mode."""
    tensors, meta = read_safetensors(str(path))
    if meta.get("format") != FORMAT:
        raise WeightsFileError(f"{path} is not a world IP-Adapter file (format {meta.get('format')!r})")
    if meta.get("format_version") != str(VERSION):
        raise WeightsFileError(f"{path} has IP-Adapter format version {meta.get('format_version')!r}; this "
                               f"reads {VERSION}")
    try:
        adapter = ImageAdapter([tuple(s) for s in json.loads(meta["layers"])], json.loads(meta["feature_dims"]),
                               context_dim=int(meta["context_dim"]), projection=meta["projection"],
                               num_tokens=int(meta["num_tokens"]), scale=float(meta["scale"]),
                               feature_encoder=meta.get("feature_encoder", ""),
                               training_steps=int(meta.get("training_steps", "0")))
        adapter.load_state_dict({k: v.to(dtype) for k, v in tensors.items()}, strict=True)
    except (KeyError, ValueError, RuntimeError) as error:
        raise WeightsFileError(f"{path}: invalid world IP-Adapter file: {error}") from error
    return adapter.to(dtype).eval().requires_grad_(False)


# ---- a node for the evaluation's graphs (registered by the caller, never by the pack) ------------------------
class ApplyWorldIPAdapter:
    """MODEL + adapter file + EMMA features (Load EMMA Features: one row, or one per picture) -> patched MODEL.
    Register in-process: nodes.NODE_CLASS_MAPPINGS.update(devtools.world.ipadapter.NODE_CLASS_MAPPINGS)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "adapter_path": ("STRING", {"default": ""}),
                             "features": ("EMMA_FEATURES",),
                             "scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.05})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"
    CATEGORY = "EMMA/devtools"

    def apply(self, model, adapter_path, features, scale):
        # ComfyUI imports the pack under its folder's name, so its Features is another class than this file's
        features = Features(features.kind, dict(features.tensors), getattr(features, "encoder", ""))
        return (patch_model(model, load_adapter(adapter_path), features, scale),)


NODE_CLASS_MAPPINGS = {"EMMAWorldIPAdapter": ApplyWorldIPAdapter}
