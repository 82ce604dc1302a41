"""Gradient checkpointing per layer of the frozen models a training step differentiates through.

The EMMA module's gradient flows back through the frozen SD1.5 UNet (every layer after the first cross-
attention) and through the ELLA connector's blocks after the first AGPR branch. Without checkpointing,
autograd keeps every intermediate of those layers until backward. A checkpointed layer keeps only its inputs
and recomputes its insides during backward, one layer at a time, so the peak is the layer inputs plus one
layer's intermediates (not one big segment around the whole forward, which keeps the same peak: the backward
rebuilds all of it at once).

    with checkpointed(unet=base.diffusion_model, ella=frozen_ella):     # layers=DEFAULT_LAYERS
        loss = task(batch, generator)
    loss.backward()           # the recomputation calls the original forwards: the wrap may be gone already

Wrapping is per instance: an instance attribute shadows the class's `forward` (ELLA blocks: `attention` and
`feed_forward`, which its connector calls directly). Nothing global is patched, nothing is wrapped twice, and
leaving the context puts every wrapped attribute back exactly as it was, also after an exception, so the
caller's model (ComfyUI's UNet) is unchanged for sampling. Duck-typed, no ComfyUI import: a UNet is a module
with input_blocks / middle_block / output_blocks whose blocks are sequences of layers (ComfyUI's
TimestepEmbedSequential: forward_timestep_embed calls each layer itself, so its layers, not the block, are
wrapped); layers are told apart by class name (ResBlock, SpatialTransformer and their subclasses).

Layer kinds (`layers`, a name of LAYER_SETS or a set of kinds):
    resblock     the UNet's ResBlocks (GroupNorm, SiLU, 3x3 convs: the bulk of the activations)
    attention    the UNet's SpatialTransformers (self- and cross-attention, GEGLU feed-forward)
    ella         the connector's perceiver blocks (attention and feed-forward); small at 64 latents
Up/Downsample, conv_in and the output head are left alone (one conv each: checkpointing one saves nothing).
Which set pays is measured by `python scripts/bench_train.py --memory` (docs/training.md, "Memory").

SavedTensors counts what autograd keeps for backward (the measure the benchmark and the tests use).
"""
from __future__ import annotations

import contextlib
import functools
import logging
from typing import Iterable, Iterator, Optional, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

log = logging.getLogger(__name__)

KINDS = ("resblock", "attention", "ella")
LAYER_SETS = {
    "all": frozenset(KINDS),
    "unet": frozenset({"resblock", "attention"}),
    "resblocks": frozenset({"resblock"}),
    "attention": frozenset({"attention"}),
    "none": frozenset(),
}
DEFAULT_LAYERS = "attention"   # measured: docs/training.md, "Memory"

_RESBLOCK_CLASSES = {"ResBlock"}
_ATTENTION_CLASSES = {"SpatialTransformer"}
_MARK = "_emma_checkpointed"

Layers = Union[str, Iterable[str]]


def layer_kinds(layers: Layers) -> frozenset:
    """A LAYER_SETS name or a set of KINDS -> the set of kinds."""
    if isinstance(layers, str):
        if layers not in LAYER_SETS:
            raise ValueError(f"checkpointed layers are one of {sorted(LAYER_SETS)} or a set of {KINDS}, "
                             f"not {layers!r}")
        return LAYER_SETS[layers]
    kinds = frozenset(layers)
    unknown = sorted(kinds - set(KINDS))
    if unknown:
        raise ValueError(f"unknown checkpointed layer kinds {unknown}; known: {KINDS}")
    return kinds


def find_unet(model) -> Optional[nn.Module]:
    """The UNet module inside `model`: the module itself (input_blocks / output_blocks), or ComfyUI's BaseModel
    (.diffusion_model) or ModelPatcher (.model.diffusion_model) holding one; None when there is none."""
    for candidate in (model, getattr(model, "diffusion_model", None),
                      getattr(getattr(model, "model", None), "diffusion_model", None)):
        if isinstance(candidate, nn.Module) and hasattr(candidate, "input_blocks") \
                and hasattr(candidate, "output_blocks"):
            return candidate
    return None


def _class_names(module: nn.Module) -> set:
    return {klass.__name__ for klass in type(module).__mro__}


