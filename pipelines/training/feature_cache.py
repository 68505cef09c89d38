"""Frozen-feature cache: with a frozen backbone and a deterministic transform, every epoch would
recompute the same features. Compute them once per (backbone weights, split, transform), then
train only the head on them: the same optimiser steps on the same numbers, far fewer FLOPs.

Kept in memory for the process (comparison arms over several seeds share them) and, with
`data.feature_cache: disk`, in `data.cache_dir` under a key of everything that determines them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.layers import DropPath
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from pipelines.data.splits import SPLITS
from pipelines.models.backbones import head_prefix
from pipelines.training.device import autocast_context

log = logging.getLogger(__name__)
_MEMORY: OrderedDict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
_MEMORY_ENTRIES = 2  # a comparison runs one backbone's seeds in a row; two entries cover that


@dataclass(frozen=True)
class CachePlan:
    """Whether a run trains its head on cached features (memory | disk), or not (off) and why."""

    mode: str
    reason: str = ""

    @property
    def on(self) -> bool:
        return self.mode != "off"

    def __str__(self) -> str:
        return self.mode if self.on else f"off: {self.reason}"


def plan(prepared) -> CachePlan:
    blocked = blocker(prepared)
    return CachePlan("off", blocked) if blocked else CachePlan(prepared.cfg.data.feature_cache)


def blocker(prepared) -> str | None:
    """Why the cache cannot give the same result as the uncached run, or None when it can."""
    cfg, policy = prepared.cfg, prepared.policy
    if policy.trains_backbone:
        return f"policy {cfg.model.freeze} trains the backbone"
    if cfg.data.feature_cache == "off":
        return "data.feature_cache is off"
    if cfg.train.devices > 1:
        return f"train.devices is {cfg.train.devices}: each process trains on its shard of the images"
    if not policy.holds_batchnorm:
        return "model.bn is train: the frozen backbone's BatchNorm normalises each batch by its own statistics"
    if cfg.data.augment:
        return "random augmentation: the train transform is not deterministic"
    head = head_prefix(prepared.backbone.model)
    for name, module in prepared.backbone.model.named_modules():
        random = (isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0) or (
            isinstance(module, DropPath) and module.drop_prob > 0)
        if random and not name.startswith(head):
            return f"{name} ({type(module).__name__}) is random in training, so features vary per epoch"
    return None


def cache_key(prepared) -> str:
    """The backbone's actual tensors (not its name: a registry alias can move), split and transform."""
    model, head = prepared.backbone.model, head_prefix(prepared.backbone.model)
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if not name.startswith(head + "."):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    recipe = {"backbone": prepared.backbone.full_name, "split": prepared.data.split_digest,
              "size": prepared.data.image_size, "prep": repr(prepared.backbone.preprocessing),
              "dataset": prepared.data.raw.name}
    h.update(json.dumps(recipe, sort_keys=True).encode())
    return h.hexdigest()[:24]


def head_features(prepared, batch_size: int) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict]:
    """What a frozen backbone's head trains on (frozen arms) or is fitted to (the linear probe): the cache's
    features when the run plans the cache, else computed; and what that took, as the run logs it
    (perf/feature_extraction_s, feature_cache_source: memory | disk | computed)."""
    tick = time.perf_counter()
    found, origin = (features(prepared, batch_size) if prepared.feature_cache.on
                     else (extract(prepared, batch_size), "computed"))
    return found, {"perf/feature_extraction_s": time.perf_counter() - tick, "feature_cache_source": origin}


def features(prepared, batch_size: int) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], str]:
    """(split → (features, labels), where they came from: memory | disk | computed)."""
    key = cache_key(prepared)
    path = _disk_path(prepared, key)
    if key in _MEMORY:
        _MEMORY.move_to_end(key)
        found, origin = _MEMORY[key], "memory"
    elif path is not None and path.is_file():
        found, origin = torch.load(path, map_location="cpu", weights_only=True), "disk"
    else:
        found, origin = extract(prepared, batch_size), "computed"
    if path is not None and not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(found, tmp)
        tmp.replace(path)  # atomic: a killed run leaves no half-written cache entry
    _MEMORY[key] = found
    while len(_MEMORY) > _MEMORY_ENTRIES:
        _MEMORY.popitem(last=False)
    return found, origin


def _disk_path(prepared, key: str) -> Path | None:
    if prepared.cfg.data.feature_cache != "disk":
        return None
    root = prepared.cfg.data.cache_dir or str(Path.home() / ".cache" / "freezeframe" / "features")
    return Path(root).expanduser() / f"{key}.pt"


def extract(prepared, batch_size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One inference pass per split with the head swapped for Identity: what the head would see."""
    model, device = prepared.backbone.model, prepared.device
    memory_format = torch.channels_last if prepared.cfg.train.channels_last else torch.contiguous_format
    path = head_prefix(model)
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    head = getattr(parent, attr)
    setattr(parent, attr, nn.Identity())
    model.to(device=device, memory_format=memory_format).eval()
    out = {}
    try:
        with torch.inference_mode():
            for split in SPLITS:
                loader = DataLoader(prepared.data.datasets[split], batch_size=batch_size, shuffle=False,
                                    num_workers=prepared.cfg.data.num_workers)
                feats, labels = [], []
                for x, y in loader:
                    with autocast_context(device, prepared.cfg.train.amp):
                        feats.append(model(x.to(device, memory_format=memory_format)).float().cpu())
                    labels.append(y)
                out[split] = (torch.cat(feats), torch.cat(labels))
    finally:
        setattr(parent, attr, head)
    return out


def head_loaders(found: dict[str, tuple[torch.Tensor, torch.Tensor]], batch_size: int,
                 seed: int) -> dict[str, DataLoader]:
    """Loaders over cached features, shuffled by the same seeded generator as the image loaders (so the
    same batches), each batch one indexing of the tensors: a feature vector is too small to fetch and
    collate one by one (that was most of a head epoch's time)."""
    generator = torch.Generator().manual_seed(seed)
    loaders = {}
    for split in SPLITS:
        dataset = TensorDataset(*found[split])
        order = (RandomSampler(dataset, generator=generator) if split == "train" else SequentialSampler(dataset))
        loaders[split] = DataLoader(dataset, batch_size=None, sampler=BatchSampler(order, batch_size, drop_last=False),
                                    generator=generator if split == "train" else None)
    return loaders
