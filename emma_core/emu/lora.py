"""LoRA for an SD1.5 UNet, trained through forward hooks and saved in the kohya layout ComfyUI applies.

    loras = inject_lora(unet, "transformer", rank=16, alpha=16)   # adds hooks; the UNet's tree is unchanged
    ... train loras.parameters() ...
    sd = loras.to_kohya(torch.float16)     {"lora_unet_<path>.lora_down.weight", ".lora_up.weight", ".alpha"}
    loras.detach()                         removes the hooks: the UNet is exactly what it was

For a module at path P of ComfyUI's `diffusion_model` (e.g. "input_blocks.1.1.transformer_blocks.0.attn1.to_q")
the key is "lora_unet_" + P with "." -> "_". ComfyUI 0.3.75 maps exactly that name to the weight
"diffusion_model.P.weight" (comfy/lora.py model_lora_keys_unet: `key_map["lora_unet_{}".format(key_lora)] = k`)
and applies  W += strength * (alpha / rank) * (up.flatten(1) @ down.flatten(1)).reshape(W.shape)
(comfy/weight_adapter/lora.py LoRAAdapter.calculate_weight). A conv LoRA is therefore a down conv with the base
layer's kernel, stride and padding followed by a 1x1 up conv (kohya's LoCon layout): the composition of the two
is that same weight delta, so what the hooks train is exactly what LoraLoader applies.

Full fine-tuning uses full_diff() instead: "lora_unet_<path>.diff" / ".diff_b" (ComfyUI's "diff" patch:
W += strength * diff), which the same stock LoraLoader applies.

Hooks, not module replacement: ComfyUI's ModelPatcher addresses weights by their paths, and the UNet may be
shared with other nodes, so nothing in its module tree is replaced and detach() restores it exactly.
"""
from __future__ import annotations

import math
import re
from typing import Callable, Iterable, Optional, Union

import torch
from torch import nn

PREFIX = "lora_unet_"

# Module name patterns of the presets (names are paths in ComfyUI's / the original LDM UNet).
TARGETS = {
    # the attention projections of every transformer block
    "attention": r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$",
    # kohya's default for SD1.5 LoRA: every Linear / 1x1 conv of the spatial transformers
    "transformer": r"(\.transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2))"
                   r"|\.proj_in|\.proj_out)$",
    # LoCon-style: the transformers plus the ResBlocks' convs, skips and time projections, down/up samplers
    "all": r"(\.transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2))"
           r"|\.proj_in|\.proj_out|\.in_layers\.2|\.out_layers\.3|\.skip_connection|\.emb_layers\.1|\.op"
           r"|\.conv)$",
}


def kohya_key(module_path: str) -> str:
    return PREFIX + module_path.replace(".", "_")


class LoRALayer(nn.Module):
    """down (rank outputs) then up, scaled by alpha / rank; up starts at zero so the delta starts at zero."""

    def __init__(self, base: nn.Module, rank: int, alpha: float):
        super().__init__()
        weight = base.weight
        if isinstance(base, nn.Linear):
            in_f, out_f = weight.shape[1], weight.shape[0]
            rank = min(rank, in_f, out_f)
            self.down = nn.Linear(in_f, rank, bias=False)
            self.up = nn.Linear(rank, out_f, bias=False)
        elif isinstance(base, nn.Conv2d):
            if base.groups != 1:
                raise ValueError("grouped convolutions are not supported")
            out_c, in_c = weight.shape[0], weight.shape[1]
            rank = min(rank, out_c, in_c * base.kernel_size[0] * base.kernel_size[1])
            self.down = nn.Conv2d(in_c, rank, base.kernel_size, base.stride, base.padding, base.dilation, bias=False)
            self.up = nn.Conv2d(rank, out_c, 1, bias=False)
        else:
            raise TypeError(f"LoRA wraps nn.Linear or nn.Conv2d, not {type(base).__name__}")
        if isinstance(base, nn.Conv2d) and base.padding_mode != "zeros":
            raise ValueError("only zero-padded convolutions are supported")
        self.rank, self.alpha = int(rank), float(alpha)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)
        self.multiplier = 1.0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.down.weight.dtype
        return self.up(self.down(x.to(dtype))) * (self.scale * self.multiplier)

    def delta_weight(self) -> torch.Tensor:
        """The weight delta this layer adds to its base (what ComfyUI computes from the saved file)."""
        up, down = self.up.weight.flatten(1), self.down.weight.flatten(1)
        shape = (up.shape[0], *self.down.weight.shape[1:])
        return (self.scale * (up @ down)).reshape(shape)


Selector = Union[str, Iterable[str], Callable[[str, nn.Module], bool]]


