"""Statistics the tables report beyond mean ± std: a bootstrap CI of the mean and paired tests.

Rows of a table are compared with a reference row (CmFNet by default) on the same units
(seed x fold x test case), with a two-sided Wilcoxon signed-rank test per row and Holm's
step-down correction over the rows of the table, so that "differs from the reference" holds at
the stated family-wise level. Deterministic: the bootstrap uses a fixed seed, so regenerating a
table from the same metrics gives the same bytes.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0


def bootstrap_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (nan, nan for fewer than 2 values)."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = values[rng.integers(0, values.size, (BOOTSTRAP_SAMPLES, values.size))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def paired_wilcoxon(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired samples; 1.0 when they never differ."""
    difference = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if difference.size == 0:
        return float("nan")
    if not np.any(difference):
        return 1.0
    return float(stats.wilcoxon(difference, zero_method="wilcox", alternative="two-sided").pvalue)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (nan entries are left out and stay nan)."""
    index = [i for i, p in enumerate(pvalues) if not np.isnan(p)]
    ordered = sorted(index, key=lambda i: pvalues[i])
    adjusted = [float("nan")] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(ordered):
        running = max(running, min(1.0, (len(ordered) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
