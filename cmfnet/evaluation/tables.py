"""Aggregate stored per-case metrics into the paper's tables and ablation figures.

Reads every ``metrics/**/*.csv`` under a results folder (one row per method x fold x case x
class, as ``cmfnet evaluate`` writes them) and writes, per table tag (``table1`` for the main
comparison, ``table3``... for cards or variant files that name a table; a row tagged
``table1;semi_10`` fills both, as FullySup does as the semi tables' upper bound):

- ``<table>.csv``: one row per method with n cases, folds, and mean and std of DSC (%) and ASD (mm)
  per class (and their mean over classes when there are several);
- ``<table>.md``: the same as "mean ± std" in the paper's layout, with CI, spreads and tests;
- ``<table>.tex``: the paper's layout for LaTeX (booktabs), best in bold, second underlined;
- ``<table>.html``: the Markdown table as a page, for ``snakemake --report``;
- ``figures/<table>.png`` for sweep tables (``fig*``): DSC and ASD against the swept variant.

Nothing is retrained: editing this module or re-running ``cmfnet tables`` only re-reads the CSVs.
"""

from __future__ import annotations

import argparse
import html
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from cmfnet.errors import InputError  # noqa: E402
from cmfnet.data.io import atomic_path, write_json  # noqa: E402
from cmfnet.evaluation.statistics import bootstrap_ci, holm, paired_wilcoxon  # noqa: E402
from cmfnet.training.row_ids import split_row_id  # noqa: E402

REQUIRED = ("method", "method_name", "fold", "case", "class", "dsc", "asd")
SECONDARY = ("assd", "hd95", "nsd")  # reported when the metrics rows have them


def collect(files: list[Path]) -> pd.DataFrame:
    if not files:
        raise InputError("metrics", "no per-case metric CSVs found")
    frames = []
    for path in files:
        try:
            frame = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise InputError(path, f"cannot read metrics ({type(err).__name__})") from None
        missing = [c for c in REQUIRED if c not in frame.columns]
        if missing:
            raise InputError(path, f"missing columns {missing}")
        frames.append(frame.assign(source=str(path)))
    data = pd.concat(frames, ignore_index=True)
    if "dataset" in data.columns and data["dataset"].nunique() > 1:
        names = sorted(data["dataset"].astype(str).unique())
        raise InputError(files[0].parent, f"metrics of several datasets ({', '.join(names)}); choose one, "
                                          f"e.g. --results results/metrics/{names[0]}")
    if "table" not in data.columns:
        data["table"] = "table1"
    # an all-empty column reads as float: fill it as text, not as a float column given a string
    data["table"] = data["table"].astype(object).where(data["table"].notna(), "table1")
    if "seed" not in data.columns:
        data["seed"] = 0
    duplicated = data.duplicated(["method", "seed", "fold", "case", "class"])
    if duplicated.any():
        row = data[duplicated].iloc[0]
        raise InputError(row.get("source", "metrics"), f"duplicate rows for {row['method']} seed {row['seed']} "
                                              f"fold {row['fold']} case {row['case']} class {row['class']}")
    return data


