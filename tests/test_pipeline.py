"""End to end: the smoke preset through Snakemake, and a method added as one module plus one card."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import report_check  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
#: FullySup's mean test DSC (%) on the smoke preset must exceed this. Measured (config/smoke.yaml):
#: 38.4 trained; 1.3 untrained (1 iteration); 1.6 when inference skips the intensity normalisation.
FULLYSUP_DSC_FLOOR = 10.0
#: Tests that only need the pipeline to run, not a trained model, override the preset's length.
SHORT_TRAINING = {"train": {"iterations": 4, "val_interval": 2, "checkpoint_interval": 2, "log_interval": 2}}

pytestmark = pytest.mark.slow

TOY_PLUGIN = '''
"""A toy method: pCE plus a small penalty on the mean foreground probability."""
import torch
from cmfnet.training.losses import partial_ce
from cmfnet.training.contract import Method


class ToyMethod(Method):
    name = "toy"
    defaults = {"weight": 0.01}

    def loss(self, model, batch, step):
        logits = model(batch.image)
        pce = partial_ce(logits, batch.target)
        penalty = torch.softmax(logits, 1)[:, 1:].mean()
        return pce + self.params["weight"] * penalty, {"pce": float(pce), "penalty": float(penalty)}
'''


def run_snakemake(workdir: Path, *extra: str, overrides: dict | None = None) -> subprocess.CompletedProcess[str]:
    """Snakemake on the smoke preset; ``overrides`` is a config file merged over it."""
    env = {**os.environ, "PATH": f"{SNAKEMAKE.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    configfiles = [str(REPO / "config" / "smoke.yaml")]
    if overrides:
        (workdir / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        configfiles.append(str(workdir / "overrides.yaml"))
    return subprocess.run([str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
                           "--cores", "2", "--configfile", *configfiles, *extra],
                          capture_output=True, text=True, env=env, timeout=900)


def workdir_with(tmp_path: Path, extra_methods: dict[str, str] | None = None) -> Path:
    """A working directory with the repo's config and cards (plus extra files in methods/)."""
    work = tmp_path / "work"
    (work / "methods").mkdir(parents=True)
    shutil.copytree(REPO / "config", work / "config")
    for card in (REPO / "methods").glob("*.yaml"):
        shutil.copy(card, work / "methods" / card.name)
    for name, text in (extra_methods or {}).items():
        (work / "methods" / name).write_text(text)
    return work


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run of the smoke preset, shared by the tests that read its outputs."""
    work = workdir_with(tmp_path_factory.mktemp("smoke"))
    result = run_snakemake(work)
    assert result.returncode == 0, result.stderr[-4000:]
    return work


def test_smoke_pipeline_writes_table1(smoke_run: Path) -> None:
    work = smoke_run
    table = pd.read_csv(work / "results" / "tables" / "table1.csv")
    assert table["name"].tolist() == ["FullySup", "pCE"]
    assert table["data"].tolist() == ["masks", "scribbles"]
    assert table["dsc_mean"].between(0, 100).all() and (table["asd_mean"] >= 0).all()
    fullysup = table.set_index("name").loc["FullySup", "dsc_mean"]
    assert fullysup > FULLYSUP_DSC_FLOOR, f"FullySup reached {fullysup:.1f} % DSC: not trained, or mis-normalised"
    metrics = pd.read_csv(work / "results" / "metrics" / "smoke-npc" / "pce" / "seed0" / "fold0.csv")
    assert {"case", "class", "dsc", "asd", "assd", "hd95", "empty", "seed", "config",
            "cmfnet_version"} <= set(metrics.columns) and "medpy_version" not in metrics
    assert "FullySup" in (work / "results" / "tables" / "table1.md").read_text()
    # a second run has nothing to do: outputs are complete and up to date
    again = run_snakemake(work, "--dry-run", "--quiet")
    assert again.returncode == 0 and "train" not in again.stdout


def test_report_shows_every_table_and_figure_in_a_browser(smoke_run: Path) -> None:
    """`snakemake --report` bundles every table and figure; where Chromium is installed (CI
    installs it), a real browser shows each figure loaded and each table page with its rows."""
    work = smoke_run
    report = work / "report.html"
    made = run_snakemake(work, "--report", str(report))
    assert made.returncode == 0, made.stderr[-4000:]
    chromium = report_check.find_chromium()
    if chromium is None:
        pytest.skip("the report was made; no Chromium here to open it (set CHROMIUM or install chromium)")
    verdict = report_check.check_report(report, work / "screenshots", chromium)
    shown = {row["path"]: row for row in verdict["results"]}
    for expected in ("results/tables/table1.html", "results/figures/curves.png"):
        assert any(path.endswith(expected) for path in shown), f"{expected} not in the report: {sorted(shown)}"
    failed = [row for row in verdict["results"] if row["ok"] is False]
    assert not failed, failed
    assert all(Path(row["screenshot"]).stat().st_size > 10_000 for row in verdict["results"] if "screenshot" in row)
    # the check can fail: a figure whose PNG does not decode is reported as not loaded
    broken = work / "broken-report.html"
    text = report.read_text(encoding="utf-8")
    corrupted, count = re.subn(r'(data:image/png;[^"]*?base64,)iVBOR', r"\1AAAAA", text, count=1)  # PNG magic
    assert count == 1
    broken.write_text(corrupted, encoding="utf-8")
    assert [row["ok"] for row in report_check.check_report(broken, None, chromium)["results"]].count(False) == 1


def test_a_new_method_is_one_module_and_one_card(tmp_path: Path) -> None:
    card = "name: Toy\nplugin: toy_method.py\nsupervision: scribble\nscribble_variant: sim\n" \
           "network: {arch: vnet, width: 4}\nparams: {weight: 0.05}\n"
    work = workdir_with(tmp_path, {"toy_method.py": TOY_PLUGIN, "toy.yaml": card})
    result = run_snakemake(work, "--config", "methods=[pce,toy]", overrides=SHORT_TRAINING)
    assert result.returncode == 0, result.stderr[-4000:]
    table = pd.read_csv(work / "results" / "tables" / "table1.csv")
    assert table["name"].tolist() == ["pCE", "Toy"]