def select_modules(root: nn.Module, targets: Selector) -> list[str]:
    """Names of the nn.Linear / nn.Conv2d modules under `root` that `targets` selects: a preset name
    (TARGETS), a regular expression searched in the module path, an explicit list of paths, or a predicate."""
    if isinstance(targets, str):
        pattern = re.compile(TARGETS.get(targets, targets))
        pick = lambda name, m: bool(pattern.search("." + name))  # noqa: E731
    elif callable(targets):
        pick = targets
    else:
        wanted = set(targets)
        modules = dict(root.named_modules())
        missing = sorted(wanted - set(modules))
        if missing:
            raise KeyError(f"no modules named {missing[:5]}")
        pick = lambda name, m: name in wanted  # noqa: E731
    names = [n for n, m in root.named_modules()
             if n and isinstance(m, (nn.Linear, nn.Conv2d)) and getattr(m, "groups", 1) == 1 and pick(n, m)]
    if not names:
        raise ValueError(f"the targets {targets!r} select no Linear / Conv2d module")
    return names


class LoRASet(nn.Module):
    """The LoRA layers of one UNet (the trainable module: its state_dict holds only LoRA weights)."""

    def __init__(self, root: nn.Module, names: list[str], rank: int, alpha: float):
        super().__init__()
        modules = dict(root.named_modules())
        self.names = list(names)
        self.layers = nn.ModuleDict({kohya_key(n)[len(PREFIX):]: LoRALayer(modules[n], rank, alpha) for n in names})
        self.__dict__["root"] = root        # outside the module tree: never trained, saved or moved
        self._handles: list = []

    def attach(self) -> "LoRASet":
        if self._handles:
            return self
        modules = dict(self.root.named_modules())
        for name in self.names:
            layer = self.layers[kohya_key(name)[len(PREFIX):]]

            def hook(module, args, output, layer=layer):
                return output + layer(args[0]).to(output.dtype)

            self._handles.append(modules[name].register_forward_hook(hook))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def set_multiplier(self, value: float) -> None:
        for layer in self.layers.values():
            layer.multiplier = float(value)

    def to_kohya(self, dtype: Optional[torch.dtype] = None) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.names:
            layer = self.layers[kohya_key(name)[len(PREFIX):]]
            key = kohya_key(name)
            down, up = layer.down.weight.detach().cpu(), layer.up.weight.detach().cpu()
            out[key + ".lora_down.weight"] = (down if dtype is None else down.to(dtype)).contiguous().clone()
            out[key + ".lora_up.weight"] = (up if dtype is None else up.to(dtype)).contiguous().clone()
            out[key + ".alpha"] = torch.tensor(layer.alpha, dtype=torch.float32 if dtype is None else dtype)
        return out

    def load_kohya(self, sd: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name in self.names:
                layer = self.layers[kohya_key(name)[len(PREFIX):]]
                key = kohya_key(name)
                layer.down.weight.copy_(sd[key + ".lora_down.weight"].to(layer.down.weight))
                layer.up.weight.copy_(sd[key + ".lora_up.weight"].to(layer.up.weight))
                if key + ".alpha" in sd:
                    layer.alpha = float(sd[key + ".alpha"])


def inject_lora(root: nn.Module, targets: Selector = "transformer", rank: int = 16, alpha: Optional[float] = None,
                attach: bool = True) -> LoRASet:
    """LoRA layers on the selected modules of `root` (ComfyUI's diffusion_model), on their device, in float32.
    alpha defaults to rank (scale 1)."""
    names = select_modules(root, targets)
    loras = LoRASet(root, names, rank, float(rank if alpha is None else alpha))
    ref = dict(root.named_modules())[names[0]].weight
    loras.to(device=ref.device, dtype=torch.float32)
    return loras.attach() if attach else loras


def full_diff(original: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor],
              dtype: Optional[torch.dtype] = None) -> dict[str, torch.Tensor]:
    """Full fine-tuning as a LoRA file ComfyUI applies: "lora_unet_<path>.diff" for each changed weight and
    ".diff_b" for each changed bias (keys are the UNet's state_dict names, relative to diffusion_model)."""
    out = {}
    for name, new in tuned.items():
        old = original[name]
        if not torch.is_floating_point(old) or torch.equal(old, new.to(old)):
            continue
        module, _, leaf = name.rpartition(".")
        if leaf == "weight":
            suffix = ".diff"
        elif leaf == "bias":
            suffix = ".diff_b"
        else:
            continue
        d = (new.detach().float().cpu() - old.detach().float().cpu())
        out[kohya_key(module) + suffix] = (d if dtype is None else d.to(dtype)).contiguous()
    return out


def kohya_metadata(rank: int, alpha: float, extra: Optional[dict] = None) -> dict[str, str]:
    """safetensors metadata in the keys kohya's sd-scripts writes (other tools read them), plus ours."""
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
            "ss_base_model_version": "sd_v1"}
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    return meta
