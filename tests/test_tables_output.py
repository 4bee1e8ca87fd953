"""What `cmfnet tables` shows a reader: labels, marks, p-values, error texts, the command's options.

Written for the mutmut survivors of tables.py (issue 16): the committed reference results pin one
single-class table with a reference row; these cover the rest (several classes, one case, no
reference, the secondary table, the LaTeX marks on ties, the error messages and the CLI). Every
expected value is derived in the test from the hand-made input.
"""

from __future__ import annotations

import html.parser
import json
from pathlib import Path

import matplotlib.figure
import pandas as pd
import pytest

from cmfnet import cli
from cmfnet.errors import InputError
from cmfnet.evaluation.tables import write_tables


def rows_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def row(method: str, name: str, case: str, dsc: float, asd: float = 1.0, **extra: object) -> dict[str, object]:
    return {"method": method, "method_name": name, "fold": 0, "case": case, "class": "tumour",
            "dsc": dsc, "asd": asd, **extra}


# -- Markdown -------------------------------------------------------------------------------------
def test_one_case_one_fold_one_seed_shows_dashes_and_no_p_column_without_a_reference(tmp_path: Path) -> None:
    """One case: no std (shown 0.00), no CI, no spread over folds or seeds (–); no cmfnet row, so
    no p column. Breaks caught: the '–' of the spreads/CI, the NaN std shown as nan, a p column
    without a reference, the table title."""
    path = rows_csv(tmp_path / "a.csv", [row("a", "A", "c0", 0.5, 5.0, data="masks")])
    write_tables([path], tmp_path / "out")
    lines = (tmp_path / "out" / "table1.md").read_text().splitlines()
    assert lines[0] == "### table1"
    assert lines[2] == ("| Methods | Data | DSC (%) ↑ | ASD (mm) ↓ | DSC 95 % CI | cases | folds | "
                        "DSC spread over folds | seeds | DSC spread over seeds | rank per seed |")
    assert lines[3] == "|" + "---|" * 11
    assert lines[4] == "| A | masks | 50.00 ± 0.00 | 5.00 ± 0.00 | – | 1 | 1 | – | 1 | – | 1 |"
    table = pd.read_csv(tmp_path / "out" / "table1.csv")
    assert table["reference"].isna().all() and table["p_vs_reference"].isna().all()


def test_p_values_are_wilcoxon_against_the_reference_formatted_and_starred(tmp_path: Path) -> None:
    """Exact two-sided signed-rank p with all n differences of one sign is 2 / 2**n: n = 3 gives
    0.25 (no star), n = 6 gives 0.03125 (0.031 *), n = 11 gives 0.00098 (< 0.001 *); the reference
    row itself shows –. One comparison per table, so Holm leaves p as it is."""
    rows = []
    for table, n in (("table1", 6), ("table2", 11), ("table3", 3)):
        for i in range(n):
            case = f"{table}_c{i}"
            rows += [row("cmfnet", "CmFNet", case, 0.5 + 0.01 * (i + 1), table=table),
                     row("a", "A", case, 0.5, table=table)]
    write_tables([rows_csv(tmp_path / "m.csv", rows)], tmp_path / "out")
    expected = {"table1": "0.031 *", "table2": "< 0.001 *", "table3": "0.25"}
    for table, p in expected.items():
        lines = (tmp_path / "out" / f"{table}.md").read_text().splitlines()
        assert lines[2].endswith("| rank per seed | p vs CmFNet (Holm) |")
        assert lines[3] == "|" + "---|" * 12
        ours, theirs = (line for line in lines if line.startswith(("| CmFNet |", "| A |")))
        assert ours.endswith(" | – |") and theirs.endswith(f" | {p} |"), table
        csv = pd.read_csv(tmp_path / "out" / f"{table}.csv").set_index("method")
        assert csv.loc["a", "reference"] == "cmfnet"
    assert pd.read_csv(tmp_path / "out" / "table1.csv").set_index("method").loc["a", "p_holm"] == \
        pytest.approx(2 / 2 ** 6, abs=1e-4)


