"""Transferability scores: LogME against a brute-force evidence, and the scores on features of known quality."""

import numpy as np
import pytest

from pipelines.ranking.logme import evidence, logme, maximise
from pipelines.ranking.scores import score_features


@pytest.mark.parametrize("n, d", [(40, 10), (30, 60)])  # more examples than dimensions, and fewer
def test_logme_is_the_maximised_evidence_of_a_brute_force_gaussian(n, d):
    rng = np.random.default_rng(n)
    f = rng.normal(size=(n, d))
    y = (f[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(float)
    value, alpha, beta = maximise(f, y)
    # the closed form through one SVD equals log N(y; 0, I/β + FFᵀ/α) / N with an N × N covariance
    assert value == pytest.approx(evidence(f, y, alpha, beta), abs=1e-9)
    # and (α, β) is where MacKay's iteration stops: a stationary point of that exact evidence (its
    # derivatives in log α and log β vanish), not just any pair
    h = 1e-3
    for da, db in [(np.exp(h), 1), (1, np.exp(h))]:
        slope = (evidence(f, y, alpha * da, beta * db) - evidence(f, y, alpha / da, beta / db)) / (2 * h)
        assert abs(slope) < 1e-4
    assert evidence(f, y, alpha / 10, beta * 10) < value - 0.01  # a far pair is clearly worse


def test_logme_averages_the_classes():
    rng = np.random.default_rng(1)
    f, labels = rng.normal(size=(50, 8)), rng.integers(0, 3, 50)
    by_class = [maximise(f, (labels == k).astype(float))[0] for k in range(3)]
    assert logme(f, labels) == pytest.approx(np.mean(by_class))


def test_informative_features_score_higher_than_noise():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, 400)
    centres = rng.normal(scale=3, size=(4, 16))
    good = centres[labels] + rng.normal(size=(400, 16))
    noise = rng.normal(size=(400, 16))
    split = lambda x: ((x[:300], labels[:300]), (x[300:], labels[300:]))  # noqa: E731
    ours, theirs = score_features(*split(good)), score_features(*split(noise))
    assert ours.logme > theirs.logme and ours.knn_val_acc > 0.9 > 0.5 > theirs.knn_val_acc
    assert ours.feature_dim == 16 and ours.seconds >= 0
