"""Frozen-feature cache: with a frozen backbone and a deterministic transform, every epoch would
recompute the same features. Compute them once per (backbone weights, split, transform), then
train only the head on them: the same optimiser steps on the same numbers, far fewer FLOPs.

The same holds for the fixed prefix of a partial fine-tuning (last_n, stage, gradual; pipelines/models/
prefix.py): its output, the input of the first trained stage, is cached under the same key plus the cut.

Kept in memory for the process (comparison arms over several seeds and policies share them, up to
`data.cache_memory_mb`; a larger entry spills to disk and is read memory-mapped) and, with
`data.feature_cache: disk`, in `data.cache_dir` under a key of everything that determines them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.layers import DropPath
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from pipelines.data.loaders import ImageDataset
from pipelines.data.splits import SPLITS
from pipelines.models.backbones import head_prefix
from pipelines.models.freezing import under
from pipelines.models.prefix import Cut, find_cut, run_prefix
from pipelines.training.device import autocast_context

log = logging.getLogger(__name__)
Features = dict[str, tuple[torch.Tensor, torch.Tensor]]  # split → (features or activations, labels)
_MEMORY: OrderedDict[str, Features] = OrderedDict()
_IN_RAM: dict[str, int] = {}  # key → bytes held in RAM (0: memory-mapped from disk)
_MEMORY_ENTRIES = 8  # besides the bytes: a comparison's backbones × (head features, a prefix or two)


@dataclass(frozen=True)
class CachePlan:
    """Whether a run trains on cached inputs (memory | disk), or not (off) and why; `cut`: where a partial
    fine-tuning's fixed prefix ends (None: a frozen backbone's head trains on its features)."""

    mode: str
    reason: str = ""
    cut: Cut | None = None

    @property
    def on(self) -> bool:
        return self.mode != "off"

    def __str__(self) -> str:
        if not self.on:
            return f"off: {self.reason}"
        return f"{self.mode}: the prefix before {self.cut.module}" if self.cut else self.mode


def plan(prepared) -> CachePlan:
    blocked = blocker(prepared)
    if blocked:
        return CachePlan("off", blocked)
    if not prepared.policy.trains_backbone:
        return CachePlan(prepared.cfg.data.feature_cache)
    val = prepared.data.datasets["val"]
    sample = torch.stack([val[i][0] for i in range(min(2, len(val)))])  # two real images, to check the cut on
    first = prepared.policy.first_trained_stage(prepared.freeze.stages_total)
    model = prepared.backbone.model
    cut, why = find_cut(model, first, sample)
    if cut is None:
        return CachePlan("off", why)
    random = next(filter(None, (_random_in(model, p, head_prefix(model)) for p in cut.prefix)), None)
    return CachePlan("off", random) if random else CachePlan(prepared.cfg.data.feature_cache, cut=cut)


def blocker(prepared) -> str | None:
    """Why the cache cannot give the same result as the uncached run, or None when it can."""
    cfg, policy = prepared.cfg, prepared.policy
    if policy.trains_backbone and policy.first_trained_stage(prepared.freeze.stages_total) == 0:
        return f"policy {cfg.model.freeze} trains the backbone from its first stage"
    if cfg.data.feature_cache == "off":
        return "data.feature_cache is off"
    if cfg.train.devices > 1:
        return f"train.devices is {cfg.train.devices}: each process trains on its shard of the images"
    if not policy.holds_batchnorm:
        return "model.bn is train: the frozen stages' BatchNorm normalises each batch by its own statistics"
    if cfg.data.augment:
        return "random augmentation: the train transform is not deterministic"
    model = prepared.backbone.model
    return None if policy.trains_backbone else _random_in(model, "", head_prefix(model))


def _random_in(model: nn.Module, inside: str, outside: str) -> str | None:
    """A module inside `inside` ("" the whole network), not inside `outside`, that is random in training: what
    the cached part must not hold (after a cut, dropout draws the same masks cached or not)."""
    for name, module in model.named_modules():
        random = (isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0) or (
            isinstance(module, DropPath) and module.drop_prob > 0)
        if random and (not inside or under(name, inside)) and not name.startswith(outside):
            return f"{name} ({type(module).__name__}) is random in training, so its output varies per epoch"
    return None


def cache_key(prepared, cut: Cut | None = None) -> str:
    """The backbone's actual tensors (not its name: a registry alias can move), split, transform and cut."""
    model, head = prepared.backbone.model, head_prefix(prepared.backbone.model)
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if not name.startswith(head + "."):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    recipe = {"backbone": prepared.backbone.full_name, "split": prepared.data.split_digest,
              "size": prepared.data.image_size, "prep": repr(prepared.backbone.preprocessing),
              "dataset": prepared.data.raw.name, **({"cut": cut.module} if cut else {}),
              # mixed precision changes the numbers where it applies (CUDA); elsewhere keys stay as they were
              **({"amp": True} if prepared.cfg.train.amp and prepared.device.type == "cuda" else {})}
    h.update(json.dumps(recipe, sort_keys=True).encode())
    return h.hexdigest()[:24]