def test_multi_class_markdown_header_names_each_class_and_the_mean(tmp_path: Path) -> None:
    rows = [{**row("a", "A", f"c{i}", 0.5 + 0.1 * i), "class": cls} for i in range(2) for cls in ("gtv", "node")]
    write_tables([rows_csv(tmp_path / "a.csv", rows)], tmp_path / "out")
    header = (tmp_path / "out" / "table1.md").read_text().splitlines()[2]
    assert header.startswith("| Methods | Data | gtv DSC (%) ↑ | gtv ASD (mm) ↓ | node DSC (%) ↑ | node ASD (mm) ↓ "
                             "| mean DSC (%) ↑ | mean ASD (mm) ↓ | DSC 95 % CI |")


def test_secondary_metrics_table_has_its_own_header(tmp_path: Path) -> None:
    rows = [row("a", "A", f"c{i}", 0.5, assd=1.0, hd95=2.0, nsd=0.5) for i in range(2)]
    write_tables([rows_csv(tmp_path / "a.csv", rows)], tmp_path / "out")
    lines = (tmp_path / "out" / "table1.md").read_text().splitlines()
    start = lines.index("| Methods | ASSD (mm) ↓ | HD95 (mm) ↓ | NSD ↑ |")
    assert lines[start - 1] == "" and lines[start + 1] == "|---|---|---|---|"
    assert lines[start + 2] == "| A | 1.00 ± 0.00 | 2.00 ± 0.00 | 0.50 ± 0.00 |"
    assert lines[start + 3] == ""  # then the footnote


