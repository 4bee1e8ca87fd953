"""Tables are aggregated from stored per-case rows only."""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib.figure
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from cmfnet import cli
from cmfnet.errors import InputError
from cmfnet.evaluation.tables import write_tables


def metrics_csv(path: Path, method: str, name: str, dsc: list[float], dataset: str = "d",
                table: str = "table1") -> Path:
    rows = [{"dataset": dataset, "method": method, "method_name": name, "table": table, "data": "scribbles",
             "fold": i % 2, "case": f"c{i}", "class": "tumour", "dsc": v, "asd": 10 * (1 - v), "seed": 0}
            for i, v in enumerate(dsc)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_table_is_mean_and_std_over_cases_in_the_given_order(tmp_path: Path) -> None:
    files = [metrics_csv(tmp_path / "m" / "a.csv", "a", "A", [0.5, 0.7, 0.9]),
             metrics_csv(tmp_path / "m" / "b.csv", "b", "B", [0.2, 0.4])]
    write_tables(files, tmp_path / "out", order=["b", "a"])
    table = pd.read_csv(tmp_path / "out" / "table1.csv")
    assert table["name"].tolist() == ["B", "A"]
    a = table.set_index("name").loc["A"]
    assert a["dsc_mean"] == pytest.approx(70.0) and a["dsc_std"] == pytest.approx(20.0)
    assert a["asd_mean"] == pytest.approx(3.0) and a["cases"] == 3 and a["folds"] == 2
    assert "70.00 ± 20.00" in (tmp_path / "out" / "table1.md").read_text()


def test_a_row_tagged_with_several_tables_fills_each_of_them(tmp_path: Path) -> None:
    """FullySup's rows in the semi-supervised track say table1;semi_10;semi_20 (the upper bound of
    each fraction's table): one metrics file, three tables."""
    both = "table1;semi_10;semi_20"
    files = [metrics_csv(tmp_path / "m" / "full.csv", "fullysup", "FullySup", [0.8, 0.9], table=both),
             metrics_csv(tmp_path / "m" / "s10.csv", "sup+0.1", "SupOnly", [0.3, 0.5], table="semi_10"),
             metrics_csv(tmp_path / "m" / "s20.csv", "sup+0.2", "SupOnly", [0.5, 0.6], table="semi_20")]
    write_tables(files, tmp_path / "out")
    tables = {name: pd.read_csv(tmp_path / "out" / f"{name}.csv") for name in ("table1", "semi_10", "semi_20")}
    assert tables["table1"]["method"].tolist() == ["fullysup"]
    assert tables["semi_10"]["method"].tolist() == ["fullysup", "sup+0.1"]
    assert tables["semi_20"]["method"].tolist() == ["fullysup", "sup+0.2"]
    assert tables["semi_20"].set_index("method").loc["fullysup", "dsc_mean"] == pytest.approx(85.0)


def test_a_card_as_reference_names_its_row_at_each_semi_tables_fraction(tmp_path: Path) -> None:
    """--reference semi_smms tests semi_10's rows against semi_smms+0.1 and semi_20's against +0.2."""
    files = [metrics_csv(tmp_path / "m" / "full.csv", "fullysup", "FullySup", [0.9] * 6, table="semi_10;semi_20"),
             metrics_csv(tmp_path / "m" / "s10.csv", "semi_smms+0.1", "SMMS", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                         table="semi_10"),
             metrics_csv(tmp_path / "m" / "s20.csv", "semi_smms+0.2", "SMMS", [0.9] * 6, table="semi_20")]
    write_tables(files, tmp_path / "out", reference="semi_smms")
    ten = pd.read_csv(tmp_path / "out" / "semi_10.csv").set_index("method")
    twenty = pd.read_csv(tmp_path / "out" / "semi_20.csv").set_index("method")
    assert ten["reference"].iloc[0] == "semi_smms+0.1" and twenty["reference"].iloc[0] == "semi_smms+0.2"
    assert ten.loc["fullysup", "p_vs_reference"] < 0.05  # 0.9 above every one of six paired cases
    assert twenty.loc["fullysup", "p_vs_reference"] == 1.0  # paired with +0.2, which never differs


@pytest.mark.filterwarnings("error")
def test_metrics_with_an_empty_table_column_fill_table1(tmp_path: Path) -> None:
    """Metrics written before rows named their table (an empty column, read as float) go to Table I."""
    path = metrics_csv(tmp_path / "m" / "a.csv", "a", "A", [0.5, 0.7], table="")
    write_tables([path], tmp_path / "out")
    assert pd.read_csv(tmp_path / "out" / "table1.csv")["method"].tolist() == ["a"]


def test_seeds_are_averaged_per_case_and_their_spread_and_ranks_are_reported(tmp_path: Path) -> None:
    """Two seeds: a case's DSC is its mean over seeds before the spread over cases; the seed spread
    is the std of the per-seed means; ranks are per seed (A wins seed 0, B wins seed 1)."""
    scores = {("a", 0): [0.8, 0.6, 0.7], ("a", 1): [0.2, 0.4, 0.3], ("b", 0): [0.5, 0.5, 0.5], ("b", 1): [0.5, 0.5, 0.5]}
    rows = [{"method": m, "method_name": m.upper(), "data": "scribbles", "fold": i % 2, "case": f"c{i}",
             "class": "tumour", "dsc": v, "asd": 1.0, "seed": seed}
            for (m, seed), values in scores.items() for i, v in enumerate(values)]
    path = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    write_tables([path], tmp_path / "out", order=["a", "b"])
    a, b = (row for _, row in pd.read_csv(tmp_path / "out" / "table1.csv").iterrows())
    per_case = [statistics.mean(pair) for pair in zip(scores[("a", 0)], scores[("a", 1)])]
    assert a["dsc_mean"] == pytest.approx(100 * statistics.mean(per_case))
    assert a["dsc_std"] == pytest.approx(100 * statistics.stdev(per_case))
    assert a["seeds"] == 2 and a["seed_dsc_std"] == pytest.approx(100 * statistics.stdev([0.7, 0.3]), abs=1e-3)
    assert b["seed_dsc_std"] == pytest.approx(0.0)
    assert a["rank_by_seed"] == "1,2" and b["rank_by_seed"] == "2,1"
    assert "| 2 | ± 28.28 | 1,2 |" in (tmp_path / "out" / "table1.md").read_text()


def test_a_row_repeated_within_one_seed_is_refused(tmp_path: Path) -> None:
    path = metrics_csv(tmp_path / "a.csv", "a", "A", [0.5, 0.7])
    frame = pd.read_csv(path)
    pd.concat([frame, frame.assign(seed=1), frame.iloc[:1]]).to_csv(path, index=False)
    with pytest.raises(InputError, match="duplicate rows for a seed 0 fold 0 case c0"):
        write_tables([path], tmp_path / "out")


def test_multi_class_table_gives_each_class_and_the_per_case_mean_over_classes(tmp_path: Path) -> None:
    dsc = {"tumour": [0.5, 0.7, 0.9, 0.6], "node": [0.1, 0.4, 0.2, 0.9]}
    rows = [{"method": "a", "method_name": "A", "data": "scribbles", "fold": i % 2, "case": f"c{i}",
             "class": cls, "dsc": values[i], "asd": 2.0 + 3 * values[i] ** 2}
            for cls, values in dsc.items() for i in range(4)]
    path = tmp_path / "a.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    write_tables([path], tmp_path / "out")
    row = pd.read_csv(tmp_path / "out" / "table1.csv").iloc[0]
    asd = {cls: [2.0 + 3 * v ** 2 for v in values] for cls, values in dsc.items()}
    for cls in dsc:
        assert row[f"{cls}_dsc_mean"] == pytest.approx(100 * statistics.mean(dsc[cls]), abs=1e-3)
        assert row[f"{cls}_dsc_std"] == pytest.approx(100 * statistics.stdev(dsc[cls]), abs=1e-3)  # n - 1
        assert row[f"{cls}_asd_mean"] == pytest.approx(statistics.mean(asd[cls]), abs=1e-3)
        assert row[f"{cls}_asd_std"] == pytest.approx(statistics.stdev(asd[cls]), abs=1e-3)
    case_dsc = [statistics.mean(pair) for pair in zip(*dsc.values())]
    case_asd = [statistics.mean(pair) for pair in zip(*asd.values())]
    assert row["mean_dsc_mean"] == pytest.approx(100 * statistics.mean(case_dsc), abs=1e-3)
    assert row["mean_dsc_std"] == pytest.approx(100 * statistics.stdev(case_dsc), abs=1e-3)
    assert row["mean_asd_mean"] == pytest.approx(statistics.mean(case_asd), abs=1e-3)
    assert row["mean_asd_std"] == pytest.approx(statistics.stdev(case_asd), abs=1e-3)
    assert (row["cases"], row["folds"]) == (4, 2)
    markdown = (tmp_path / "out" / "table1.md").read_text()
    assert f"{100 * statistics.mean(case_dsc):.2f} ± {100 * statistics.stdev(case_dsc):.2f}" in markdown
    assert "node DSC (%)" in markdown and "mean DSC (%)" in markdown


def test_sweep_figure_plots_each_variants_mean_and_std(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The figure shows the table: one point per variant in table order, error bars = std."""
    figures: list[matplotlib.figure.Figure] = []
    savefig = matplotlib.figure.Figure.savefig

    def keep(self: matplotlib.figure.Figure, *args: object, **kwargs: object) -> None:
        figures.append(self)
        savefig(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    dsc = {v: [0.3 + v / 10, 0.6, 0.2 + v / 5] for v in range(3)}
    files = [metrics_csv(tmp_path / f"{v}.csv", f"fig6.{v}", f"w={v}", values, table="fig6_x")
             for v, values in dsc.items()]
    write_tables(files, tmp_path / "tables")
    png = plt.imread(tmp_path / "figures" / "fig6_x.png")
    assert png.ndim == 3 and png.shape[0] > 100 and png[..., :3].std() > 0  # a real, non-blank image
    (figure,) = figures
    dsc_axis, asd_axis = figure.axes
    assert [t.get_text() for t in dsc_axis.get_xticklabels()] == ["w=0", "w=1", "w=2"]
    assert dsc_axis.get_ylabel() == "DSC (%)" and asd_axis.get_ylabel() == "ASD (mm)"
    means = [100 * statistics.mean(values) for values in dsc.values()]
    stds = [100 * statistics.stdev(values) for values in dsc.values()]
    np.testing.assert_allclose(np.asarray(dsc_axis.lines[0].get_ydata(), float), means, rtol=1e-6)
    bars = dsc_axis.collections[0].get_segments()  # one vertical segment per point: mean -+ std
    np.testing.assert_allclose([b[1][1] - b[0][1] for b in bars], [2 * s for s in stds], rtol=1e-6)
    asd_means = [statistics.mean(10 * (1 - v) for v in values) for values in dsc.values()]
    np.testing.assert_allclose(np.asarray(asd_axis.lines[0].get_ydata(), float), asd_means, rtol=1e-6)


def test_mixed_datasets_and_duplicates_are_refused(tmp_path: Path) -> None:
    one = metrics_csv(tmp_path / "1.csv", "a", "A", [0.5], dataset="x")
    other = metrics_csv(tmp_path / "2.csv", "a", "A", [0.5], dataset="y")
    with pytest.raises(InputError, match="several datasets"):
        write_tables([one, other], tmp_path / "out")
    twin = metrics_csv(tmp_path / "3.csv", "a", "A", [0.5], dataset="x")
    with pytest.raises(InputError, match="duplicate"):
        write_tables([one, twin], tmp_path / "out")


def test_latex_table_bolds_the_best_and_underlines_the_second_in_each_column(tmp_path: Path) -> None:
    """DSC: higher is better; ASD: lower is better (metrics_csv sets ASD = 10 * (1 - DSC), so the
    two columns rank the rows the same way round)."""
    files = [metrics_csv(tmp_path / "m" / f"{m}.csv", m, name, dsc)
             for m, name, dsc in (("a", "A_1", [0.5, 0.7]), ("b", "B", [0.8, 0.9]), ("c", "C", [0.1, 0.2]))]
    write_tables(files, tmp_path / "out", order=["a", "b", "c"])
    lines = (tmp_path / "out" / "table1.tex").read_text().splitlines()
    a, b, c = (next(line for line in lines if line.startswith(prefix)) for prefix in ("A\\_1 &", "B &", "C &"))
    assert b.count("\\textbf{") == 2 and a.count("\\underline{") == 2
    assert "\\textbf" not in c and "\\underline" not in c and "\\textbf" not in a
    assert "\\textbf{85.00 $\\pm$ 7.07}" in b and "\\underline{4.00 $\\pm$ 1.41}" in a


def test_secondary_metrics_are_the_mean_over_classes_per_case(tmp_path: Path) -> None:
    rows = [{"method": "a", "method_name": "A", "data": "masks", "fold": 0, "case": f"c{i}", "class": cls,
             "dsc": 0.5, "asd": 1.0, "assd": 1.0 + i + k, "hd95": 2.0, "nsd": 0.1 * (i + 1) + 0.2 * k}
            for i in range(3) for k, cls in enumerate(("x", "y"))]
    path = tmp_path / "a.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    write_tables([path], tmp_path / "out")
    row = pd.read_csv(tmp_path / "out" / "table1.csv").iloc[0]
    assert row["assd_mean"] == pytest.approx(2.5) and row["assd_std"] == pytest.approx(1.0)
    assert row["nsd_mean"] == pytest.approx(0.3) and row["nsd_std"] == pytest.approx(0.1)
    assert "| A | 2.50 ± 1.00 | 2.00 ± 0.00 | 0.30 ± 0.10 |" in (tmp_path / "out" / "table1.md").read_text()


def test_tables_command_reads_results_metrics_and_prints_table1(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`cmfnet tables --results R` finds R/metrics/**, honours --order and --reference none, and
    prints Table I; the mutation run showed the command itself was untested."""
    metrics_csv(tmp_path / "results" / "metrics" / "d" / "a.csv", "a", "A", [0.5, 0.7])
    metrics_csv(tmp_path / "results" / "metrics" / "d" / "b.csv", "b", "B", [0.2, 0.4])
    assert cli.main(["tables", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "t"),
                     "--order", "b,a", "--reference", "none"]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "t" / "table1.csv")
    assert table["name"].tolist() == ["B", "A"]
    assert table["p_vs_reference"].isna().all()
    assert f"wrote {tmp_path / 't' / 'table1.tex'}" in printed and "60.00 ± 14.14" in printed
