"""The importer registry: docs/adding-an-importer.md's example plugs in as it says, and the
Snakemake config accepts exactly the registered importers."""

from __future__ import annotations

import re
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

from cmfnet import cli
from cmfnet.data import importers

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "adding-an-importer.md"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def guide_module() -> types.ModuleType:
    """The guide's example importer (its first python block), as a module of its own."""
    code = re.search(r"```python\n(# cmfnet/data/importers/npy\.py\n.*?)```", GUIDE.read_text(), re.S)
    assert code, f"{GUIDE} has no example module"
    module = types.ModuleType("npy_importer_from_the_guide")
    exec(compile(code.group(1), str(GUIDE), "exec"), module.__dict__)
    return module


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The guide's importer registered, for this test only."""
    monkeypatch.setattr(importers, "IMPORTERS", dict(importers.IMPORTERS))
    module = guide_module()
    importers.register(module.IMPORTER)
    return module


def help_text(capsys: pytest.CaptureFixture, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_a_registered_importer_is_a_subcommand_with_the_common_options(registered, capsys):
    assert re.search(r"^\s+npy\s+a folder of NumPy arrays \(example\)$", help_text(capsys, "import"), re.M)
    own = help_text(capsys, "import", "npy")
    for option in ("--src", "--spacing", "--out", "--folds", "--val-from-train", "--crop-body", "--force"):
        assert option in own, option


def test_the_guides_importer_writes_a_dataset_that_validate_accepts(registered, tmp_path, capsys):
    src = tmp_path / "arrays"
    src.mkdir()
    rng = np.random.default_rng(0)
    for case in ("p1", "p2", "p3"):
        label = np.zeros((6, 12, 12), np.uint8)
        label[2:4, 4:8, 4:8] = 1
        np.save(src / f"{case}_image.npy", rng.normal(size=label.shape) + 3 * label)
        np.save(src / f"{case}_label.npy", label)
    out = tmp_path / "toy"
    assert cli.main(["import", "npy", "--src", str(src), "--spacing", "3", "1", "1", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"{out}: 3 cases, channels MR, classes background,tumour")
    assert cli.main(["validate", str(out)]) == 0


def test_the_guides_importer_refuses_bad_input_with_one_line(registered, tmp_path, capsys):
    src = tmp_path / "arrays"
    src.mkdir()
    for case in ("p1", "p2", "p3"):
        np.save(src / f"{case}_image.npy", np.ones((4, 4) if case == "p3" else (4, 4, 4), np.float32))
        np.save(src / f"{case}_label.npy", np.ones((4, 4, 4), np.uint8))
    assert cli.main(["import", "npy", "--src", str(src), "--spacing", "3", "1", "1",
                     "--out", str(tmp_path / "toy")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == f"cmfnet import: error: {src / 'p3_image.npy'}: shape (4, 4); expected a 3D (z, y, x) array"
    assert not [line for line in lines[:-1] if "error" in line]
    assert not (tmp_path / "toy").exists() and not list(tmp_path.glob(".toy*"))


def test_a_taken_name_cannot_be_registered_twice(monkeypatch):
    monkeypatch.setattr(importers, "IMPORTERS", dict(importers.IMPORTERS))
    with pytest.raises(ValueError, match="'word' is already registered"):
        importers.register(importers.IMPORTERS["word"])


def test_the_config_schema_accepts_exactly_the_registered_importers():
    """Snakemake validates the config against the YAML schema before any cmfnet code runs, so the
    list lives there; this keeps it equal to the registry (docs/adding-an-importer.md, step 2)."""
    schema = yaml.safe_load(SCHEMA.read_text())
    accepted = schema["properties"]["dataset"]["properties"]["import"]["properties"]["importer"]["enum"]
    assert accepted == list(importers.IMPORTERS)