def summarise(data: pd.DataFrame, order: list[str] | None = None, reference: str | None = "cmfnet") -> pd.DataFrame:
    """One row per method: mean and std over test cases (pooled over folds), per class.

    With several training seeds a case's score is first averaged over its seeds, so the std stays
    a spread over cases; the spread over seeds is reported apart: the std of the per-seed means of
    the headline DSC (``seed_dsc_std``) and the method's rank in each seed (``rank_by_seed``), which
    shows whether a ranking is stable. ``fold_dsc_std`` is the spread of the per-fold means.
    ``dsc_ci_low``/``dsc_ci_high`` bound the mean DSC (bootstrap 95 %); ``p_vs_reference`` is a
    paired Wilcoxon test against the ``reference`` row over the same seeds, folds and cases, and
    ``p_holm`` its Holm correction over the table's rows (see :mod:`cmfnet.evaluation.statistics`).
    """
    data = data.assign(seed=data["seed"].fillna(0).astype(int)) if "seed" in data else data.assign(seed=0)
    classes = list(dict.fromkeys(data["class"]))
    rows = []
    methods = list(dict.fromkeys(data["method"]))
    if order:
        methods = [m for m in order if m in methods] + [m for m in methods if m not in order]
    headline = _headline_per_case(data)
    ranks = headline.groupby(["seed", "method"])["dsc"].mean().groupby("seed").rank(ascending=False, method="min")
    for method in methods:
        sub = data[data["method"] == method]
        row = {"method": method, "name": sub["method_name"].iloc[0],
               "data": sub["data"].iloc[0] if "data" in sub else "",
               "cases": sub["case"].nunique(), "folds": sub["fold"].nunique(), "seeds": sub["seed"].nunique()}
        over_seeds = sub.groupby(["class", "fold", "case"], sort=False)[["dsc", "asd"]].mean().reset_index()
        for cls in classes:
            part = over_seeds[over_seeds["class"] == cls]
            prefix = "" if len(classes) == 1 else f"{cls}_"
            row[f"{prefix}dsc_mean"] = 100 * part["dsc"].mean()
            row[f"{prefix}dsc_std"] = 100 * part["dsc"].std(ddof=1)
            row[f"{prefix}asd_mean"] = part["asd"].mean()
            row[f"{prefix}asd_std"] = part["asd"].std(ddof=1)
        if len(classes) > 1:
            per_case = over_seeds.groupby(["fold", "case"])[["dsc", "asd"]].mean()
            row["mean_dsc_mean"] = 100 * per_case["dsc"].mean()
            row["mean_dsc_std"] = 100 * per_case["dsc"].std(ddof=1)
            row["mean_asd_mean"] = per_case["asd"].mean()
            row["mean_asd_std"] = per_case["asd"].std(ddof=1)
        for metric in SECONDARY:  # the headline value: one class, or the per-case mean over classes
            if metric in sub:
                values = sub.groupby(["fold", "case"])[metric].mean()  # over seeds and classes
                row[f"{metric}_mean"], row[f"{metric}_std"] = values.mean(), values.std(ddof=1)
        mine = headline[headline["method"] == method]
        per_case = mine.groupby(["fold", "case"])["dsc"].mean().to_numpy()
        row["dsc_ci_low"], row["dsc_ci_high"] = (100 * v for v in bootstrap_ci(per_case))
        row["p_vs_reference"] = _paired_p(headline, method, reference)
        row["fold_dsc_std"] = 100 * mine.groupby("fold")["dsc"].mean().std(ddof=1)
        row["seed_dsc_std"] = 100 * mine.groupby("seed")["dsc"].mean().std(ddof=1)
        row["rank_by_seed"] = ",".join(str(int(ranks[(seed, method)])) for seed in sorted(mine["seed"].unique()))
        for column in ("seed", "config", "cmfnet_version"):
            if column in sub:
                row[column] = ";".join(sorted({str(v) for v in sub[column].dropna()}))
        rows.append(row)
    summary = pd.DataFrame(rows)
    summary["reference"] = reference if reference in methods else ""
    summary["p_holm"] = holm(summary["p_vs_reference"].tolist())
    return summary


def _paired_p(headline: pd.DataFrame, method: str, reference: str | None) -> float:
    """Wilcoxon p-value of ``method`` against ``reference`` on their shared (seed, fold, case) units."""
    if reference is None or method == reference or reference not in set(headline["method"]):
        return float("nan")
    units = ["seed", "fold", "case"]
    pairs = headline[headline["method"] == method].merge(headline[headline["method"] == reference], on=units)
    return paired_wilcoxon(pairs["dsc_x"].to_numpy(), pairs["dsc_y"].to_numpy())


def _headline_per_case(data: pd.DataFrame) -> pd.DataFrame:
    """DSC per method, seed, fold and case, averaged over classes: what the spreads and ranks use."""
    return data.groupby(["method", "seed", "fold", "case"])["dsc"].mean().reset_index()


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {0.0 if pd.isna(std) else std:.2f}"


