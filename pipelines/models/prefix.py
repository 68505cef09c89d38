"""Partial fine-tuning at cached-prefix speed: the stages before the first one a policy ever trains
(`last_n:2`'s first six of Lite0's eight, `stage:5`'s first five, gradual's never-thawed ones) are a
fixed function of the image when the transform is deterministic and their BatchNorm layers are held in
eval. Their output is computed once (pipelines/training/feature_cache.py stores it) and the rest of the
network trains on it, the prefix's modules passing their input through while it does (their forward
replaced, not the modules: names, state_dict, stages and checkpoints stay the whole network's).

Where the network is cut is found by running it once: the cut is the first module called that holds a
parameter of the first trained stage; the prefix is every module that finished before the cut started
(the largest such, not their insides). A network whose forward does more than chain those modules (a
functional op, a position embedding added by the container) is caught by comparing the cut network's
output with the whole network's on the same input: it then trains uncached, saying why.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from pipelines.errors import first_line
from pipelines.models.backbones import head_prefix
from pipelines.models.freezing import stages, under


@dataclass(frozen=True)
class Cut:
    """Where a network is cut: the trained part starts at `module`, whose input the cache holds."""
    module: str
    prefix: tuple[str, ...]  # the modules run before it, passing their input through while the rest trains


class _Reached(Exception):
    """Raised by the cut's hook during extraction: the rest of the network need not run."""


def find_cut(model: nn.Module, first_stage: int, sample: torch.Tensor) -> tuple[Cut | None, str]:
    """Where `model` is cut before stage `first_stage` (its stages, input side first), checked on `sample`
    (eval mode, one small batch); (None, why) where it cannot be."""
    groups = stages(model)
    if first_stage <= 0 or first_stage >= len(groups):
        return None, "the policy trains the first stage" if first_stage <= 0 else "no stage of the backbone trains"
    stage_params = set(groups[first_stage])
    owners = {name for name, module in model.named_modules()
              if any((f"{name}.{p}" if name else p) in stage_params for p, _ in module.named_parameters(recurse=False))}
    order, handles = [], []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, a, name=name: order.append(("start", name))))
        handles.append(module.register_forward_hook(lambda m, a, o, name=name: order.append(("end", name))))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            expected = model(sample)
        for handle in handles:
            handle.remove()
        cut, why = _cut_at(model, order, owners)
        if cut is None:
            return None, why
        with torch.inference_mode():
            activations = run_prefix(model, cut, sample)
            with suffix_view(model, cut):
                got = model(activations)
    except Exception as exc:  # noqa: BLE001 - whatever the model raises means it cannot be cut there
        return None, f"{type(model).__name__} cannot be cut before stage {first_stage}: {first_line(exc)}"
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
        return None, f"{type(model).__name__}'s forward does more than chain its modules before {cut.module}"
    return cut, ""


def _cut_at(model: nn.Module, order: list[tuple[str, str]], owners: set[str]) -> tuple[Cut | None, str]:
    """The cut from one forward's call order: the cut is the first owner called, the prefix the largest
    modules that ended before it started (never one called again after it, nor one holding the head)."""
    starts = [i for i, (event, name) in enumerate(order) if event == "start" and name in owners]
    if not starts:
        return None, "none of the stage's modules ran"
    cut_at, cut = starts[0], order[starts[0]][1]
    done = {name for event, name in order[:cut_at] if event == "end" and name}
    prefix = [n for n in done if not any(under(n, other) for other in done if other != n)]
    again = {name for event, name in order[cut_at:] if event == "start"} & set(prefix)
    if not prefix or again or any(under(head_prefix(model), p) for p in prefix):
        return None, f"{type(model).__name__}'s modules before {cut} are called again after it"
    return Cut(cut, tuple(sorted(prefix, key=lambda n: order.index(("end", n))))), ""


def run_prefix(model: nn.Module, cut: Cut, x: torch.Tensor) -> torch.Tensor:
    """The cut's input for a batch: the network runs until the cut is called, and stops there. The caller
    sets eval mode and inference."""
    caught: list[torch.Tensor] = []

    def catch(module: nn.Module, args: tuple) -> None:
        if len(args) != 1 or not isinstance(args[0], torch.Tensor):
            raise TypeError(f"{cut.module} takes {len(args)} inputs, not one tensor")
        caught.append(args[0])
        raise _Reached

    handle = model.get_submodule(cut.module).register_forward_pre_hook(catch)
    try:
        model(x)
    except _Reached:
        return caught[0]
    finally:
        handle.remove()
    raise RuntimeError(f"{cut.module} was never called")


@contextmanager
def suffix_view(model: nn.Module, cut: Cut) -> Iterator[nn.Module]:
    """The network, in place, with each prefix module passing its input through: fed the cut's input, it
    computes what the whole network computes from the image. The modules stay where they are (their state is
    saved with the rest, stages() still sees them); their own forward comes back on leaving, whatever happened."""
    replaced = []
    try:
        for name in cut.prefix:
            module = model.get_submodule(name)
            module.forward = _pass_through  # an instance attribute: nn.Module.__call__ looks it up there first
            replaced.append(module)
        yield model
    finally:
        for module in replaced:
            del module.forward


def _pass_through(x: torch.Tensor) -> torch.Tensor:
    return x
