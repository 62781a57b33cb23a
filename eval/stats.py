"""Paired statistics of a method against a baseline over a few units (DAVIS sequences): pure functions, no I/O.

Each unit (sequence) gives one paired difference d_i = method_i - baseline_i. Reported per method and metric:

- the mean difference with a seeded percentile-bootstrap 95% interval over the units (units resampled with
  replacement, :func:`bootstrap_ci`);
- how many units improve, worsen, tie (:func:`sign_counts`);
- the paired sign-flip permutation test (:func:`sign_flip_p`): under "no effect" each d_i is as likely to be
  -d_i, so the p-value is the share of the 2^n sign patterns whose |mean| is at least the observed one,
  computed exactly for n <= 20;
- the two-sided exact sign test on the non-zero differences (:func:`sign_test_p`).

:func:`verdict` turns an interval into words: an interval that contains 0 is "no measurable effect", never a
gain or a loss; one that excludes 0 is a gain or loss only when the exact sign-flip test agrees (p < 0.05). With ten units these are indications, not findings: the interval is wide and the smallest
possible sign-flip p-value is 2/1024.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

#: ties: |d| at or below this counts as neither better nor worse (the scores are rounded to ~1e-6)
TIE = 1e-9
EXACT_MAX_UNITS = 20


def paired_differences(method: Sequence[float], baseline: Sequence[float]) -> np.ndarray:
    """method - baseline per unit; both must list the same units in the same order."""
    m, b = np.asarray(method, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if m.shape != b.shape or m.ndim != 1:
        raise ValueError(f"paired values need equal 1-d shapes, got {m.shape} and {b.shape}")
    if not (np.isfinite(m).all() and np.isfinite(b).all()):
        raise ValueError("paired values must be finite (a sequence without a score cannot be paired)")
    return m - b


def bootstrap_ci(
    diffs: Sequence[float], n_boot: int = 10000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs`` (units resampled with replacement, seeded)."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        raise ValueError("no differences to bootstrap")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def sign_counts(diffs: Sequence[float], tie: float = TIE) -> tuple[int, int, int]:
    """(improved, worse, tied) units."""
    d = np.asarray(diffs, dtype=np.float64)
    return int((d > tie).sum()), int((d < -tie).sum()), int((np.abs(d) <= tie).sum())


def sign_flip_p(diffs: Sequence[float]) -> float:
    """Two-sided exact paired permutation p-value: the share of the 2^n sign flips of ``diffs`` whose |mean| is
    at least the observed |mean|. The observed pattern and its mirror image always count, so p >= 2 / 2^n."""
    d = np.asarray(diffs, dtype=np.float64)
    n = d.size
    if n == 0:
        raise ValueError("no differences to test")
    if n > EXACT_MAX_UNITS:
        raise ValueError(f"{n} units: the exact test enumerates 2^n sign patterns; at most {EXACT_MAX_UNITS}")
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))  # [2^n, n]
    sums = np.abs(signs @ d)
    observed = abs(d.sum())
    return float((sums >= observed - 1e-12 * max(1.0, observed)).mean())


def sign_test_p(diffs: Sequence[float], tie: float = TIE) -> float:
    """Two-sided exact sign test (binomial, p = 1/2) on the units that are not ties; 1.0 when all tie."""
    up, down, _ = sign_counts(diffs, tie)
    n, k = up + down, min(up, down)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return float(min(1.0, 2.0 * tail))


def verdict(lo: float, hi: float, p: float = 0.0, alpha: float = 0.05) -> str:
    """The interval in words: "no measurable effect" when it contains 0; "gain" / "loss" when it excludes 0 and
    the exact test agrees (``p`` < ``alpha``); otherwise "uncertain": the percentile bootstrap over ten units
    is known to be too narrow, so an interval that just excludes 0 while the exact test does not reject is not
    called a gain or a loss."""
    if lo <= 0 <= hi:
        return "no measurable effect"
    if p >= alpha:
        return f"uncertain (interval excludes 0, exact p = {p:.2f})"
    return "gain" if lo > 0 else "loss"


@dataclass(frozen=True)
class PairedSummary:
    n: int
    mean: float
    ci_low: float
    ci_high: float
    improved: int
    worse: int
    tied: int
    p_sign_flip: float
    p_sign_test: float
    verdict: str

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(diffs: Sequence[float], n_boot: int = 10000, seed: int = 0) -> PairedSummary:
    """Every statistic above for one method and metric."""
    d = np.asarray(diffs, dtype=np.float64)
    lo, hi = bootstrap_ci(d, n_boot=n_boot, seed=seed)
    up, down, tied = sign_counts(d)
    return PairedSummary(
        n=int(d.size),
        mean=float(d.mean()),
        ci_low=lo,
        ci_high=hi,
        improved=up,
        worse=down,
        tied=tied,
        p_sign_flip=sign_flip_p(d),
        p_sign_test=sign_test_p(d),
        verdict=verdict(lo, hi, sign_flip_p(d)),
    )


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman's rank correlation and its two-sided p-value (scipy); NaN when either side is constant."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    result = spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)
