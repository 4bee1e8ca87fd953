"""Training reliability (issue 9): nothing executes from a checkpoint, a finished training is not
redone, leftovers of a kill are cleaned, every bad value gets one line, model.pt is checked."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cmfnet.cli import main
from cmfnet.training.engine import Trainer
from cmfnet.training.model import FORMAT_VERSION, TrainedModel
from cmfnet.training.config import TrainConfig
from cmfnet.errors import InputError
from cmfnet.data.io import read_json, write_json
from cmfnet.data.dataset import Dataset
from cmfnet.training.cards import load_card
from test_engine import FAST, kill_after, make_trainer, write_card

REPO = Path(__file__).resolve().parents[1]


def train_cli(tmp_path: Path, dataset: Path, *extra: str, card: Path | None = None,
              out: str = "out") -> int:
    return main(["train", "--card", str(card or write_card(tmp_path)), "--dataset", str(dataset),
                 "--fold", "0", "--out", str(tmp_path / out), "--train-config", json.dumps(FAST),
                 "--device", "cpu", *extra])


def same_weights(a: Path, b: Path) -> bool:
    wa = torch.load(a / "model.pt", weights_only=True)["weights"]
    wb = torch.load(b / "model.pt", weights_only=True)["weights"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


class MakesFolder:
    """Unpickling this runs ``os.mkdir(path)``: the side effect shows whether a load executed code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (self.path,))


# -- item 1: weights_only everywhere -----------------------------------------------------------