def unet_layers(unet: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(kind, layer) of every ResBlock and SpatialTransformer in the input, middle and output blocks."""
    blocks = [*unet.input_blocks, getattr(unet, "middle_block", None), *unet.output_blocks]
    for block in blocks:
        if block is None:
            continue
        for layer in (block if isinstance(block, nn.Sequential) else [block]):
            names = _class_names(layer)
            if names & _RESBLOCK_CLASSES:
                yield "resblock", layer
            elif names & _ATTENTION_CLASSES:
                yield "attention", layer


def ella_blocks(ella: nn.Module) -> list[nn.Module]:
    """The perceiver blocks of an ELLA connector (emma_core.ella.ELLA or its PerceiverResampler)."""
    resampler = getattr(ella, "connector", ella)
    return list(getattr(resampler, "perceiver_blocks", []))


def _tensors(values) -> Iterator[torch.Tensor]:
    return (v for v in values if isinstance(v, torch.Tensor))


def _checkpointed(owner: nn.Module, name: str):
    """owner.<name> (a bound method) as a function that runs it under torch.utils.checkpoint (non-reentrant)
    when autograd would record it, and plainly otherwise (no_grad, or nothing needing a gradient)."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def call(*args, **kwargs):
        records = torch.is_grad_enabled() and (
            any(t.requires_grad for t in _tensors((*args, *kwargs.values())))
            or any(p.requires_grad for p in owner.parameters()))
        if not records:
            return original(*args, **kwargs)
        # Keyword arguments go in as positional ones: checkpoint keeps its positional tensors as saved tensors
        # (what autograd's saved-tensor hooks see), keyword ones only in a closure.
        keys = list(kwargs)
        flat = (*args, *kwargs.values())
        # Dict arguments (ComfyUI's transformer_options) are shared and change after the call (the next
        # block's index, ...): the recomputation gets them as they were when the layer first ran.
        frozen = {i: dict(v) for i, v in enumerate(flat) if isinstance(v, dict)}
        calls = [0]

        def run(*values):
            calls[0] += 1
            if calls[0] > 1:
                values = tuple(dict(frozen[i]) if i in frozen else v for i, v in enumerate(values))
            positional, named = values[:len(args)], values[len(args):]
            return original(*positional, **dict(zip(keys, named)))

        return checkpoint(run, *flat, use_reentrant=False)

    setattr(call, _MARK, True)
    return call


class Checkpointing:
    """The wrapped attributes of one enable(); disable() puts them back (last wrapped first)."""

    def __init__(self):
        self._saved: list[tuple[nn.Module, str, bool, object]] = []

    def wrap(self, owner: nn.Module, name: str) -> bool:
        if getattr(getattr(owner, name), _MARK, False):  # already wrapped (a nested enable)
            return False
        own = name in owner.__dict__
        self._saved.append((owner, name, own, owner.__dict__.get(name)))
        wrapped = _checkpointed(owner, name)
        owner.__dict__[name] = wrapped  # an instance attribute shadows the class's method
        return True

    def __len__(self) -> int:
        return len(self._saved)

    def disable(self) -> None:
        while self._saved:
            owner, name, own, previous = self._saved.pop()
            if own:
                owner.__dict__[name] = previous
            else:
                owner.__dict__.pop(name, None)


def enable(unet: Optional[nn.Module] = None, ella: Optional[nn.Module] = None,
           layers: Layers = DEFAULT_LAYERS) -> Checkpointing:
    """Wrap the chosen layers of `unet` (a UNet module or what find_unet finds one in) and `ella`. Returns the
    handle whose disable() restores them; prefer the `checkpointed` context manager."""
    kinds = layer_kinds(layers)
    state = Checkpointing()
    try:
        if unet is not None and kinds & {"resblock", "attention"}:
            module = find_unet(unet)
            if module is None:
                log.warning("gradient checkpointing: %s has no UNet blocks to checkpoint", type(unet).__name__)
            else:
                for kind, layer in unet_layers(module):
                    if kind in kinds:
                        state.wrap(layer, "forward")
        if ella is not None and "ella" in kinds:
            for block in ella_blocks(ella):
                state.wrap(block, "attention")
                state.wrap(block, "feed_forward")
    except BaseException:
        state.disable()
        raise
    return state


@contextlib.contextmanager
def checkpointed(unet: Optional[nn.Module] = None, ella: Optional[nn.Module] = None,
                 layers: Layers = DEFAULT_LAYERS, enabled: bool = True):
    """Within the block, the chosen layers run checkpointed; on leaving (also by an exception) they are
    exactly as before. Yields the Checkpointing handle (len() = attributes wrapped)."""
    state = enable(unet, ella, layers) if enabled else Checkpointing()
    try:
        yield state
    finally:
        state.disable()


def _storage_key(t: torch.Tensor) -> tuple:
    try:
        return (t.device.type, t.device.index, t.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # a tensor without a plain storage (a wrapper subclass)
        return ("object", id(t))


def _storage_bytes(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError):
        return t.numel() * t.element_size()


class SavedTensors:
    """Counts what autograd keeps for backward while active (torch.autograd.graph.saved_tensors_hooks):
    every storage once, none of `exclude` (parameters, buffers). A checkpointed layer's kept inputs are
    counted (torch's checkpoint saves them through the same hooks); its insides are not kept, so not counted.

        with SavedTensors(exclude=[*unet.parameters(), *unet.buffers()]) as saved:
            loss = step()
        saved.bytes, saved.fp16_bytes        # as stored; floating tensors counted at 2 bytes an element
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        self._excluded = {_storage_key(t) for t in exclude}
        self._seen: dict[tuple, tuple[int, int]] = {}  # key -> (bytes, fp16-equivalent bytes)
        self._hooks = None

    def _pack(self, t: torch.Tensor):
        if t.device.type != "meta":
            key = _storage_key(t)
            if key not in self._excluded and key not in self._seen:
                nbytes = _storage_bytes(t)
                half = nbytes // t.element_size() * 2 if t.is_floating_point() else nbytes
                self._seen[key] = (nbytes, half)
        return t

    def __enter__(self) -> "SavedTensors":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self._hooks = None

    @property
    def count(self) -> int:
        return len(self._seen)

    @property
    def bytes(self) -> int:
        return sum(b for b, _ in self._seen.values())

    @property
    def fp16_bytes(self) -> int:
        return sum(h for _, h in self._seen.values())
