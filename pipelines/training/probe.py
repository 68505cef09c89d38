"""The `linear_probe` policy: fixed features' published baseline (Kornblith, Shlens & Le, CVPR 2019).

The head is an L2-regularised multinomial logistic regression fitted to convergence by scikit-learn's
L-BFGS on the frozen backbone's features, its C chosen on validation over a log grid (ascending, each
fit warm-started from the last). The features are centred and scaled by one number for the solver (not per
feature: fit_probe says why); that is folded into the weights, loaded into the network's own Linear head,
so the logged model, `predict`, `mlflow models serve` and the safetensors export see an ordinary network.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits
from torch import nn
from tqdm.auto import tqdm

from pipelines.models.backbones import head_module
from pipelines.ranking.scores import score_features
from pipelines.training import feature_cache
from pipelines.training.device import reset_peak
from pipelines.training.engine import Listener, epoch_row, fit_result, steady_images_per_s
from pipelines.training.results import FitResult, PreparedTraining, ProbeResult
from pipelines.training.stepper import evaluate

MAX_ITER = 1000  # L-BFGS iterations per C: the warm start makes most fits converge in far fewer
# The probes this process fitted, by (features' cache key, grid, seed): an lp_ft arm of a comparison whose
# worker ran the same backbone's linear_probe arm (or another lp_ft arm) starts from that head, fitted once
_FITTED: dict[tuple, tuple[ProbeResult, dict[str, torch.Tensor]]] = {}


def fit_probe(head: nn.Linear, found: dict[str, tuple[torch.Tensor, torch.Tensor]], grid: tuple[float, ...],
              seed: int) -> ProbeResult:
    """Fit on the train features, choose C on the val features, and load the chosen weights into `head`."""
    started = time.perf_counter()
    (x_train, y_train), (x_val, y_val) = ((x.numpy().astype(np.float64), y.numpy()) for x, y in
                                          (found["train"], found["val"]))
    # Centred, and scaled by one number for the whole feature vector (its RMS), not by each feature's std: the L2
    # penalty then bounds the weights on the features as the network sees them. Scaled per feature, a
    # near-constant feature got a weight of 1/std in the folded head (|W| 72 against a fine-tuned head's 2 on
    # Fashion-MNIST with Lite0), and lp_ft's fine-tuning, which moves those features, swung the logits: val/acc
    # fell from the probe's 0.80 to 0.40 in one epoch. The one scale keeps L-BFGS's tolerance meaningful
    # whatever the features' magnitude (raw features of std 0.03 stopped it after one iteration).
    mean = x_train.mean(axis=0)
    scale = float(np.sqrt(np.mean((x_train - mean) ** 2))) or 1.0
    z_train, z_val = (x_train - mean) / scale, (x_val - mean) / scale
    model = LogisticRegression(solver="lbfgs", max_iter=MAX_ITER, warm_start=True, random_state=seed)
    tried, best = [], None
    for c in grid:
        # One BLAS/OpenMP thread: beside torch's own OpenMP runtime, scikit-learn's threads contended for
        # the cores and made the fits 6x slower on 2 cores (2.5 s against 0.4 s for the quickstart's grid).
        with warnings.catch_warnings(), threadpool_limits(limits=1):
            warnings.simplefilter("ignore", ConvergenceWarning)  # an unconverged fit shows in its iterations
            model.set_params(C=c).fit(z_train, y_train)
        accuracy = float(model.score(z_val, y_val))
        tried.append((c, accuracy, int(np.max(model.n_iter_))))
        if best is None or accuracy > best[1]:
            best = (c, accuracy, model.coef_.copy(), model.intercept_.copy())
    if any(iterations >= MAX_ITER for _, _, iterations in tried):
        tqdm.write(f"linear_probe: L-BFGS stopped at {MAX_ITER} iterations for C in "
                   f"{[c for c, _, it in tried if it >= MAX_ITER]} before converging (reports/probe_c_grid.csv)")
    c, _, coef, intercept = best
    _load_head(head, coef, intercept, (mean, scale), classes=model.classes_)
    return ProbeResult(c, tuple(tried), time.perf_counter() - started)


def _load_head(head: nn.Linear, coef: np.ndarray, intercept: np.ndarray, centring: tuple[np.ndarray, float],
               classes: np.ndarray) -> None:
    """w·(x − μ)/s + b = (w/s)·x + (b − w·μ/s): the centring and the one scale folded into the head. A class
    absent from the train split keeps a logit far below the others (scikit-learn never saw it)."""
    mean, scale = centring
    weight = coef / scale
    bias = intercept - weight @ mean
    if coef.shape[0] == 1:  # two classes: scikit-learn keeps one row, the logit of the second class
        weight, bias = np.vstack([-weight / 2, weight / 2]), np.array([-bias[0] / 2, bias[0] / 2])
    full_weight = np.zeros((head.out_features, head.in_features))
    full_bias = np.full(head.out_features, -1e4)
    full_weight[classes], full_bias[classes] = weight, bias
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(full_weight))
        head.bias.copy_(torch.from_numpy(full_bias))


def start_from_probe(prepared: PreparedTraining) -> tuple[ProbeResult, dict]:
    """lp_ft's first stage: the network's head set to the converged probe of its frozen backbone (the
    same fit as a linear_probe arm's: taken from this process's earlier fit of it, by a linear_probe or lp_ft
    arm, when there is one); returns the probe and what the run logs of it (probe/c, probe/val_acc, the fit's
    and its features' seconds, where each came from)."""
    cfg = prepared.cfg
    head = head_module(prepared.backbone.model)
    key = _probe_key(prepared)
    if key in _FITTED:
        probe, weights = _FITTED[key]
        head.load_state_dict(weights)
        extra, reused = {"perf/feature_extraction_s": 0.0, "feature_cache_source": "reused"}, "reused"
    else:
        found, extra = feature_cache.head_features(prepared, max(64, cfg.train.batch_size))
        probe, reused = _remember(key, head, fit_probe(head, found, prepared.policy.probe_c, cfg.seed)), "fitted"
    val_acc = max(acc for c, acc, _ in probe.grid if c == probe.c)
    tqdm.write(f"lp_ft: the head starts from the linear probe ({reused}: C {probe.c:g}, val/acc {val_acc:.4f}), "
               "then the network trains")
    return probe, {"probe/c": probe.c, "probe/val_acc": val_acc, "probe/fit_s": probe.fit_seconds if reused ==
                   "fitted" else 0.0, "probe/feature_extraction_s": extra["perf/feature_extraction_s"],
                   "probe_features_source": extra["feature_cache_source"], "probe_source": reused}


def _probe_key(prepared: PreparedTraining) -> tuple | None:
    """What a probe's fit depends on: its features (their cache key), the grid of C and the seed; None where
    nothing may be reused (data.feature_cache off)."""
    if prepared.cfg.data.feature_cache == "off":
        return None
    return feature_cache.cache_key(prepared), prepared.policy.probe_c, prepared.cfg.seed


def _remember(key: tuple | None, head: nn.Linear, probe: ProbeResult) -> ProbeResult:
    if key is not None:
        _FITTED[key] = (probe, {k: v.detach().clone() for k, v in head.state_dict().items()})
    return probe


def run_probe(prepared: PreparedTraining, listeners: tuple[Listener, ...] = ()) -> tuple[FitResult, ProbeResult]:
    """The whole linear_probe run: one extraction pass (or the cache's), the fits, then every split
    evaluated by the engine's own pass, reported to the listeners as the run's one "epoch"."""
    cfg, device = prepared.cfg, prepared.device
    tqdm.write(f"linear_probe: the head is fitted to convergence by L-BFGS, C chosen on validation from "
               f"{len(prepared.policy.probe_c)} values; train.epochs ({cfg.train.epochs}) does not apply")
    batch = max(64, cfg.train.batch_size)
    found, extraction = feature_cache.head_features(prepared, batch)
    reset_peak(device)
    head = head_module(prepared.backbone.model)
    probe = _remember(_probe_key(prepared), head, fit_probe(head, found, prepared.policy.probe_c, cfg.seed))
    passes = evaluate(head, feature_cache.head_loaders(found, batch, cfg.seed), len(prepared.data.class_names),
                      device, cfg.train.label_smoothing)
    scores = score_features(*((x.numpy(), y.numpy()) for x, y in (found["train"], found["val"])))
    row = epoch_row(1, {**passes["train"].metrics, **passes["val"].metrics}, probe.fit_seconds,
                    len(found["train"][0]) / max(probe.fit_seconds, 1e-9), head, device)
    row["perf/steady_images_per_s"] = steady_images_per_s([row])
    for listener in listeners:
        listener.on_epoch_end(1, row)
    fit = fit_result([row], (1, row[cfg.train.monitor], passes["val"].confusion), passes["test"], device,
                     train_seconds=probe.fit_seconds,
                     extra={**extraction, "probe/c": probe.c, "perf/checkpoint_s": 0.0,
                            **scores.metrics(row["val/acc"])})  # the features' transferability (pipelines.ranking)
    return fit, probe