#: the note under every Markdown and HTML table: what each column means
TABLE_NOTE = ("Mean ± standard deviation over test cases pooled across folds (a case's score is first "
              "averaged over its training seeds); ASD is the directed average surface distance "
              "prediction → reference in mm; empty masks follow the policy recorded in each metrics "
              "row. Spread over folds (seeds): standard deviation of the per-fold (per-seed) mean DSC "
              "in points, – with one fold (seed). Rank per seed: the method's DSC rank in this "
              "table, seed by seed. CI: bootstrap 95 % interval of the mean DSC over cases. p: "
              "two-sided paired Wilcoxon signed-rank test of the case DSCs against the reference "
              "row over the same seeds, folds and cases, Holm-corrected over the rows; * p < 0.05. "
              "ASSD, HD95 and NSD (at the tolerance recorded in the metrics rows) are for the mean "
              "over classes.")


def displayed_cells(summary: pd.DataFrame) -> list[list[list[str]]]:
    """The cells shown in the Markdown and HTML tables, header row first: the main table, then the
    secondary metrics' table when the rows have them. One layout for both formats."""
    groups = [c[: -len("dsc_mean")] for c in summary.columns if c.endswith("dsc_mean")]
    header = ["Methods", "Data"]
    for g in groups:
        label = g.rstrip("_") or ""
        header += [f"{label} DSC (%) ↑".strip(), f"{label} ASD (mm) ↓".strip()]
    header += ["DSC 95 % CI", "cases", "folds", "DSC spread over folds", "seeds", "DSC spread over seeds",
               "rank per seed"]
    reference = summary["reference"].iloc[0] if len(summary) else ""
    if reference:
        header.append(f"p vs {summary.set_index('method').loc[reference, 'name']} (Holm)")
    main = [header]
    for _, row in summary.iterrows():
        cells = [str(row["name"]), str(row["data"])]
        for g in groups:
            cells += [_pm(row[f"{g}dsc_mean"], row[f"{g}dsc_std"]), _pm(row[f"{g}asd_mean"], row[f"{g}asd_std"])]
        cells += [_interval(row["dsc_ci_low"], row["dsc_ci_high"]), str(row["cases"]), str(row["folds"]),
                  _spread(row["fold_dsc_std"]), str(row["seeds"]), _spread(row["seed_dsc_std"]), str(row["rank_by_seed"])]
        if reference:
            cells.append(_p(row["p_holm"]))
        main.append(cells)
    secondary = [m for m in SECONDARY if f"{m}_mean" in summary]
    if not secondary:
        return [main]
    names = {"assd": "ASSD (mm) ↓", "hd95": "HD95 (mm) ↓", "nsd": "NSD ↑"}
    extra = [["Methods"] + [names[m] for m in secondary]]
    for _, row in summary.iterrows():
        extra.append([str(row["name"])] + [_pm(row[f"{m}_mean"], row[f"{m}_std"]) for m in secondary])
    return [main, extra]


def to_markdown(summary: pd.DataFrame, title: str) -> str:
    lines = [f"### {title}"]
    for cells in displayed_cells(summary):
        lines += ["", "| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
        lines += ["| " + " | ".join(row) + " |" for row in cells[1:]]
    lines += ["", TABLE_NOTE]
    return "\n".join(lines) + "\n"


def to_html(summary: pd.DataFrame, title: str) -> str:
    """The Markdown table as a standalone HTML page: what ``snakemake --report`` shows (it offers
    CSV, Markdown and LaTeX only as downloads)."""
    parts = []
    for cells in displayed_cells(summary):
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cells[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells[1:])
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    style = ("body{font-family:sans-serif;font-size:13px;margin:1em}table{border-collapse:collapse;margin-bottom:1em}"
             "th,td{border:1px solid #bbb;padding:3px 6px;text-align:right}th:first-child,td:first-child"
             "{text-align:left}th{background:#eee}p{max-width:60em}")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{style}</style></head>\n<body><h3>{html.escape(title)}</h3>\n" + "\n".join(parts)
            + f"\n<p>{html.escape(TABLE_NOTE)}</p></body></html>\n")