def head_features(prepared, batch_size: int, cut: Cut | None = None) -> tuple[Features, dict]:
    """What a frozen backbone's head trains on (frozen arms) or is fitted to (the linear probe), or, with
    `cut`, what the trained part of a partial fine-tuning starts from: stored and reused unless
    data.feature_cache is off; and what that took, as the run logs it (perf/feature_extraction_s,
    feature_cache_source: memory | disk | computed)."""
    tick = time.perf_counter()
    found, origin = features(prepared, batch_size, cut)
    return found, {"perf/feature_extraction_s": time.perf_counter() - tick, "feature_cache_source": origin}


def features(prepared, batch_size: int, cut: Cut | None = None) -> tuple[Features, str]:
    """(split → (features, labels), where they came from: memory | disk | computed). They are computed in
    eval mode with the evaluation transform, so they are the same whichever run asks (a linear probe, an
    lp_ft run's probe under augmentation, a frozen arm)."""
    mode = prepared.cfg.data.feature_cache
    if mode == "off":
        return extract(prepared, batch_size, cut), "computed"
    key, budget = cache_key(prepared, cut), prepared.cfg.data.cache_memory_mb * 2**20
    path = _disk_path(prepared, key)
    if key in _MEMORY:
        _MEMORY.move_to_end(key)
        if mode == "disk" and not path.is_file():  # kept for later processes too, as asked
            _save(_MEMORY[key], path)
        return _MEMORY[key], "memory"
    in_ram = 0  # a memory-mapped entry costs no RAM of its own: the page cache holds it, and gives it back
    if path.is_file():
        found, origin = torch.load(path, map_location="cpu", weights_only=True, mmap=True), "disk"
    else:
        found, origin = extract(prepared, batch_size, cut), "computed"
        in_ram = sum(t.nbytes for pair in found.values() for t in pair)
        if mode == "disk" or in_ram > budget:  # too big to keep in memory: spilled
            _save(found, path)
            found, in_ram = torch.load(path, map_location="cpu", weights_only=True, mmap=True), 0
    _MEMORY[key], _IN_RAM[key] = found, in_ram
    while len(_MEMORY) > 1 and (len(_MEMORY) > _MEMORY_ENTRIES or sum(_IN_RAM.values()) > budget):
        del _IN_RAM[_MEMORY.popitem(last=False)[0]]
    return found, origin


def _save(found: Features, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # two processes saving one key never share a file
    torch.save(found, tmp)
    tmp.replace(path)  # atomic: a killed run leaves no half-written cache entry


def _disk_path(prepared, key: str) -> Path:
    root = prepared.cfg.data.cache_dir or str(Path.home() / ".cache" / "freezeframe" / "features")
    return Path(root).expanduser() / f"{key}.pt"


def extract(prepared, batch_size: int, cut: Cut | None = None) -> Features:
    """One inference pass per split: with the head swapped for Identity, what the head would see; with a
    `cut`, its module's input (the network stops there), in the dtype the network made it."""
    model, device = prepared.backbone.model, prepared.device
    memory_format = torch.channels_last if prepared.cfg.train.channels_last else torch.contiguous_format
    path = head_prefix(model)
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    head = getattr(parent, attr)
    if cut is None:
        setattr(parent, attr, nn.Identity())
    model.to(device=device, memory_format=memory_format).eval()
    evaluation = prepared.data.datasets["val"].transform  # the train split's too: see features()
    out = {}
    try:
        with torch.inference_mode():
            for name in SPLITS:
                images = ImageDataset(prepared.data.raw, prepared.data.indices[name], evaluation)
                loader = DataLoader(images, batch_size=batch_size, shuffle=False,
                                    num_workers=prepared.cfg.data.num_workers)
                feats, labels, start = None, [], 0
                for x, y in loader:
                    x = x.to(device, memory_format=memory_format)
                    with autocast_context(device, prepared.cfg.train.amp):
                        batch = model(x).float() if cut is None else run_prefix(model, cut, x)
                    if feats is None:  # filled in place: a prefix's activations can be large, so never held twice
                        feats = torch.empty((len(images), *batch.shape[1:]), dtype=batch.dtype)
                    feats[start:start + len(batch)] = batch.cpu()
                    start += len(batch)
                    labels.append(y)
                out[name] = (feats if feats is not None else torch.empty(0), torch.cat(labels) if labels
                             else torch.empty(0, dtype=torch.long))
    finally:
        setattr(parent, attr, head)
    return out


def head_loaders(found: Features, batch_size: int,
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


def clear() -> None:
    """Forget the in-memory entries (a benchmark's run that must pay for its own extraction)."""
    _MEMORY.clear()
    _IN_RAM.clear()