# -- HTML (what the Snakemake report shows) ------------------------------------------------------
class _Cells(html.parser.HTMLParser):
    """Every table of a page as rows of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell or []))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_html_page_holds_the_markdown_tables_cell_for_cell_escaped(tmp_path: Path) -> None:
    rows = [row(m, n, f"c{i}", d + 0.1 * i, assd=1.0, hd95=2.0, nsd=0.5)
            for m, n, d in (("cmfnet", "CmFNet", 0.5), ("b", "B<&>", 0.3)) for i in range(3)]
    write_tables([rows_csv(tmp_path / "a.csv", rows)], tmp_path / "out")
    page = (tmp_path / "out" / "table1.html").read_text()
    assert "B&lt;&amp;&gt;" in page and "<title>table1</title>" in page
    parser = _Cells()
    parser.feed(page)
    markdown = [[cell.strip() for cell in line.strip("|").split(" | ")]
                for line in (tmp_path / "out" / "table1.md").read_text().splitlines()
                if line.startswith("| ")]
    assert [r for t in parser.tables for r in t] == markdown  # both tables, same cells, same order
    assert [len(t) for t in parser.tables] == [3, 3]


# -- LaTeX ----------------------------------------------------------------------------------------
def test_latex_escapes_specials_and_names_each_class_in_the_header(tmp_path: Path) -> None:
    name = "A&B 50% $x #1 {y}_z X"
    rows = [{**row("a", name, f"c{i}", 0.5 + 0.2 * i, data="my_data"), "class": cls}
            for i in range(2) for cls in ("gross_tumour", "node")]
    write_tables([rows_csv(tmp_path / "a.csv", rows)], tmp_path / "out")
    lines = (tmp_path / "out" / "table1.tex").read_text().splitlines()
    assert lines[:3] == ["% table1", "\\begin{tabular}{llcccccc}", "\\toprule"]
    assert lines[3] == ("Methods & Data & gross\\_tumour DSC (\\%) & gross\\_tumour ASD (mm) & node DSC (\\%) & "
                        "node ASD (mm) & mean DSC (\\%) & mean ASD (mm) \\\\")
    assert lines[4] == "\\midrule"
    assert lines[5].startswith("A\\&B 50\\% \\$x \\#1 \\{y\\}\\_z X & my\\_data & ")
    assert lines[-2:] == ["\\bottomrule", "\\end{tabular}"]


def test_latex_ties_share_the_bold_and_a_single_value_is_bold_without_a_std(tmp_path: Path) -> None:
    """Two rows tied at the best DSC are both bold, the next one underlined; a one-case row has no
    std (0.00)."""
    rows = [row("a", "A", "c0", 0.8, 1.0), row("b", "B", "c0", 0.8, 2.0), row("c", "C", "c0", 0.7, 3.0)]
    write_tables([rows_csv(tmp_path / "m.csv", rows)], tmp_path / "out", order=["a", "b", "c"])
    lines = (tmp_path / "out" / "table1.tex").read_text().splitlines()
    a, b, c = (next(line for line in lines if line.startswith(p)) for p in ("A &", "B &", "C &"))
    assert "\\textbf{80.00 $\\pm$ 0.00}" in a and "\\textbf{80.00 $\\pm$ 0.00}" in b
    assert "\\underline{70.00 $\\pm$ 0.00}" in c
    assert "\\textbf{1.00 $\\pm$ 0.00}" in a and "\\underline{2.00 $\\pm$ 0.00}" in b


# -- collect: error texts and optional columns ----------------------------------------------------
@pytest.mark.parametrize("content, problem", [
    (b"", "cannot read metrics (EmptyDataError)"),
    (b"method,x\n1,2\n3,4,5,6,7\n", "cannot read metrics (ParserError)"),
    (b"method,x\n\xff\xfe,1\n", "cannot read metrics (UnicodeDecodeError)"),
    (b"method,method_name,fold,case,class,dsc\na,A,0,c0,t,0.5\n", "missing columns ['asd']"),
])
def test_unreadable_metrics_are_refused_naming_the_file(content: bytes, problem: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(InputError) as err:
        write_tables([path], tmp_path / "out")
    assert str(err.value) == f"{path}: {problem}"


def test_no_metric_files_and_mixed_datasets_are_refused_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="^metrics: no per-case metric CSVs found$"):
        write_tables([], tmp_path / "out")
    one = rows_csv(tmp_path / "m" / "1.csv", [row("a", "A", "c0", 0.5, dataset="y")])
    other = rows_csv(tmp_path / "m" / "2.csv", [row("a", "A", "c1", 0.5, dataset="x")])
    with pytest.raises(InputError) as err:
        write_tables([one, other], tmp_path / "out")
    assert str(err.value) == (f"{tmp_path / 'm'}: metrics of several datasets (x, y); choose one, "
                              "e.g. --results results/metrics/x")


def test_a_duplicate_is_reported_in_the_file_that_repeats_it(tmp_path: Path) -> None:
    first = rows_csv(tmp_path / "1.csv", [row("a", "A", "c0", 0.5, seed=3)])
    again = rows_csv(tmp_path / "2.csv", [row("a", "A", "c0", 0.6, seed=3)])
    with pytest.raises(InputError) as err:
        write_tables([first, again], tmp_path / "out")
    assert str(err.value) == f"{again}: duplicate rows for a seed 3 fold 0 case c0 class tumour"


def test_rows_without_table_seed_or_data_go_to_table1_seed_0(tmp_path: Path) -> None:
    """No `table` column, or an empty one, means table1; no `seed` column means one seed 0; no
    `data` column leaves the Data cell empty. Provenance lists tables, rows and methods."""
    plain = rows_csv(tmp_path / "1.csv", [row("b", "B", f"c{i}", 0.5 + 0.1 * i) for i in range(2)])
    tagged = rows_csv(tmp_path / "2.csv", [row("a", "A", "c0", 0.5, table=""), row("a", "A", "c1", 0.7, table="")])
    written = write_tables([plain, tagged], tmp_path / "out")
    out = tmp_path / "out"
    assert written == [out / "table1.csv", out / "table1.md", out / "table1.tex", out / "table1.html"]
    assert json.loads((out / "provenance.json").read_text()) == {"tables": ["table1"], "rows": 4,
                                                                 "methods": ["a", "b"]}
    table = pd.read_csv(out / "table1.csv", keep_default_na=False).set_index("method")
    assert table.loc["a", "seeds"] == 1 and table.loc["a", "seed"] == 0 and table.loc["a", "data"] == ""
    assert "| B |  | 55.00 ± 7.07 |" in (out / "table1.md").read_text()


def test_csv_keeps_four_decimals_and_joins_seeds_configs_and_versions(tmp_path: Path) -> None:
    rows = [row("a", "A", f"c{i}", v, seed=seed, config=cfg, cmfnet_version="0.3", data="scribbles")
            for seed, cfg in ((1, "c2"), (0, "c1")) for i, v in enumerate((0.1, 0.2, 0.4))]
    write_tables([rows_csv(tmp_path / "a.csv", rows)], tmp_path / "out", order=["nowhere", "a"])
    text = (tmp_path / "out" / "table1.csv").read_text()
    assert ",23.3333," in text  # 100 * (0.1 + 0.2 + 0.4) / 3 to four decimals
    table = pd.read_csv(tmp_path / "out" / "table1.csv", dtype=str).iloc[0]
    assert (table["seed"], table["config"], table["cmfnet_version"], table["seeds"]) == ("0;1", "c1;c2", "0.3", "2")


def test_an_order_names_only_known_methods_and_unlisted_ones_follow(tmp_path: Path) -> None:
    rows = [row(m, m.upper(), "c0", 0.5) for m in ("a", "b", "c")]
    write_tables([rows_csv(tmp_path / "m.csv", rows)], tmp_path / "out", order=["c", "zz", "a"])
    assert pd.read_csv(tmp_path / "out" / "table1.csv")["method"].tolist() == ["c", "a", "b"]


def test_sweep_tables_get_a_titled_figure_of_the_class_mean_and_others_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fig* table with two classes plots the per-case mean over classes; table1 gets no figure."""
    figures: list[matplotlib.figure.Figure] = []
    savefig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda self, *a, **k: (figures.append(self), savefig(self, *a, **k))[1])
    rows = [{**row(f"v{v}", f"w={v}", f"c{i}", d, table="fig6_x"), "class": cls}
            for v in range(2) for i in range(2) for cls, d in (("gtv", 0.2 * (v + 1)), ("node", 0.4))]
    rows += [row("a", "A", "c0", 0.5)]
    written = write_tables([rows_csv(tmp_path / "m.csv", rows)], tmp_path / "tables")
    figure_path = tmp_path / "figures" / "fig6_x.png"
    assert figure_path in written and figure_path.stat().st_size > 0
    assert not (tmp_path / "figures" / "table1.png").exists()
    (figure,) = figures
    assert figure._suptitle is not None and figure._suptitle.get_text() == "fig6_x"
    assert list(figure.axes[0].lines[0].get_ydata()) == pytest.approx([100 * (0.2 + 0.4) / 2, 100 * (0.4 + 0.4) / 2])
    md = (tmp_path / "tables" / "fig6_x.md").read_text()
    tex = (tmp_path / "tables" / "fig6_x.tex").read_text()
    assert md.startswith("### fig6_x\n") and tex.startswith("% fig6_x\n")