def to_latex(summary: pd.DataFrame, title: str) -> str:
    """A booktabs table in the paper's layout: per metric column the best value in bold, the
    second underlined (DSC: higher is better, ASD: lower)."""
    groups = [c[: -len("dsc_mean")] for c in summary.columns if c.endswith("dsc_mean")]
    columns = [(g, metric) for g in groups for metric in ("dsc", "asd")]
    names = {"dsc": "DSC (\\%)", "asd": "ASD (mm)"}
    header = ["Methods", "Data"] + [(_latex_escape(g.rstrip("_")) + " " if g else "") + names[m] for g, m in columns]
    marks = {}
    for g, metric in columns:
        values = summary[f"{g}{metric}_mean"].round(2)
        ranked = sorted(values.dropna().unique(), reverse=metric == "dsc")
        marks[(g, metric)] = {v: style for v, style in zip(ranked, ("\\textbf{{{}}}", "\\underline{{{}}}"))}
    lines = ["% " + title, "\\begin{tabular}{ll" + "c" * len(columns) + "}", "\\toprule",
             " & ".join(header) + " \\\\", "\\midrule"]
    for _, row in summary.iterrows():
        cells = [_latex_escape(str(row["name"])), _latex_escape(str(row["data"]))]
        for g, metric in columns:
            mean, std = row[f"{g}{metric}_mean"], row[f"{g}{metric}_std"]
            text = f"{mean:.2f} $\\pm$ {0.0 if pd.isna(std) else std:.2f}"
            style = marks[(g, metric)].get(round(mean, 2))
            cells.append(style.format(text) if style else text)
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    for char in "&%$#_{}":
        text = text.replace(char, "\\" + char)
    return text


def _interval(low: float, high: float) -> str:
    return "–" if pd.isna(low) else f"[{low:.1f}, {high:.1f}]"


def _p(value: float) -> str:
    if pd.isna(value):
        return "–"
    return (f"{value:.2g}" if value >= 0.001 else "< 0.001") + (" *" if value < 0.05 else "")


def _spread(std: float) -> str:
    return "–" if pd.isna(std) else f"± {std:.2f}"


