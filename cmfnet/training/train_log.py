"""``train_log.csv``: the training engine's per-interval log, safe against a kill at any point."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from cmfnet.data.io import atomic_path


class TrainLog:
    """``train_log.csv``, appended row by row as training makes them, so that a kill loses none.

    A row is one line, written and flushed in one call: a kill mid-row leaves a torn last line
    without its newline, which a resume drops together with every row after the checkpoint (they
    are made again). A row with a new column rewrites the file atomically with the wider header,
    which happens once or twice per run (the first row, the first validation).
    """

    def __init__(self, path: Path, resume_at: int | None = None) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self.keys: list[str] = []
        if resume_at is not None and path.is_file():
            text = path.read_text()
            complete = text[:text.rfind("\n") + 1]
            reader = csv.DictReader(io.StringIO(complete))
            for row in reader:
                if None in row.values() or not row["iteration"].isdigit():
                    continue  # not a row this class wrote
                if int(row["iteration"]) <= resume_at:
                    self.rows.append({k: v for k, v in row.items() if k is not None})
            self.keys = list(reader.fieldnames or [])
        self._rewrite()

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        new = [k for k in row if k not in self.keys]
        if new:
            self.keys += new
            self._rewrite()
            return
        line = io.StringIO()
        csv.DictWriter(line, fieldnames=self.keys, lineterminator="\n").writerow(row)
        with open(self.path, "a", newline="") as handle:
            handle.write(line.getvalue())

    def _rewrite(self) -> None:
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as handle:
            if self.keys:
                writer = csv.DictWriter(handle, fieldnames=self.keys, lineterminator="\n")
                writer.writeheader()
                writer.writerows(self.rows)