def test_a_sweep_with_heads_plots_one_line_per_head_over_the_same_points(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fig. 6's rows `<point>@<head>`: each head is its own line over the points, the ticks are
    the first head's names and the legend names the heads. Breaks caught: heads plotted as more
    points on one line, a head's values on another head's line, ticks from the wrong head."""
    figures: list[matplotlib.figure.Figure] = []
    savefig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda self, *a, **k: (figures.append(self), savefig(self, *a, **k))[1])
    dsc = {("v0", "mm"): 0.5, ("v1", "mm"): 0.6, ("v0", "ct"): 0.2, ("v1", "ct"): 0.3}
    rows = [row(f"fig6.{v}@{h}", f"w={v}" + ("" if h == "mm" else f" y_{h}"), f"c{i}", d, asd=10 * d,
                table="fig6_x") for (v, h), d in dsc.items() for i in range(2)]
    write_tables([rows_csv(tmp_path / "m.csv", rows)], tmp_path / "tables", order=[f"fig6.{v}@{h}" for v, h in dsc])
    (figure,) = figures
    dsc_axes, asd_axes = figure.axes
    lines = [container.lines[0] for container in dsc_axes.containers]
    assert [list(line.get_xdata()) for line in lines] == [[0, 1], [0, 1]]
    assert [list(line.get_ydata()) for line in lines] == [pytest.approx([50, 60]), pytest.approx([20, 30])]
    assert [list(c.lines[0].get_ydata()) for c in asd_axes.containers] == [pytest.approx([5, 6]), pytest.approx([2, 3])]
    assert [t.get_text() for t in dsc_axes.get_xticklabels()] == ["w=v0", "w=v1"]
    assert [t.get_text() for t in dsc_axes.get_legend().get_texts()] == ["head mm", "head ct"]


# -- the command ----------------------------------------------------------------------------------
def test_tables_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    """What `cmfnet tables --help` promises a user: where the CSVs are read, what each option does."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["tables", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in ("Read RESULTS/metrics/**/*.csv (or the given --metrics files) and write one table per table tag into OUT.",
                  "--results RESULTS results folder: reads every CSV under its metrics/",
                  "--metrics METRICS [METRICS ...] or: exactly these metrics CSVs",
                  "--out OUT output folder for the tables",
                  "--order ORDER comma-separated method ids: the row order of the tables",
                  "--reference REFERENCE method id every row is tested against (paired Wilcoxon, Holm); in a semi "
                  "table, a card id names its row at the table's fraction; none: no tests"):
        assert words in text
    overview = " ".join(cli.build_parser("tables").format_help().split())
    assert "tables aggregate per-case metrics into the paper's tables and figures (no retraining)" in overview


