"""Weights sources: none | imagenet | a local state_dict file (a `models:/` URI is resolved by tracking/).

`imagenet` keeps the real download path for online users, but never sits in a retry loop offline:
bundled weights first (EfficientNet-Lite0/1/2), then the local cache, then a bounded reachability probe, and an error
naming the offline options when none of them works.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
import torchvision
from torch import nn

from pipelines.errors import WeightsError, first_line
from pipelines.models import lite_wheels

LOCAL_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
OFFLINE_OPTIONS = (
    "use weights=none, a local .pth/.safetensors file, a models:/<name>@<alias> URI, "
    "or timm/tf_efficientnet_lite0/1/2 (their ImageNet weights ship with the install)"
)


def is_local_file(weights: str) -> bool:
    return weights.lower().endswith(LOCAL_SUFFIXES) and not weights.startswith("models:/")


def check_source(weights: str) -> None:
    """Reject a weights value that names no known source, before anything is built."""
    if weights in ("none", "imagenet") or weights.startswith("models:/"):
        return
    if not is_local_file(weights):
        raise WeightsError(
            f"weights '{weights}' is not a source: use none, imagenet, a {'/'.join(LOCAL_SUFFIXES)} file "
            "or models:/<name>/<version> | models:/<name>@<alias>"
        )
    if not Path(weights).is_file():
        raise WeightsError(f"weights file not found: {weights}")


def reachable(host: str, timeout: float = 1.5) -> bool:
    """TCP connect to host:443 within `timeout` seconds, DNS included (a thread bounds a slow resolver)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def create_timm(name: str, weights: str, num_classes: int, drop_rate: float) -> nn.Module:
    if weights != "imagenet":
        return timm.create_model(name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)
    if lite_wheels.bundled(name):
        model = timm.create_model(name.split(".")[0], pretrained=False, drop_rate=drop_rate)
        lite_wheels.load_into(model, name)
        model.reset_classifier(num_classes)
        return model
    cached = _hf_cached_file(name)
    if cached is not None:
        overlay = {"file": str(cached)}
        return timm.create_model(name, pretrained=True, num_classes=num_classes, drop_rate=drop_rate,
                                 pretrained_cfg_overlay=overlay)
    if not reachable("huggingface.co"):
        raise WeightsError(f"ImageNet weights for timm/{name} are not cached and the hub is unreachable: "
                           f"{OFFLINE_OPTIONS}")
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes, drop_rate=drop_rate)
    except Exception as exc:  # noqa: BLE001 - hub and HTTP errors come in many types
        raise WeightsError(f"could not download ImageNet weights for timm/{name} ({exc}); {OFFLINE_OPTIONS}") from None


def _hf_cached_file(name: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(repo, filename)
        if isinstance(hit, str):
            return Path(hit)
    return None


def create_torchvision(name: str, weights: str):
    """The model and its torchvision weights enum (None for random init or a local file)."""
    if weights != "imagenet":
        return torchvision.models.get_model(name, weights=None), None
    try:
        tv_weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        raise WeightsError(f"torchvision/{name} publishes no ImageNet weights; use weights=none") from None
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(tv_weights.url).path).name
    if not cache.is_file() and not reachable(urlparse(tv_weights.url).hostname or ""):
        raise WeightsError(f"ImageNet weights for torchvision/{name} are not cached ({cache}) and "
                           f"the download host is unreachable: {OFFLINE_OPTIONS}")
    try:
        return torchvision.models.get_model(name, weights=tv_weights), tv_weights
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"could not download ImageNet weights for torchvision/{name} ({exc})") from None


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A state_dict from .safetensors or a torch file (bare, or a checkpoint holding one)."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt files raise anything from pickle to zip errors
        raise WeightsError(f"cannot read weights file {path}: {first_line(exc)}") from None
    for key in ("state_dict", "model", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} holds no state_dict of tensors")
    return state


def load_backbone_state(model: nn.Module, state: dict[str, torch.Tensor], source: str, head: str) -> None:
    """Load every backbone tensor strictly; the head stays fresh, since its classes are ours.

    BatchNorm's `num_batches_tracked` counters are not weights: missing or extra ones are ignored.
    """
    own = model.state_dict()

    def relevant(key: str) -> bool:
        return not key.startswith(head + ".") and not key.endswith("num_batches_tracked")

    state = {k.removeprefix("module."): v for k, v in state.items()}
    missing = [k for k in own if relevant(k) and k not in state]
    unexpected = [k for k in state if relevant(k) and k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)}≠{tuple(own[k].shape)}"
                  for k in own if relevant(k) and k in state and state[k].shape != own[k].shape]
    problems = [(missing, "missing"), (unexpected, "unexpected"), (mismatched, "shape mismatch")]
    if any(keys for keys, _ in problems):
        detail = "; ".join(f"{len(keys)} {what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                           for keys, what in problems if keys)
        raise WeightsError(f"weights {source} do not fit {type(model).__name__}: {detail}")
    backbone_only = {k: v for k, v in state.items() if relevant(k)}
    model.load_state_dict(backbone_only, strict=False)
