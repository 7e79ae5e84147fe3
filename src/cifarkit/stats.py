"""The statistics of runs over seeds: mean, standard deviation and a 95% t-interval (`describe`: a seed
summary's figures and a comparison's variants), and paired tests of a variant against a reference (Wilcoxon
signed-rank, as in the ELU paper, with the paired t-test beside it). scipy does the tests; the interval is
written out so that it can be checked by hand. Below training and the experiments, which both use it."""

from __future__ import annotations

import math

import numpy as np


def describe(values: list[float]) -> dict:
    """n, mean, sample standard deviation and the 95% t-interval of the mean (None where n < 2)."""
    from scipy import stats

    array = np.asarray([v for v in values if v is not None], dtype=np.float64)
    n = len(array)
    out = {"n": n, "mean": float(array.mean()) if n else None, "std": None, "ci95": None}
    if n >= 2:
        std = float(array.std(ddof=1))
        half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
        out.update(std=std, ci95=[out["mean"] - half, out["mean"] + half])
    return out


def paired_tests(reference: list[float | None], other: list[float | None]) -> dict:
    """Tests of `other` against `reference` on the seeds both have (pairs where either is None are dropped).

    Two-sided p-values. Where every difference is zero the two variants are indistinguishable: both p-values
    are 1. Where a test is undefined (fewer than 2 pairs; the t-test when all differences are equal) it is None.
    """
    from scipy import stats

    pairs = [(a, b) for a, b in zip(reference, other, strict=True) if a is not None and b is not None]
    out: dict = {"pairs": len(pairs), "mean_difference": None, "wilcoxon_p": None, "t_p": None}
    if not pairs:
        return out
    a, b = (np.asarray(x, dtype=np.float64) for x in zip(*pairs, strict=True))
    diff = b - a
    out["mean_difference"] = float(diff.mean())
    if len(pairs) < 2:
        return out
    if np.all(diff == 0):
        out.update(wilcoxon_p=1.0, t_p=1.0)
        return out
    out["wilcoxon_p"] = float(stats.wilcoxon(b, a).pvalue)
    if np.ptp(diff) > 0:
        out["t_p"] = float(stats.ttest_rel(b, a).pvalue)
    return out


def mean_std_text(summary: dict, digits: int = 4) -> str:
    """`describe`'s figures as text: "0.6523 +- 0.0030", or "0.6523 (1 run)" where there is no spread."""
    if summary["std"] is None:
        return f"{summary['mean']:.{digits}f} ({summary['n']} run)"
    return f"{summary['mean']:.{digits}f} +- {summary['std']:.{digits}f}"
