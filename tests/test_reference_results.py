"""The committed result sets under results/reference/ are what `cmfnet tables` and `cmfnet curves`
make of their committed metrics and logs today, byte for byte (results/reference/README.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cmfnet.cli import main as cmfnet_main

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference"
SETS = sorted(p.name for p in REFERENCE.iterdir() if (p / "order.txt").is_file()) if REFERENCE.is_dir() else []
COMPARED = ("*.csv", "*.md", "*.tex", "*.html")


@pytest.mark.parametrize("name", SETS)
def test_committed_tables_regenerate_byte_for_byte(name: str, tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([str(REFERENCE / "regenerate.sh"), name, str(tmp_path)], check=True, env=env,
                   capture_output=True, text=True)
    committed = sorted(f.relative_to(REFERENCE / name / "tables")
                       for pattern in COMPARED for f in (REFERENCE / name / "tables").glob(pattern))
    assert committed, f"{name} holds no tables"
    for relative in committed:
        assert (tmp_path / "tables" / relative).read_bytes() == (REFERENCE / name / "tables" / relative).read_bytes(), \
            f"results/reference/{name}/tables/{relative} is stale: run results/reference/regenerate.sh {name}"


@pytest.mark.parametrize("name", SETS)
def test_the_tables_command_in_process_writes_the_committed_tables(name: str, tmp_path: Path) -> None:
    """The same regeneration without a subprocess, so that mutation testing (whose mutants live
    in this process only) sees every line of the table code the committed tables depend on."""
    order = (REFERENCE / name / "order.txt").read_text().strip()
    named = REFERENCE / name / "reference.txt"  # as regenerate.sh reads it
    reference = named.read_text().strip() if named.is_file() else "cmfnet"
    assert cmfnet_main(["tables", "--results", str(REFERENCE / name), "--out", str(tmp_path), "--order", order,
                        "--reference", reference]) == 0
    for pattern in COMPARED:
        for committed in (REFERENCE / name / "tables").glob(pattern):
            if committed.stem == "convergence":  # written by `cmfnet curves`, tested above
                continue
            assert (tmp_path / committed.name).read_bytes() == committed.read_bytes(), committed.name
