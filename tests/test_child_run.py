"""A ChildRun crosses to an arm's N processes as JSON: the same value comes back, its config checked again,
and its pruner is built from the same description the worker's study was built from."""

import json

import optuna
import pytest

from pipelines.config import load_config
from pipelines.errors import ConfigError
from pipelines.studies.child import ChildRun, Reporting
from pipelines.studies.plan import PrunerSpec
from pipelines.studies.racing import RivalsPruner


def child(**changes) -> ChildRun:
    cfg = load_config(None, {"model.freeze": "last_n:2", "train.devices": 2, "train.lr": "3e-4"})
    fields = dict(cfg=cfg, entry_point="compare", parent_run_id="abc", tags={"arm": "x · last_n:2 · seed 0"},
                  storage_url="postgresql+psycopg2://u:secret@db/optuna", study_name="grid", trial_number=7,
                  pruner=PrunerSpec("racing", "successive_halving"),
                  reporting=Reporting("val/acc", prune=True, last_epoch=5))
    return ChildRun(**{**fields, **changes})


def test_a_child_run_comes_back_from_json_equal():
    original = child()
    again = ChildRun.from_json(original.to_json())
    assert again == original
    assert again.cfg.model.policy == original.cfg.model.policy and again.cfg.train.lr == 3e-4


def test_a_damaged_child_file_is_refused_in_one_line():
    raw = json.loads(child().to_json())
    raw["cfg"]["train"]["epochs"] = "many"
    with pytest.raises(ConfigError, match="train.epochs") as caught:
        ChildRun.from_json(json.dumps(raw))
    assert "\n" not in str(caught.value)


def test_the_pruner_is_built_from_its_description():
    assert isinstance(PrunerSpec("racing", "successive_halving").build(), RivalsPruner)
    assert isinstance(PrunerSpec("racing", "none").build(), optuna.pruners.NopPruner)
    hyperband = PrunerSpec("search", "hyperband", epochs=9).build()
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner) and hyperband._max_resource == 9
    assert isinstance(PrunerSpec("search", "median").build(), optuna.pruners.MedianPruner)