def plot_sweep(summary: pd.DataFrame, path: Path, title: str) -> None:
    """DSC and ASD against the swept point, one line per head (``<point>@<head>`` rows, as Fig. 6
    plots the cross-modal and the modality-specific heads); the ticks are the names of the first
    head's rows."""
    groups = [c[: -len("dsc_mean")] for c in summary.columns if c.endswith("dsc_mean")]
    g = "mean_" if "mean_" in groups else groups[0]
    ids = [split_row_id(method) for method in summary["method"]]
    points = list(dict.fromkeys(point for point, _ in ids))
    rows_of: dict[str, list[int]] = {}  # head -> its rows' positions in summary, in table order
    for row, (_, head) in enumerate(ids):
        rows_of.setdefault(head, []).append(row)
    x = [points.index(point) for point, _ in ids]
    first = next(iter(rows_of.values()))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, metric, label in ((axes[0], "dsc", "DSC (%)"), (axes[1], "asd", "ASD (mm)")):
        for head, rows in rows_of.items():
            ax.errorbar([x[r] for r in rows], summary[f"{g}{metric}_mean"].iloc[rows],
                        yerr=summary[f"{g}{metric}_std"].iloc[rows].fillna(0),
                        marker="o", capsize=3, label=f"head {head}" if head else None)
        ax.set_xticks([x[r] for r in first], summary["name"].iloc[first], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if len(rows_of) > 1:
        axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def metric_files(results: Path) -> list[Path]:
    """Every metrics CSV under ``results/metrics`` (or under ``results`` itself); naming the folder
    searched when there is none (a wrong --results is the usual cause)."""
    root = results / "metrics" if (results / "metrics").is_dir() else results
    if not root.is_dir():
        raise InputError(root, "no such folder (give --results the folder that holds metrics/, e.g. "
                               "results, or one dataset's metrics, e.g. results/metrics/smoke-npc)")
    files = sorted(root.rglob("*.csv"))
    if not files:
        raise InputError(root, "no per-case metric CSVs found (searched **/*.csv in this folder)")
    return files


def chosen_metric_files(results: Path | None, metrics: list[Path] | None) -> list[Path]:
    """The metrics CSVs of a command's --results DIR or --metrics FILE ... (exactly one is given)."""
    if bool(results) == bool(metrics):
        raise InputError("--results", "give either --results DIR or --metrics FILE ...")
    return metrics or metric_files(results)


def table_reference(reference: str | None, part: pd.DataFrame, data: pd.DataFrame) -> str | None:
    """The row a table's paired tests compare with: the row ``reference``; else the one row of
    that card in this table (a semi table holds ``<card>+<fraction>`` rows of a single fraction);
    else the one row that reads the reference's own trained models, by their config hashes (an
    ablation table's full-model row: Table VI's MFL + CFE + CFF is CmFNet's model)."""
    methods = list(part["method"].unique())
    if reference is None or reference in methods:
        return reference
    of_card = [m for m in methods if m.split("+")[0] == reference]
    if len(of_card) == 1:
        return of_card[0]
    if "config" in data and reference in set(data["method"]):
        configs = part.groupby("method")["config"].agg(frozenset)
        same = configs[configs == frozenset(data.loc[data["method"] == reference, "config"])].index
        if len(same) == 1:
            return str(same[0])
    return reference


def write_tables(files: list[Path], out: Path, order: list[str] | None = None,
                 reference: str | None = "cmfnet") -> list[Path]:
    data = collect(files)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    placed = data.assign(table=data["table"].str.split(";")).explode("table")  # a row may fill several
    for table, part in placed.groupby("table", sort=True):
        summary = summarise(part, order, table_reference(reference, part, data))
        csv_path = out / f"{table}.csv"
        with atomic_path(csv_path) as tmp:
            summary.to_csv(tmp, index=False, float_format="%.4f")
        written.append(csv_path)
        for ext, render in (("md", to_markdown), ("tex", to_latex), ("html", to_html)):
            with atomic_path(out / f"{table}.{ext}") as tmp:
                tmp.write_text(render(summary, str(table)))
            written.append(out / f"{table}.{ext}")
        if str(table).startswith("fig"):
            figure = out.parent / "figures" / f"{table}.png"
            figure.parent.mkdir(parents=True, exist_ok=True)
            plot_sweep(summary, figure, str(table))
            written.append(figure)
    write_json({"tables": sorted(str(t) for t in placed["table"].unique()),
                "rows": int(len(data)), "methods": sorted(data["method"].unique().tolist())},
               out / "provenance.json")
    return written


def run(args: argparse.Namespace) -> int:
    order = args.order.split(",") if args.order else None
    files = chosen_metric_files(args.results, args.metrics)
    reference = None if args.reference == "none" else args.reference
    written = write_tables(files, args.out, order, reference)
    for path in written:
        print(f"wrote {path}")
    main = sorted(p for p in written if p.suffix == ".md" and re.fullmatch(r"table\d+", p.stem))
    if main:  # Table I (NPC data) or Table II (WORD data)
        print(main[0].read_text())
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tables", help="aggregate per-case metrics into the paper's tables and figures (no retraining)",
        description="Read RESULTS/metrics/**/*.csv (or the given --metrics files) and write one table "
                    "per table tag into OUT.")
    parser.add_argument("--results", type=Path, help="results folder: reads every CSV under its metrics/")
    parser.add_argument("--metrics", type=Path, nargs="+", help="or: exactly these metrics CSVs")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the tables")
    parser.add_argument("--order", help="comma-separated method ids: the row order of the tables")
    parser.add_argument("--reference", default="cmfnet",
                        help="method id every row is tested against (paired Wilcoxon, Holm); in a semi table, a card id "
                             "names its row at the table's fraction; none: no tests")
    parser.set_defaults(func=run)