def test_tables_command_needs_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["tables", "--results", str(tmp_path)])
    assert exit_.value.code == 2 and "the following arguments are required: --out" in capsys.readouterr().err


def test_tables_command_reads_several_metrics_files_and_tests_against_cmfnet_by_default(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = [rows_csv(tmp_path / f"{m}.csv", [row(m, name, f"c{i}", 0.5 + 0.1 * i) for i in range(3)])
             for m, name in (("cmfnet", "CmFNet"), ("a", "A"))]
    assert cli.main(["tables", "--metrics", *map(str, files), "--out", str(tmp_path / "t")]) == 0
    printed = capsys.readouterr().out
    assert "p vs CmFNet (Holm)" in printed
    assert pd.read_csv(tmp_path / "t" / "table1.csv")["method"].tolist() == ["cmfnet", "a"]


def test_tables_command_refuses_mixed_datasets_given_as_files_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = rows_csv(tmp_path / "m" / "1.csv", [row("a", "A", "c0", 0.5, dataset="x")])
    other = rows_csv(tmp_path / "m" / "2.csv", [row("a", "A", "c1", 0.5, dataset="y")])
    assert cli.main(["tables", "--metrics", str(one), str(other), "--out", str(tmp_path / "t")]) == 2
    error = capsys.readouterr().err
    assert error.strip().count("\n") == 0 and f"{tmp_path / 'm'}: metrics of several datasets (x, y)" in error


# -- survivors of the 2026-12-04 re-run ------------------------------------------------------------
def test_two_sweep_tables_in_a_new_nested_folder_each_get_their_figure(tmp_path: Path) -> None:
    rows = [row(f"v{v}", f"w={v}", f"{tag}_c{i}", 0.3 + 0.1 * v + 0.05 * i, table=tag)
            for tag in ("fig6_a", "fig6_b") for v in range(2) for i in range(2)]
    out = tmp_path / "new" / "deeper" / "tables"
    written = write_tables([rows_csv(tmp_path / "m.csv", rows)], out)
    assert [p.name for p in written] == [f"{tag}.{ext}" for tag in ("fig6_a", "fig6_b")
                                         for ext in ("csv", "md", "tex", "html", "png")]
    assert all(p.is_file() for p in written) and (out.parent / "figures" / "fig6_b.png").is_file()


def test_three_methods_tied_in_a_seed_all_rank_first(tmp_path: Path) -> None:
    """Ranks are competition ranks ("min"): a three-way tie is 1, 1, 1, not the average 2."""
    rows = [row(m, m.upper(), "c0", 0.5) for m in ("a", "b", "c")]
    write_tables([rows_csv(tmp_path / "m.csv", rows)], tmp_path / "out")
    assert pd.read_csv(tmp_path / "out" / "table1.csv", dtype=str)["rank_by_seed"].tolist() == ["1", "1", "1"]


def test_an_empty_seed_cell_counts_as_seed_0(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    rows_csv(path, [row("a", "A", f"c{i}", 0.5, seed=0) for i in range(2)])
    path.write_text(path.read_text().replace(",0\n", ",\n"))  # the seed column, last, left empty
    assert pd.read_csv(path)["seed"].isna().all()
    write_tables([path], tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "table1.csv", dtype=str).iloc[0]
    assert (table["seed"], table["seeds"], table["rank_by_seed"]) == ("0", "1", "1")


def test_mixed_datasets_name_the_first_files_folder(tmp_path: Path) -> None:
    one = rows_csv(tmp_path / "x" / "1.csv", [row("a", "A", "c0", 0.5, dataset="x")])
    other = rows_csv(tmp_path / "y" / "2.csv", [row("a", "A", "c1", 0.5, dataset="y")])
    with pytest.raises(InputError, match=f"^{tmp_path / 'x'}: metrics of several datasets"):
        write_tables([one, other], tmp_path / "out")


def test_reference_none_drops_the_tests_even_with_a_cmfnet_row(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    files = [rows_csv(tmp_path / f"{m}.csv", [row(m, name, f"c{i}", 0.5 + 0.1 * i) for i in range(3)])
             for m, name in (("cmfnet", "CmFNet"), ("a", "A"))]
    assert cli.main(["tables", "--metrics", *map(str, files), "--out", str(tmp_path / "t"), "--reference", "none"]) == 0
    assert "p vs" not in capsys.readouterr().out
    assert pd.read_csv(tmp_path / "t" / "table1.csv")["p_vs_reference"].isna().all()


@pytest.mark.parametrize("args, message", [
    (["--results", "R", "--metrics", "R/x.csv"], "--results: give either --results DIR or --metrics FILE ..."),
    (["--results", "nowhere"], "nowhere: no such folder (give --results the folder that holds metrics/, e.g. "
                               "results, or one dataset's metrics, e.g. results/metrics/smoke-npc)"),
    (["--results", "R/empty"], "R/empty: no per-case metric CSVs found (searched **/*.csv in this folder)"),
])
def test_tables_command_errors_say_what_to_give(args: list[str], message: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "R" / "empty").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["tables", *args, "--out", "t"]) == 2
    assert capsys.readouterr().err.strip() == f"cmfnet tables: error: {message}"
    assert not (tmp_path / "t").exists()  # nothing half-written


def test_an_ablation_table_tests_against_the_row_that_reads_the_reference_model(tmp_path: Path) -> None:
    """Table VI's full row has another method id than CmFNet but the same trained models (config
    hashes): it becomes the table's reference; a table with no such single row gets no tests."""
    full = [0.6, 0.7, 0.8, 0.5, 0.65, 0.75]
    rows = [row("cmfnet", "CmFNet", f"c{i}", d, config="h-full") for i, d in enumerate(full)]
    rows += [row("t6.full", "Full", f"c{i}", d, config="h-full", table="table6") for i, d in enumerate(full)]
    rows += [row("t6.mfl", "MFL", f"c{i}", d - 0.2, config="h-mfl", table="table6") for i, d in enumerate(full)]
    rows += [row(m, m, f"c{i}", d, config="h-other", table="table9") for m in ("x", "y") for i, d in enumerate(full)]
    write_tables([rows_csv(tmp_path / "m.csv", rows)], tmp_path / "out")
    table6 = pd.read_csv(tmp_path / "out" / "table6.csv").set_index("method")
    assert set(table6["reference"]) == {"t6.full"}
    assert table6.loc["t6.mfl", "p_vs_reference"] == pytest.approx(2 / 2**6, abs=1e-4)  # 6 of 6 lower (CSV: 4 decimals)
    assert "p vs Full (Holm)" in (tmp_path / "out" / "table6.md").read_text()
    table9 = pd.read_csv(tmp_path / "out" / "table9.csv")
    assert table9["reference"].isna().all() and "p vs" not in (tmp_path / "out" / "table9.md").read_text()
