"""Means with Student-t confidence intervals, and paired differences over shared seeds.

A comparison has a handful of seeds per arm, so a normal-approximation interval would be too narrow:
the t quantile with n−1 degrees of freedom widens it honestly. With one value the spread is unknown,
so std and the interval are None rather than a misleading 0."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class MeanCI:
    """Mean of n values, its sample std (ddof=1) and a two-sided t interval; None where n < 2."""

    mean: float
    std: float | None
    n: int
    lo: float | None
    hi: float | None
    confidence: float = 0.95

    @property
    def half_width(self) -> float | None:
        return None if self.lo is None else (self.hi - self.lo) / 2


@dataclass(frozen=True)
class PairedDelta(MeanCI):
    """a − b seed by seed, then summarised. Paired because both arms of a seed share its split, its
    initialisation of the head and its data order: the seed-to-seed noise cancels in the difference,
    so the interval is far tighter than comparing two independent means would allow."""

    seeds: tuple[str, ...] = ()


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> MeanCI:
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(x.mean())
    if x.size < 2:
        return MeanCI(mean, None, 1, None, None, confidence)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, df=x.size - 1)) * std / math.sqrt(x.size)
    return MeanCI(mean, std, int(x.size), mean - half, mean + half, confidence)


def paired_delta(a_by_seed: Mapping[str, float], b_by_seed: Mapping[str, float],
                 confidence: float = 0.95) -> PairedDelta | None:
    """Mean a − b over the seeds both have (None when they share none); seeds only one side ran are
    left out, since an unpaired value would bring back the seed noise the pairing removes."""
    seeds = tuple(sorted(set(a_by_seed) & set(b_by_seed), key=seed_order))
    if not seeds:
        return None
    ci = mean_ci([a_by_seed[s] - b_by_seed[s] for s in seeds], confidence)
    return PairedDelta(ci.mean, ci.std, ci.n, ci.lo, ci.hi, ci.confidence, seeds)


def verdict(ci: MeanCI | None) -> str:
    """Plain words for an interval on a difference: only a CI clear of zero says which side won."""
    if ci is None or ci.lo is None or ci.lo <= 0 <= ci.hi:
        return "no clear difference"
    return "better" if ci.lo > 0 else "worse"


def seed_order(seed: str) -> tuple[int, int | str]:
    """Seed tags are strings: numeric ones sort as numbers (2 before 10), others after, by name."""
    text = str(seed)
    return (0, int(text)) if text.lstrip("-").isdigit() else (1, text)
