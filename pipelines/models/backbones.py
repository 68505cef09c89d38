"""Name-keyed backbone factory: "timm/<name>" or "torchvision/<name>" → a model with a fresh head.

Unknown names fail at once with the closest valid names, the way timm's create_model and
torchvision's get_model users expect.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import timm
import torch
import torchvision
from torch import nn

from pipelines.data.loaders import Preprocessing
from pipelines.errors import ConfigError, UnknownNameError
from pipelines.models import weight_sources

SOURCES = ("timm", "torchvision")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Backbone:
    model: nn.Module
    source: str
    name: str
    preprocessing: Preprocessing

    @property
    def full_name(self) -> str:
        return f"{self.source}/{self.name}"


def split_name(full_name: str) -> tuple[str, str]:
    source, _, name = full_name.partition("/")
    if source not in SOURCES or not name:
        raise UnknownNameError(
            f"backbone '{full_name}' must be 'timm/<name>' or 'torchvision/<name>' (e.g. timm/resnet18)"
        )
    known = available(source)
    base = name.split(".")[0]  # timm accepts pretrained tags: resnet18.a1_in1k
    if base not in known:
        close = difflib.get_close_matches(base, known, n=5, cutoff=0.5)
        hint = f"; closest: {', '.join(f'{source}/{c}' for c in close)}" if close else ""
        raise UnknownNameError(f"unknown backbone '{full_name}'{hint}")
    return source, name


def available(source: str) -> list[str]:
    if source == "timm":
        return timm.list_models()
    # Classification models only: detection/segmentation/video builders do not take a new head this way.
    return torchvision.models.list_models(module=torchvision.models)


def build_backbone(
    full_name: str,
    num_classes: int,
    weights: str = "none",
    drop_rate: float = 0.0,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Backbone:
    """Build the model, load the weights source, and give it a new `num_classes` head.

    `state_dict` carries weights resolved outside pipelines (a `models:/` URI, by tracking/).
    """
    source, name = split_name(full_name)
    if source == "timm":
        model = weight_sources.create_timm(name, weights, num_classes, drop_rate)
        cfg = timm.data.resolve_model_data_config(model)
        prep = Preprocessing(tuple(cfg["mean"]), tuple(cfg["std"]), cfg.get("interpolation", "bilinear"))
    else:
        model, tv_weights = weight_sources.create_torchvision(name, weights)
        _replace_torchvision_head(model, num_classes)
        prep = _torchvision_preprocessing(tv_weights)
    if state_dict is not None or weight_sources.is_local_file(weights):
        state = state_dict if state_dict is not None else weight_sources.read_state_dict(weights)
        weight_sources.load_backbone_state(model, state, source=weights, head=head_prefix(model))
    return Backbone(model=model, source=source, name=name, preprocessing=prep)


def _replace_torchvision_head(model: nn.Module, num_classes: int) -> None:
    """Swap the last Linear layer, wherever the model keeps it (fc, classifier[-1], heads.head, ...)."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UnknownNameError(f"{type(model).__name__} has no Linear classifier to replace; pick another backbone")
    path, old = linears[-1]
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, nn.Linear(old.in_features, num_classes))  # also replaces Sequential items by index


def _torchvision_preprocessing(tv_weights) -> Preprocessing:
    if tv_weights is None:
        return Preprocessing(IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    t = tv_weights.transforms()
    return Preprocessing(tuple(t.mean), tuple(t.std), t.interpolation.value)


def head_prefix(model: nn.Module) -> str:
    """Module path of the classifier: timm's get_classifier(), else the model's last Linear."""
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        for name, module in model.named_modules():
            if module is head:
                return name
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"cannot find the classifier of {type(model).__name__}")
    return linears[-1]


def head_module(model: nn.Module) -> nn.Module:
    return model.get_submodule(head_prefix(model))
