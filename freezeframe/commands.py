"""Each sub-command's body, by name. Only the chosen command's module is imported, after parsing, so
`--help` and config errors stay instant and a command loads only what it uses: `predict` no study code,
and compare, rank and search the training stack only when an arm or trial trains (freezeframe.study_run),
so a rerun with nothing left to train answers without torch."""

import importlib
from collections.abc import Callable

# command → the freezeframe module that defines a function of that name
MODULES = {"train": "train", "pretrain": "train", "compare": "compare", "search": "search", "rank": "rank",
           "predict": "predict", "reregister": "predict"}


def command(name: str) -> Callable[..., int]:
    return getattr(importlib.import_module(f"freezeframe.{MODULES[name]}"), name)
