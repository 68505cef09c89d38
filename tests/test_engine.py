import math

import pytest
import torch

from pipelines.config import load_config
from pipelines.errors import TrainingError
from pipelines.training.trainer import execute, prepare
from tests.conftest import tiny_overrides


class Recorder:
    def __init__(self):
        self.epochs = []

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append((epoch, metrics))


def test_fit_reports_every_epoch_and_tests_the_best(tiny_cfg):
    recorder = Recorder()
    outcome = execute(prepare(tiny_cfg), listeners=(recorder,))
    fit = outcome.fit
    assert [e for e, _ in recorder.epochs] == [1, 2] and len(fit.history) == 2
    row = fit.history[-1]
    for key in ("train/loss", "train/acc", "train/f1_macro", "train/precision_macro", "train/recall_macro",
                "val/loss", "val/acc", "val/f1_macro", "lr", "perf/epoch_s", "perf/images_per_s"):
        assert math.isfinite(row[key]), key
    assert set(fit.test) >= {"test/acc", "test/f1_macro", "test/loss"}
    assert fit.confusion["test"].shape == (10, 10) and int(fit.confusion["test"].sum()) == 40
    assert 1 <= fit.best_epoch <= 2
    assert "precision" in outcome.report_text and outcome.report_dict["accuracy"] == pytest.approx(
        fit.test["test/acc"], abs=1e-6)
    images, labels = outcome.prepared.input_samples()
    assert images.shape[1:] == (3, 32, 32) and 0 <= float(images.min()) and len(labels) == len(images)


def test_same_seed_same_results(tmp_path):
    results = []
    for run in range(2):
        cfg = load_config(None, tiny_overrides(tmp_path / str(run)))
        results.append(execute(prepare(cfg)).fit)
    assert results[0].history[-1]["val/loss"] == results[1].history[-1]["val/loss"]
    assert results[0].test == results[1].test


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path, **{"train.lr": 1e6, "train.epochs": 3}))
    prepared = prepare(cfg)
    with torch.no_grad():  # a poisoned weight makes the first loss NaN, deterministically
        prepared.backbone.model.get_classifier().weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="train loss became nan at batch 1"):
        execute(prepared)


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    first = execute(prepare(load_config(None, tiny_overrides(tmp_path, **{"train.epochs": 1}))))
    assert len(first.fit.history) == 1
    recorder = Recorder()
    cfg = load_config(None, tiny_overrides(tmp_path, **{"train.epochs": 1, "train.resume": True}))
    again = execute(prepare(cfg), listeners=(recorder,))
    # all epochs were done: nothing retrained, history replayed to listeners, same test result
    assert again.fit.resumed_from_epoch == 1 and [e for e, _ in recorder.epochs] == [1]
    assert again.fit.test == first.fit.test


def test_resume_after_interruption_trains_only_the_missing_epochs(tmp_path):
    class StopAfterFirst(Recorder):
        def on_epoch_end(self, epoch, metrics):
            super().on_epoch_end(epoch, metrics)
            raise KeyboardInterrupt  # like Ctrl-C right after the epoch's checkpoint

    with pytest.raises(KeyboardInterrupt):
        execute(prepare(load_config(None, tiny_overrides(tmp_path, **{"train.epochs": 3}))),
                listeners=(StopAfterFirst(),))
    recorder = Recorder()
    cfg = load_config(None, tiny_overrides(tmp_path, **{"train.epochs": 3, "train.resume": True}))
    resumed = execute(prepare(cfg), listeners=(recorder,))
    assert resumed.fit.resumed_from_epoch == 1
    assert [e for e, _ in recorder.epochs] == [1, 2, 3] and len(resumed.fit.history) == 3


def test_early_stopping(tmp_path):
    # Frozen backbone and a negligible lr: val/acc cannot improve after epoch 1, so patience 1 stops at 2.
    cfg = load_config(None, tiny_overrides(tmp_path, **{
        "train.epochs": 8, "train.lr": 1e-9, "model.freeze": "frozen", "train.early_stopping_patience": 1}))
    fit = execute(prepare(cfg)).fit
    assert fit.stopped_early and len(fit.history) == 2 and fit.best_epoch == 1


def test_frozen_policy_changes_no_backbone_weight(tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path, **{"model.freeze": "frozen"}))
    prepared = prepare(cfg)
    model = prepared.backbone.model
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    execute(prepared)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k].cpu()) for k in before)


def test_a_checkpoint_keeps_the_best_epoch_without_a_second_copy_of_the_network(tmp_path):
    from torch import nn

    from pipelines.training import checkpoints

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.Linear(64, 3))
    model[0].requires_grad_(False)  # frozen: its tensors never change, so the best epoch's equal the current
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    state = checkpoints.TrainState(epoch=1, best_epoch=1, best_value=0.5, best_state=best)
    objects = checkpoints.TrainingObjects(model, optimizer, None, scaler, None)
    size_best_now = checkpoints.save(tmp_path / "a", state, objects).stat().st_size
    with torch.no_grad():
        model[2].weight.add_(1.0)  # a later, worse epoch moved the head
    state.epoch = 2
    checkpoints.save(tmp_path / "b", state, objects)
    restored = checkpoints.restore(checkpoints.read(tmp_path / "b"), objects)
    assert restored.best_state.keys() == best.keys()
    assert all(torch.equal(restored.best_state[k], v) for k, v in best.items())
    assert not torch.equal(restored.best_state["2.weight"], model.state_dict()["2.weight"])
    network_bytes = sum(v.numel() * v.element_size() for v in best.values())
    assert size_best_now < 1.5 * network_bytes  # the network once, not twice
