"""The `cmfnet` command: its subcommand registry, one-line errors with exit code 2, SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest

from cmfnet import cli
from cmfnet.errors import InputError


@pytest.fixture
def toy_command(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A module that owns a subcommand `toy`, registered as the real ones are (COMMANDS)."""
    module = types.ModuleType("toy_cli_module")

    def run(args: argparse.Namespace) -> int:
        if args.what == "bad":
            raise InputError("toy.yaml", "no such thing")
        if args.what == "term":
            os.kill(os.getpid(), signal.SIGTERM)
        return 0

    def add_parser(subparsers: argparse._SubParsersAction) -> None:
        parser = subparsers.add_parser("toy", help="a toy command")
        parser.add_argument("what")
        parser.set_defaults(func=run)

    module.add_parser = add_parser
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cli.COMMANDS, "toy", module.__name__)
    return module


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {name: sub for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name, sub in action.choices.items()}


def handlers(parser: argparse.ArgumentParser) -> list[object]:
    """The func of a command, or of each of its own subcommands (`cmfnet import <format>`)."""
    nested = subcommands(parser)
    return [parser.get_default("func")] if not nested else [f for sub in nested.values() for f in handlers(sub)]


def test_every_registered_module_adds_exactly_its_subcommand() -> None:
    registered = subcommands(cli.build_parser())
    assert list(registered) == list(cli.COMMANDS)
    for command in cli.COMMANDS:
        assert list(subcommands(cli.build_parser(command))) == [command]
        assert all(callable(func) for func in handlers(registered[command])), command


def test_a_subcommand_imports_only_its_own_module() -> None:
    """`cmfnet synth` builds only its own parser, so it starts without importing torch."""
    code = "import sys; from cmfnet.cli import build_parser; build_parser('synth'); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_a_registered_command_runs_and_bad_input_is_one_line_with_exit_2(
        toy_command: types.ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["toy", "fine"]) == 0
    assert cli.main(["toy", "bad"]) == 2
    assert capsys.readouterr().err == "cmfnet toy: error: toy.yaml: no such thing\n"


def test_sigterm_exits_143_with_one_line(toy_command: types.ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert cli.main(["toy", "term"]) == 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert capsys.readouterr().err == "cmfnet toy: terminated (SIGTERM); partial files removed\n"


def test_a_real_command_reports_a_missing_file_in_one_line(tmp_path: Path) -> None:
    cmfnet = Path(sys.executable).with_name("cmfnet")
    result = subprocess.run([str(cmfnet), "evaluate", "--pred", str(tmp_path / "pred"), "--ref",
                             str(tmp_path / "ref"), "--out", str(tmp_path / "m.csv")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("cmfnet evaluate: error: ") and str(tmp_path) in result.stderr
    assert not (tmp_path / "m.csv").exists()


def test_an_unknown_subcommand_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["trian"])
    assert exit_.value.code == 2
