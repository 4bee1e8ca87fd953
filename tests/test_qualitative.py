"""The qualitative figure draws the cases its rule chooses, on their densest slice, from the files."""

from __future__ import annotations

from pathlib import Path

import matplotlib.figure
import numpy as np
import pandas as pd
import pytest

from cmfnet import cli
from cmfnet.data.dataset import Dataset
from cmfnet.data.io import write_image
from cmfnet.evaluation.qualitative import chosen_cases, column_titles, densest_slice


def rows(method: str, dsc: dict[str, float], seed: int = 0, fold: int = 0) -> list[dict]:
    return [{"dataset": "tiny", "method": method, "method_name": method.upper(), "seed": seed, "fold": fold,
             "case": case, "class": "tumour", "dsc": value, "asd": 1.0} for case, value in dsc.items()]


def test_cases_are_the_references_worst_median_and_best_over_seeds() -> None:
    metrics = pd.DataFrame(rows("ref", {"a": 0.9, "b": 0.1, "c": 0.5, "d": 0.7, "e": 0.3})
                           + rows("ref", {"a": 0.1, "b": 0.1, "c": 0.5, "d": 0.7, "e": 0.3}, seed=1)
                           + rows("other", {"a": 0.0, "b": 1.0, "c": 0.2, "d": 0.4, "e": 0.6}))
    # over seeds: a 0.5, b 0.1, c 0.5, d 0.7, e 0.3 -> sorted b e a c d (ties by case name)
    assert [(role, case) for role, case, _, _ in chosen_cases(metrics, "ref")] == \
           [("worst", "b"), ("median", "a"), ("best", "d")]
    assert chosen_cases(metrics, "ref")[1][3] == pytest.approx(0.5)
    assert [case for _, case, _, _ in chosen_cases(metrics, "other")] == ["a", "d", "b"]
    assert len(chosen_cases(pd.DataFrame(rows("ref", {"x": 0.2, "y": 0.4})), "ref")) == 2


def test_columns_sharing_a_name_are_told_apart_by_supervision_then_id() -> None:
    """The ablations preset draws CmFNet on scribbles and on masks: two columns titled "CmFNet"
    could not be told apart (fails when the shared names are kept or a unique one is changed)."""
    metrics = pd.DataFrame([
        {"method": "cmfnet", "method_name": "CmFNet", "data": "scribbles"},
        {"method": "cmfnet_fullmask", "method_name": "CmFNet", "data": "masks"},
        {"method": "pce", "method_name": "pCE", "data": "scribbles"},
        {"method": "table7.ssl", "method_name": "SSL", "data": "scribbles"},
        {"method": "semi.ssl", "method_name": "SSL", "data": "scribbles"},
    ])
    assert column_titles(metrics) == {"cmfnet": "CmFNet (scribbles)", "cmfnet_fullmask": "CmFNet (masks)",
                                      "pce": "pCE", "table7.ssl": "SSL (table7.ssl)", "semi.ssl": "SSL (semi.ssl)"}
    assert column_titles(metrics.drop(columns="data"))["cmfnet_fullmask"] == "CmFNet (cmfnet_fullmask)"


def test_densest_slice_is_the_one_with_most_foreground() -> None:
    label = np.zeros((5, 4, 4), np.uint8)
    label[1, :2, :2] = 1
    label[3, :3, :3] = 2
    assert densest_slice(label) == 3
    assert densest_slice(np.zeros((5, 4, 4), np.uint8)) == 2


def test_figure_shows_each_methods_prediction_of_the_chosen_cases(tiny_dataset: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    figures: list[matplotlib.figure.Figure] = []
    savefig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda self, *a, **k: (figures.append(self), savefig(self, *a, **k)))
    dataset = Dataset(tiny_dataset)
    test = dataset.split(0)["test"]
    geometry = dataset.geometry(test[0])
    predictions = tmp_path / "pred"
    for case in test:  # "truth" predicts the label, "empty" nothing
        label = dataset.load_label(case)
        write_image(label, predictions / "truth" / "seed0" / "fold0" / f"{case}.nii.gz", geometry)
        write_image(np.zeros_like(label), predictions / "empty" / "seed0" / "fold0" / f"{case}.nii.gz", geometry)
    scores = {case: 0.2 + 0.1 * i for i, case in enumerate(test)}
    metrics = tmp_path / "m.csv"
    pd.DataFrame(rows("truth", scores) + rows("empty", dict.fromkeys(test, 0.0))).to_csv(metrics, index=False)
    out = tmp_path / "fig" / "qualitative.png"
    assert cli.main(["qualitative", "--dataset", str(tiny_dataset), "--predictions", str(predictions),
                     "--metrics", str(metrics), "--reference", "truth", "--order", "empty,truth",
                     "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    (figure,) = figures
    axes = np.asarray(figure.axes).reshape(-1, 5)  # CT, MR, ground truth, EMPTY, TRUTH
    assert [ax.get_title() for ax in axes[0]] == ["CT", "MR", "ground truth", "EMPTY", "TRUTH"]
    assert len(axes) == min(3, len(test))
    best = max(scores, key=scores.get)
    label = dataset.load_label(best).astype(int)
    z = densest_slice(label)
    assert axes[-1, 0].get_ylabel().startswith(f"{best}, z={z}")
    drawn_truth = axes[-1, 4].get_images()[1].get_array()
    np.testing.assert_array_equal(np.ma.filled(drawn_truth, -1), np.where(label[z] > 0, label[z] - 1, -1))
    assert axes[-1, 3].get_images()[1].get_array().mask.all()  # the empty method overlays nothing
    mr = dataset.load_image(best)[0][1, z]
    np.testing.assert_array_equal(np.argsort(axes[-1, 1].get_images()[0].get_array(), axis=None)[-20:],
                                  np.argsort(np.clip(mr, *np.percentile(mr, [1, 99])), axis=None)[-20:])


def test_a_missing_prediction_is_one_line_naming_it(tiny_dataset: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    case = Dataset(tiny_dataset).split(0)["test"][0]
    metrics = tmp_path / "m.csv"
    pd.DataFrame(rows("ref", {case: 0.5})).to_csv(metrics, index=False)
    assert cli.main(["qualitative", "--dataset", str(tiny_dataset), "--predictions", str(tmp_path / "none"),
                     "--metrics", str(metrics), "--reference", "ref", "--out", str(tmp_path / "q.png")]) == 2
    error = capsys.readouterr().err.strip()
    assert f"ref/seed0/fold0/{case}.nii.gz: file not found" in error and "\n" not in error
    assert not (tmp_path / "q.png").exists()