def test_pickled_object_in_last_pt_never_runs_and_training_starts_afresh(
        tmp_path: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "code_ran"
    out = tmp_path / "out"
    out.mkdir()
    torch.save({"format": FORMAT_VERSION, "payload": MakesFolder(marker)}, out / "last.pt")
    make_trainer(tmp_path, tiny_dataset).fit()
    assert not marker.exists()
    log = capsys.readouterr().err
    assert "weights_only=True" in log and "starting afresh" in log
    make_trainer(tmp_path, tiny_dataset, "fresh").fit()
    assert same_weights(out, tmp_path / "fresh")


def test_pickled_object_in_model_pt_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    (tmp_path / "m").mkdir()
    torch.save({"format": FORMAT_VERSION, "meta": {}, "weights": MakesFolder(marker)}, tmp_path / "m" / "model.pt")
    with pytest.raises(InputError, match="weights_only"):
        TrainedModel.load(tmp_path / "m")
    assert not marker.exists()


def test_last_pt_holds_no_targets_and_no_second_copy_of_the_model(tmp_path: Path, tiny_dataset: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint at iteration 4 follows the validation at 4: the best weights are the model's."""
    kill_after(monkeypatch, make_trainer(tmp_path, tiny_dataset), 5)
    state = torch.load(tmp_path / "out" / "last.pt", weights_only=True)
    assert state["iteration"] == state["best"]["iteration"] == 4
    assert state["best_state"] is None and "targets" not in state
    make_trainer(tmp_path, tiny_dataset).fit()
    make_trainer(tmp_path, tiny_dataset, "full").fit()
    assert same_weights(tmp_path / "out", tmp_path / "full")


def test_train_cli_counts_in_words(tmp_path: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train_cli(tmp_path, tiny_dataset, "--set", "train.iterations=1") == 0
    assert ": 1 iteration in " in capsys.readouterr().out


# -- item 15: the log and the time survive a resume --------------------------------------------

def test_train_log_rows_and_total_seconds_survive_a_resume(tmp_path: Path, tiny_dataset: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    kill_after(monkeypatch, make_trainer(tmp_path, tiny_dataset), 5)
    lines = (out / "train_log.csv").read_text().splitlines()
    assert lines[0].startswith("iteration,") and [line.split(",")[0] for line in lines[1:]] == ["4"]
    # what a kill could leave: a row after the checkpoint (iteration 4) and a torn last line
    with open(out / "train_log.csv", "a") as handle:
        handle.write(lines[1].replace("4,", "6,", 1) + "\n" + lines[1][:7])
    state = torch.load(out / "last.pt", weights_only=True)
    state["seconds"] = 1000.0  # as if the killed run had trained for 1000 s
    torch.save(state, out / "last.pt")
    meta = make_trainer(tmp_path, tiny_dataset).fit()
    rows = (out / "train_log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["4", "8"]
    assert rows[1] == lines[1]
    assert meta["seconds"] >= 1000 and read_json(out / "meta.json")["seconds"] >= 1000


# -- item 4: leftovers of a kill ---------------------------------------------------------------

def test_rerun_removes_partial_checkpoint_and_keeps_user_files(tmp_path: Path, tiny_dataset: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    partial = out / ".last.pt.k2j4h1_x.part.pt"
    partial.write_bytes(b"half a checkpoint")
    (out / "notes.txt").write_text("mine")
    make_trainer(tmp_path, tiny_dataset).fit()
    assert not partial.exists() and (out / "notes.txt").read_text() == "mine"
    assert f"removed partial files a killed write left: {partial.name}" in capsys.readouterr().err


def test_sigterm_during_training_exits_143_without_partial_files(tmp_path: Path, tiny_dataset: Path) -> None:
    out = tmp_path / "out"
    config = {**FAST, "iterations": 100000, "checkpoint_interval": 1, "val_interval": 0, "log_interval": 1000}
    process = subprocess.Popen(
        [sys.executable, "-m", "cmfnet.cli", "train", "--card", str(write_card(tmp_path)), "--dataset",
         str(tiny_dataset), "--out", str(out), "--train-config", json.dumps(config), "--device", "cpu",
         "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180  # imports alone can take long on a loaded machine
    # send SIGTERM as soon as a checkpoint write is under way (or, failing that, once one exists)
    while time.time() < deadline and process.poll() is None:
        names = [p.name for p in out.iterdir()] if out.is_dir() else []
        if any(".part" in name for name in names) or "last.pt" in names:
            break
        time.sleep(0.001)
    else:
        process.kill()
        pytest.fail(f"training never wrote a checkpoint: {process.communicate()[1][-2000:]}")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "terminated (SIGTERM)" in err
    assert not [p.name for p in out.iterdir() if ".part" in p.name]


# -- item 3: a finished training is not redone -------------------------------------------------

def test_rerun_of_finished_training_does_nothing_and_force_retrains(
        tmp_path: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "out" / "model.pt"
    assert train_cli(tmp_path, tiny_dataset) == 0
    written = model.stat().st_mtime_ns
    capsys.readouterr()
    assert train_cli(tmp_path, tiny_dataset) == 0
    assert "exists and was trained with this card, config, fold and dataset" in capsys.readouterr().out
    assert model.stat().st_mtime_ns == written

    assert train_cli(tmp_path, tiny_dataset, "--set", "train.lr=0.01") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(model) in err[0] and "another card" in err[0] and "--force" in err[0]
    assert model.stat().st_mtime_ns == written

    assert train_cli(tmp_path, tiny_dataset, "--set", "train.lr=0.01", "--force") == 0
    assert "trained" in capsys.readouterr().out and model.stat().st_mtime_ns != written
    assert train_cli(tmp_path, tiny_dataset, "--set", "train.lr=0.01") == 0


# -- item 9: every bad value gets one line, and no output folder -------------------------------

BAD_VALUES = [
    # (card, overrides, expected words in the one line)
    (None, ["network.width=sixteen"], "network.width='sixteen': expected an int"),
    (None, ["train.iterations=abc"], "train.iterations='abc': expected an int"),
    (None, ["train.lr=fast"], "train.lr='fast': expected a number"),
    (None, ["train.lr=1e-3"], "write 1.0e-3"),
    (None, ["train.iterations=-5"], "train.iterations=-5: must be >= 1"),
    (None, ["train.iterations=0"], "train.iterations=0: must be >= 1"),
    (None, ["train.iterations=2.5"], "train.iterations=2.5: expected an int"),
    (None, ["train.iterations=true"], "train.iterations=True: expected an int"),
    (None, ["train.lr=0"], "train.lr=0: must be > 0"),
    (None, ["train.batch_size=0"], "train.batch_size=0: must be >= 1"),
    (None, ["train.fg_fraction=1.5"], "train.fg_fraction=1.5: must be in [0, 1]"),
    (None, ["train.val_overlap=1.0"], "train.val_overlap=1.0: must be in [0, 1)"),
    (None, ["train.val_interval=-1"], "train.val_interval=-1: must be >= 0"),
    (None, ["train.checkpoint_interval=0"], "train.checkpoint_interval=0: must be >= 1"),
    (None, ["train.log_interval=0"], "train.log_interval=0: must be >= 1"),
    (None, ["train.momentum=1.5"], "train.momentum=1.5: must be in [0, 1)"),
    (None, ["train.weight_decay=-0.5"], "train.weight_decay=-0.5: must be >= 0"),
    (None, ["train.seed=-1"], "train.seed=-1: must be >= 0"),
    (None, ["train.epochs=0"], "train.epochs=0: must be >= 1 or null"),
    (None, ["train.amp=maybe"], "train.amp='maybe': expected true or false"),
    (None, ["train.patch_size=[16,32]"], "train.patch_size=[16, 32]: must be three positive sides"),
    (None, ["train.patch_size=16"], "train.patch_size=16: expected a list of ints"),
    (None, ["train.optimizer=rmsprop"], "train.optimizer='rmsprop': must be adam or sgd"),
    (None, ["train.schedule=cosine"], "train.schedule='cosine': must be constant, poly or auto"),
    (None, ["train.val_reference=mask"], "train.val_reference='mask': must be label or scribble"),
    (None, ["train.warmup=5"], "unknown train options ['warmup']"),
    (None, ["network.dropout=1.5"], "network.dropout=1.5: must be in [0, 1)"),
    (None, ["network.depth=3"], "network.depth: not an option of network 'vnet'"),
    (None, ["network.arch=unet"], "network.arch: unknown network 'unet'"),
    (None, ["network.norm=layer"], "network.norm='layer': must be batch, instance, group or none"),
    (None, ["network.n_convs=[1,2]"], "network: n_convs needs one entry per stage (5 stages), got [1, 2]"),
    (None, ["network.n_convs=[1,2,x,3,3]"], "network.n_convs=[1, 2, 'x', 3, 3]: expected an int or a list of ints"),
    (None, ["network=5"], "network must be a mapping, got 5"),
    (None, ["params=3"], "params must be a mapping, got 3"),
    (None, ["params.weight=0.1"], "unknown params for plugin 'pce': ['weight']"),
    (None, ["channels=abc"], "channels='abc': expected a list of ints or null"),
    (None, ["channels=[0,0]"], "channels=[0, 0]: must be distinct channel indices >= 0"),
    (None, ["channels=[-1]"], "channels=[-1]: must be distinct channel indices >= 0"),
    (None, ["channels=[5]"], "channels [5] not in the dataset's 2 channels"),
    (None, ["supervision=dense"], "supervision must be 'scribble' or 'mask'"),
    ("em", ["params.weight=heavy"], "params.weight='heavy': expected a number"),
    ("em", ["params.rampup=true"], "params.rampup=True: expected a number"),
    ("em", ["params.rampup=1.5"], "params.rampup=1.5: an int counts iterations"),
    ("cmfnet", ["params.lambda_ct=high"], "params.lambda_ct='high': expected a number"),
    ("cmfnet", ["params.use_ssl=1"], "params.use_ssl=1: expected true or false"),
    ("cmfnet", ["params.crf_downsample=2"], "params.crf_downsample=2: expected a list of ints"),
    ("cmfnet", ["params.crf_radius=0"], "params.crf_radius must be >= 1"),
    ("cmfnet", ["params.output=pet"], "params.output must be one of"),
    ("cmfnet", ["network.cfe=yes please"], "network.cfe='yes please': expected true or false"),
    ("cmfnet", ["network.cfe=false"], "network: cff=True needs cfe=True"),
    ("s2l", ["params.ema_stride=[2,2]"], "params.ema_stride must be a positive int or 3 of them"),
    ("s2l", ["params.alpha=0"], "params.alpha must be in (0, 1]"),
    ("dmsps", ["params.stage2_lr=fast"], "params.stage2_lr='fast': expected a number or null"),
    ("dmsps", ["params.stage2_lr=0"], "params.stage2_lr=0: must be > 0 or null"),
    ("dmsps", ["params.uncertain_label=maybe"], "params.uncertain_label must be one of"),
    ("ustm", ["params.passes=0"], "params.passes must be at least 1"),
]


@pytest.mark.parametrize("card,overrides,words", BAD_VALUES, ids=[" ".join(o) for _, o, _ in BAD_VALUES])
def test_bad_value_is_one_line_exit_2_and_no_output_folder(card: str | None, overrides: list[str], words: str,
                                                           tmp_path: Path, tiny_dataset: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    card_path = REPO / "methods" / f"{card}.yaml" if card else write_card(tmp_path)
    extra = [arg for text in overrides for arg in ("--set", text)]
    assert train_cli(tmp_path, tiny_dataset, *extra, card=card_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("preset,words", [("train: {iterations: abc}\n", "train.iterations='abc'"),
                                          ("- 1\n- 2\n", "a train config must be a mapping")])
def test_bad_train_config_is_reported_against_it(preset: str, words: str, tmp_path: Path, tiny_dataset: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "preset.yaml"
    path.write_text(preset)
    code = main(["train", "--card", str(write_card(tmp_path)), "--dataset", str(tiny_dataset), "--out",
                 str(tmp_path / "out"), "--train-config", str(path), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0] and str(path) in err[0]


def test_failed_train_keeps_an_existing_output_folder_untouched(tmp_path: Path, tiny_dataset: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert train_cli(tmp_path, tiny_dataset, "--set", "train.iterations=abc") == 2
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_train_refuses_an_out_that_is_a_file(tmp_path: Path, tiny_dataset: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "out").write_text("not a folder")
    assert train_cli(tmp_path, tiny_dataset) == 2
    assert "is an existing file" in capsys.readouterr().err


# -- item 13: CmFNet on three channels ----------------------------------------------------------

def three_channel_dataset(source: Path, root: Path) -> Path:
    """The tiny dataset with a third channel (a copy of MR)."""
    shutil.copytree(source, root)
    meta = read_json(root / "dataset.json")
    meta["channel_names"]["2"] = "PET"
    meta["normalization"]["PET"] = {"scheme": "zscore"}
    write_json(meta, root / "dataset.json")
    for mr in sorted((root / "imagesTr").glob("*_0001.nii.gz")):
        shutil.copy(mr, mr.with_name(mr.name.replace("_0001", "_0002")))
    return root


def test_cmfnet_on_three_channels_says_how_to_pick_two(tmp_path: Path, tiny_dataset: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    dataset = three_channel_dataset(tiny_dataset, tmp_path / "three")
    card = REPO / "methods" / "cmfnet.yaml"
    assert train_cli(tmp_path, dataset, "--set", "network.width=2", "--set", "train.iterations=2",
                     card=card) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "got 3" in err[0] and "--set channels=[0,1]" in err[0]
    assert train_cli(tmp_path, dataset, "--set", "network.width=2", "--set", "train.iterations=2",
                     "--set", "channels=[0,1]", card=card) == 0
    assert read_json(tmp_path / "out" / "meta.json")["channel_names"] == ["CT", "MR"]


# -- item 10: model.pt is checked when loaded ---------------------------------------------------

@pytest.fixture
def trained(tmp_path: Path, tiny_dataset: Path) -> Path:
    trainer = Trainer(load_card(write_card(tmp_path)), Dataset(tiny_dataset), 0, tmp_path / "model",
                      TrainConfig(**{**FAST, "iterations": 1, "val_interval": 0}), device="cpu")
    trainer.fit()
    return tmp_path / "model"


def _damage(model: Path, how: str) -> None:
    state = torch.load(model / "model.pt", weights_only=True)
    first = next(iter(state["weights"]))
    if how == "no meta":
        del state["meta"]
    elif how == "no format":
        del state["format"]
    elif how == "format 2":
        state["format"] = 2
    elif how == "wrong shape":
        state["weights"][first] = torch.zeros(3, 3)
    elif how == "missing weight":
        del state["weights"][first]
    elif how == "extra weight":
        state["weights"]["head.extra"] = torch.zeros(1)
    elif how == "old meta":
        del state["meta"]["normalization"]
    torch.save(state, model / "model.pt")


@pytest.mark.parametrize("how,words", [
    ("no meta", "not a cmfnet model: no 'meta' record"),
    ("no format", "model format none (older than format 1), this cmfnet 0.1.0 reads format 1"),
    ("format 2", "model format 2, this cmfnet 0.1.0 reads format 1"),
    ("wrong shape", "weights do not fit the network of its card: shape of encoder"),
    ("missing weight", "weights do not fit the network of its card: missing encoder"),
    ("extra weight", "weights do not fit the network of its card: unexpected head.extra"),
    ("old meta", "meta lacks normalization"),
])
def test_damaged_model_pt_is_one_line_naming_it(how: str, words: str, trained: Path) -> None:
    _damage(trained, how)
    with pytest.raises(InputError) as raised:
        TrainedModel.load(trained)
    message = str(raised.value)
    assert message.startswith(str(trained / "model.pt")) and words in message and "\n" not in message


def test_model_from_a_newer_cmfnet_loads_with_a_warning(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = torch.load(trained / "model.pt", weights_only=True)
    state["meta"]["versions"]["cmfnet"] = "9.9.9"
    torch.save(state, trained / "model.pt")
    TrainedModel.load(trained)
    assert "written by cmfnet 9.9.9, newer than this 0.1.0" in capsys.readouterr().err


def test_last_pt_of_another_format_is_not_resumed(tmp_path: Path, tiny_dataset: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    kill_after(monkeypatch, make_trainer(tmp_path, tiny_dataset), 5)
    state = torch.load(out / "last.pt", weights_only=True)
    state["format"] = FORMAT_VERSION + 1
    torch.save(state, out / "last.pt")
    trainer = make_trainer(tmp_path, tiny_dataset)
    trainer.fit()
    assert f"checkpoint format {FORMAT_VERSION + 1}, this cmfnet 0.1.0 writes format {FORMAT_VERSION}" \
        in capsys.readouterr().err
    make_trainer(tmp_path, tiny_dataset, "fresh").fit()
    assert same_weights(out, tmp_path / "fresh")


def test_batch_norm_with_one_value_per_channel_is_refused_before_training(
        tmp_path: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """batch 1 and a 16^3 patch leave the V-Net's 1x1x1 bottleneck one value per channel: torch's
    ValueError used to surface as a traceback inside the training log."""
    code = train_cli(tmp_path, tiny_dataset, "--set", "train.batch_size=1",
                     "--set", "train.patch_size=[16,16,16]")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "BatchNorm one value per channel" in err[0], err
    assert not (tmp_path / "out").exists()
    assert train_cli(tmp_path, tiny_dataset, "--set", "train.batch_size=2",
                     "--set", "train.patch_size=[16,16,16]") == 0
