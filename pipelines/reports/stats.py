"""Means with Student-t confidence intervals, paired differences over shared seeds, and the paired
bootstrap over test examples that a verdict reads.

A comparison has a handful of seeds per arm, so a normal-approximation interval would be too narrow:
the t quantile with n−1 degrees of freedom widens it honestly. With one value the spread is unknown,
so std and the interval are None rather than a misleading 0. Every arm of a comparison is tested on
the same images, so the difference between two arms is also known image by image: a bootstrap over
those (nested within seeds) gives an interval even with one seed."""

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

    @property
    def interval(self) -> tuple[float | None, float | None]:
        """The interval a verdict reads."""
        return self.lo, self.hi


@dataclass(frozen=True)
class BootstrapCI:
    """A paired difference a − b in accuracy over test examples, nested within seeds when there are
    several: the percentile interval of `resamples` bootstrap means, and with one seed McNemar's exact
    p-value on the discordant pairs (images one arm gets right and the other wrong)."""

    mean: float
    lo: float
    hi: float
    seeds: int
    examples: int  # test images per seed
    resamples: int
    mcnemar_p: float | None  # one seed only
    confidence: float = 0.95

    @property
    def covers(self) -> str:
        """What the interval's randomness covers, for the table beside it."""
        return (f"test examples and {self.seeds} seeds" if self.seeds > 1
                else "test examples only: 1 seed")


@dataclass(frozen=True)
class PairedDelta(MeanCI):
    """a − b seed by seed, then summarised. Paired because both arms of a seed share its split, its
    initialisation of the head and its data order: the seed-to-seed noise cancels in the difference,
    so the interval is far tighter than comparing two independent means would allow. With per-example
    outcomes, `bootstrap` is the interval over test examples too, and the verdict reads it."""

    seeds: tuple[str, ...] = ()
    bootstrap: BootstrapCI | None = None

    @property
    def interval(self) -> tuple[float | None, float | None]:
        return (self.bootstrap.lo, self.bootstrap.hi) if self.bootstrap else (self.lo, self.hi)

    @property
    def exact_test_agrees(self) -> bool:
        """With one seed, McNemar's p is below 1 − confidence too (with several there is no such test)."""
        boot = self.bootstrap
        return boot is None or boot.mcnemar_p is None or boot.mcnemar_p < 1 - boot.confidence

    @property
    def covers(self) -> str:
        if self.bootstrap:
            return self.bootstrap.covers
        return f"{self.n} seeds (t)" if self.lo is not None else "1 seed, no per-example outcomes"


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
    """Plain words for an interval on a difference: only a CI clear of zero says which side won (and, with
    one seed, McNemar's exact test too: the percentile bootstrap is optimistic when few images differ)."""
    lo, hi = ci.interval if ci is not None else (None, None)
    if lo is None or lo <= 0 <= hi or not getattr(ci, "exact_test_agrees", True):
        return "no clear difference"
    return "better" if lo > 0 else "worse"


def paired_bootstrap(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], confidence: float = 0.95,
                     resamples: int = 2000, seed: int = 0, seeds: tuple[str, ...] | None = None) -> BootstrapCI | None:
    """a − b in accuracy from per-example outcomes (seed → booleans, one per test image, in the split's
    order) over `seeds` (default: every seed both ran); None unless both sides hold outcomes of one length
    for each of them. Every seed of a comparison is tested on the same images, so a resample draws the
    images once, for every seed alike, then resamples the seeds. Images with the same outcomes across the
    seeds are interchangeable: a resample draws how many of each such pattern (one multinomial) instead of
    N indices. With one seed this is scipy.stats.bootstrap(paired=True, method="percentile")."""
    seeds = tuple(sorted(set(a) & set(b), key=seed_order)) if seeds is None else tuple(seeds)
    if not seeds or any(s not in a or s not in b for s in seeds):
        return None
    n = len(a[seeds[0]])
    if n == 0 or any(len(a[s]) != n or len(b[s]) != n for s in seeds):
        return None
    diff = np.stack([np.asarray(a[s], bool).astype(np.int8) - np.asarray(b[s], bool).astype(np.int8)
                     for s in seeds])  # seeds × images: 1 a right and b wrong, -1 the reverse, 0 a tie
    # each image's pattern across the seeds as one base-3 number (np.unique over columns is far slower)
    codes, counts = np.unique(((diff + 1).astype(np.int64) * 3 ** np.arange(len(seeds))[:, None]).sum(0),
                              return_counts=True)
    patterns = (codes // 3 ** np.arange(len(seeds))[:, None]) % 3 - 1  # seeds × patterns, back in {-1, 0, 1}
    rng = np.random.default_rng(seed)
    per_seed = rng.multinomial(n, counts / n, size=resamples) @ patterns.T / n  # resamples × seeds
    pick = rng.integers(0, len(seeds), size=(resamples, len(seeds)))  # one seed: always that seed
    means = np.take_along_axis(per_seed, pick, axis=1).mean(axis=1)
    lo, hi = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    mcnemar = None
    if len(seeds) == 1:  # exact: under "no difference" each discordant image is a fair coin
        wins, losses = int(np.count_nonzero(diff[0] == 1)), int(np.count_nonzero(diff[0] == -1))
        mcnemar = float(stats.binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else 1.0
    return BootstrapCI(float(diff.mean()), float(lo), float(hi), len(seeds), n, resamples, mcnemar, confidence)


def seed_order(seed: str) -> tuple[int, int | str]:
    """Seed tags are strings: numeric ones sort as numbers (2 before 10), others after, by name."""
    text = str(seed)
    return (0, int(text)) if text.lstrip("-").isdigit() else (1, text)
