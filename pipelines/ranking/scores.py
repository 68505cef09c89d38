"""Transferability scores of frozen features, computed where a linear_probe arm already holds them
(its one extraction pass, or the feature cache's): LogME on the train split, and the validation
accuracy of a plain k-nearest-neighbour vote, the naive baseline the LogME critiques measure scores
against (Agostinelli et al., ECCV 2022). The probe's own validation accuracy is the third score.

Every score reads train and validation only: test stays for the verdicts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits

from pipelines.ranking import SCORES
from pipelines.ranking.logme import logme

KNN_K = 20  # the usual k of k-NN feature evaluation (Wu et al. 2018; DINO); fewer when train is smaller


@dataclass(frozen=True)
class FeatureScores:
    logme: float
    knn_val_acc: float
    feature_dim: int
    seconds: float  # both scores, the extraction excepted

    def metrics(self, probe_val_acc: float) -> dict[str, float]:
        return {SCORES["logme"]: self.logme, SCORES["knn"]: self.knn_val_acc, SCORES["linear_probe"]: probe_val_acc,
                "score/feature_dim": float(self.feature_dim), "perf/score_s": self.seconds}


def score_features(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray]) -> FeatureScores:
    """LogME of the train features and the k-NN vote's accuracy on val (cosine: features L2-normalised)."""
    started = time.perf_counter()
    (x_train, y_train), (x_val, y_val) = ((np.asarray(x, dtype=np.float64), np.asarray(y)) for x, y in (train, val))
    with threadpool_limits(limits=1):  # beside torch's OpenMP threads, as for the probe's fits (probe.py)
        evidence = logme(x_train, y_train)
        knn = KNeighborsClassifier(n_neighbors=min(KNN_K, len(x_train)), metric="cosine", algorithm="brute")
        accuracy = float(knn.fit(x_train, y_train).score(x_val, y_val))
    return FeatureScores(evidence, accuracy, int(x_train.shape[1]), time.perf_counter() - started)
