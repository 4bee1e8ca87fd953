"""cmfnet.data.io's write safety: atomic files and folders, the partials a killed write leaves, read_json's errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmfnet.errors import InputError
from cmfnet.data.io import (atomic_dir, atomic_path, leftover_partials, read_json, recover_leftovers,
                       remove_leftover_partials, write_json)


class Boom(Exception):
    pass


def test_atomic_path_shows_the_file_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "table.csv"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".table.csv.") and tmp.suffix == ".csv"
        tmp.write_text("a,b\n")
        assert not target.exists()  # nothing under the final name while the write runs
    assert target.read_text() == "a,b\n" and leftover_partials(target.parent) == []


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_partial(tmp_path: Path) -> None:
    target = tmp_path / "meta.json"
    target.write_text("old")
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise Boom
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]


def test_atomic_dir_replaces_a_folder_only_when_the_new_one_is_complete(tmp_path: Path) -> None:
    target = tmp_path / "pred"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(Boom), atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("half")
        raise Boom
    assert [p.name for p in target.iterdir()] == ["old.txt"] and leftover_partials(tmp_path) == []
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"] and sorted(tmp_path.iterdir()) == [target]


def test_leftover_partials_finds_only_the_names_atomic_writes_make(tmp_path: Path) -> None:
    """A SIGKILL runs no cleanup: its partials are found (for one name, or all) and removed,
    and files the suite did not write (a user's hidden file, a file named like one) never are."""
    killed_file = tmp_path / ".a.nii.gz.1a2b3c4d.part.nii.gz"
    killed_dir = tmp_path / ".pred.deadbeef.part"
    swapped = tmp_path / ".pred.old"
    other = tmp_path / ".b.json.0000ffff.part.json"
    for path in (killed_file, other):
        path.write_text("x")
    for path in (killed_dir, swapped):
        path.mkdir()
        (path / "inside").write_text("x")
    mine = [tmp_path / ".hidden", tmp_path / "a.part", tmp_path / ".a.part", tmp_path / ".a.short.part"]
    for path in mine:
        path.write_text("user")
    assert leftover_partials(tmp_path) == sorted([killed_file, killed_dir, swapped, other])
    assert leftover_partials(tmp_path, "pred") == sorted([killed_dir, swapped])
    assert remove_leftover_partials(tmp_path, "pred") == sorted([killed_dir, swapped])
    assert leftover_partials(tmp_path) == sorted([killed_file, other])
    remove_leftover_partials(tmp_path)
    assert sorted(tmp_path.iterdir()) == sorted(mine)
    assert leftover_partials(tmp_path / "missing") == []


def test_recover_leftovers_puts_back_a_folder_a_kill_left_mid_swap(tmp_path: Path) -> None:
    target = tmp_path / "pred"
    old = tmp_path / ".pred.old"
    old.mkdir()
    (old / "case.nii.gz").write_text("previous")
    (tmp_path / ".pred.0a0b0c0d.part").mkdir()
    notes = recover_leftovers(target)
    assert (target / "case.nii.gz").read_text() == "previous" and not old.exists()
    assert len(notes) == 2 and "restored the previous folder" in notes[0] and "killed" in notes[1]
    assert sorted(tmp_path.iterdir()) == [target]


def test_read_json_names_the_file_and_the_problem(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found") as missing:
        read_json(tmp_path / "none.json")
    assert str(tmp_path / "none.json") in str(missing.value)
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,\n "b": }\n')
    with pytest.raises(InputError, match=r"invalid JSON \(Expecting value at line 2\)") as invalid:
        read_json(bad)
    assert str(bad) in str(invalid.value) and "\n" not in str(invalid.value)
    write_json({"a": [1, 2]}, tmp_path / "ok.json")
    assert read_json(tmp_path / "ok.json") == {"a": [1, 2]} == json.loads((tmp_path / "ok.json").read_text())
