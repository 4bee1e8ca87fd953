"""The tables' statistics by value: Holm's correction, the paired Wilcoxon test, the bootstrap CI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cmfnet.evaluation.statistics import bootstrap_ci, holm, paired_wilcoxon
from cmfnet.evaluation.tables import write_tables


def test_holm_multiplies_by_the_remaining_count_and_keeps_the_order() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, float("nan"), 0.9]) == pytest.approx([1.0, float("nan"), 1.0], nan_ok=True)


def test_wilcoxon_of_six_positive_differences_is_the_exact_two_sided_value() -> None:
    """All six differences positive and distinct: the exact two-sided p is 2 / 2**6."""
    a = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    b = a - np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
    assert paired_wilcoxon(a, b) == pytest.approx(2 / 64)
    assert paired_wilcoxon(a, a) == 1.0


def test_bootstrap_ci_brackets_the_mean_and_is_reproducible() -> None:
    values = np.random.default_rng(3).uniform(0, 1, 40)
    low, high = bootstrap_ci(values)
    assert low < values.mean() < high and (low, high) == bootstrap_ci(values)
    half_width = 1.96 * values.std(ddof=1) / np.sqrt(values.size)  # normal approximation
    assert high - low == pytest.approx(2 * half_width, rel=0.15)
    assert np.isnan(bootstrap_ci(np.array([0.5]))[0])


def test_table_tests_each_row_against_the_reference_on_the_same_cases(tmp_path: Path) -> None:
    """Row a beats the reference on all 6 cases (p = 1/32 before Holm), row b equals it (p = 1)."""
    ref = [0.3, 0.5, 0.4, 0.6, 0.2, 0.7]
    scores = {"cmfnet": ref, "a": [v + 0.1 + 0.01 * i for i, v in enumerate(ref)], "b": ref}
    rows = [{"method": m, "method_name": m.upper(), "data": "scribbles", "fold": i % 3, "case": f"c{i}",
             "class": "tumour", "dsc": v, "asd": 1.0, "seed": 0}
            for m, values in scores.items() for i, v in enumerate(values)]
    path = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    write_tables([path], tmp_path / "out", order=["a", "b", "cmfnet"])
    table = pd.read_csv(tmp_path / "out" / "table1.csv").set_index("method")
    assert table.loc["a", "p_vs_reference"] == pytest.approx(2 / 64, abs=1e-4)
    assert table.loc["a", "p_holm"] == pytest.approx(2 * 2 / 64, abs=1e-4)  # two rows tested
    assert table.loc["b", "p_vs_reference"] == 1.0 and np.isnan(table.loc["cmfnet", "p_vs_reference"])
    markdown = (tmp_path / "out" / "table1.md").read_text()
    assert "p vs CMFNET (Holm)" in markdown and "| 0.062 |" in markdown
    write_tables([path], tmp_path / "plain", reference=None)
    assert "p vs" not in (tmp_path / "plain" / "table1.md").read_text()
