"""Tables are aggregated from stored per-case rows only."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cmfnet.errors import InputError
from cmfnet.tables import write_tables


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


def test_sweep_tables_get_a_figure(tmp_path: Path) -> None:
    files = [metrics_csv(tmp_path / f"{v}.csv", f"fig6.{v}", f"w={v}", [0.5 + v / 10, 0.6], table="fig6_x")
             for v in range(3)]
    write_tables(files, tmp_path / "tables")
    assert (tmp_path / "figures" / "fig6_x.png").stat().st_size > 0


def test_mixed_datasets_and_duplicates_are_refused(tmp_path: Path) -> None:
    one = metrics_csv(tmp_path / "1.csv", "a", "A", [0.5], dataset="x")
    other = metrics_csv(tmp_path / "2.csv", "a", "A", [0.5], dataset="y")
    with pytest.raises(InputError, match="several datasets"):
        write_tables([one, other], tmp_path / "out")
    twin = metrics_csv(tmp_path / "3.csv", "a", "A", [0.5], dataset="x")
    with pytest.raises(InputError, match="duplicate"):
        write_tables([one, twin], tmp_path / "out")
