"""The dataset folder and its ``dataset.json``: one schema (``dataset.schema.json``) checked for
every reader, and :class:`Dataset`, which reads cases, labels, scribbles and splits from it.

The folder layout, close to nnU-Net's raw format, is described in :mod:`cmfnet.data.io`.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import SimpleITK as sitk

from cmfnet.data.io import FILE_ENDING, IGNORE, Geometry, counted, read_image, read_json
from cmfnet.data.normalize import SCHEMES
from cmfnet.errors import InputError


# -- dataset.json: one schema, checked here for every reader ----------------------------------------
@functools.cache
def _dataset_validator() -> jsonschema.protocols.Validator:
    text = importlib.resources.files("cmfnet.data").joinpath("dataset.schema.json").read_text()
    schema = json.loads(text)
    return jsonschema.validators.validator_for(schema)(schema)


def _field(path: Any) -> str:
    """A JSON location as the user would write it: ``splits[0].train[2]``, ``labels.tumour``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _found(value: Any) -> str:
    """What a wrong value is, in a few words (``an object``, ``the string 'abc'``, ``null``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value[:60]!r}"
    if isinstance(value, list):
        return f"a list of {counted(len(value), 'item')}"
    return "an object" if isinstance(value, dict) else type(value).__name__


def _schema_message(error: jsonschema.ValidationError) -> str:
    """One schema violation as one sentence naming the field."""
    field = _field(error.absolute_path)
    where = f"'{field}'" if field else "dataset.json"
    if error.validator == "required":
        missing = next(k for k in error.validator_value if k not in error.instance)
        return f"missing key '{missing}'" if not field else f"{where}: missing key '{missing}'"
    if error.validator == "additionalProperties" and error.validator_value is False:
        allowed = ", ".join(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return f"{where}: unknown key {', '.join(repr(k) for k in unknown)} (allowed: {allowed})"
    if "propertyNames" in error.schema_path:
        return f"{where}: key {error.instance!r} must be {error.schema['description']}"
    expected = error.schema.get("description", error.message)
    if error.validator in ("minItems", "maxItems", "minProperties") and isinstance(error.instance, (list, dict)):
        return f"{where} must be {expected}, found {counted(len(error.instance), 'item')}"
    return f"{where} must be {expected}, found {_found(error.instance)}"


def _meaning_problems(meta: dict[str, Any]) -> list[str]:
    """What a schema cannot say: channel keys 0..N-1, labels 0..K with background 0, unique case
    ids, numTraining, and normalisation entries for known channels with known schemes."""
    problems = []
    channels = meta["channel_names"]
    if sorted(channels, key=int) != [str(i) for i in range(len(channels))]:
        problems.append(f"'channel_names' keys must be '0'..'{len(channels) - 1}', found {sorted(channels, key=int)}")
    ids = sorted(meta["labels"].values())
    if ids != list(range(len(ids))):
        problems.append(f"'labels' must map names to consecutive ids 0..K, found {meta['labels']}")
    elif meta["labels"].get("background") != 0:
        problems.append("'labels': id 0 must be named 'background'")
    cases = meta["cases"]
    duplicates = sorted({c for c in cases if cases.count(c) > 1})
    if duplicates:
        problems.append(f"'cases': duplicate case ids {duplicates[:5]}")
    if "numTraining" in meta and meta["numTraining"] != len(cases):
        problems.append(f"'numTraining' {meta['numTraining']} != the {counted(len(cases), 'case')} listed")
    names = set(channels.values())
    for name, spec in meta.get("normalization", {}).items():
        if name not in names:
            problems.append(f"'normalization.{name}': no channel named '{name}'")
        elif spec.get("scheme", "zscore") not in SCHEMES:
            problems.append(f"'normalization.{name}.scheme': unknown scheme '{spec['scheme']}' "
                            f"(known: {', '.join(SCHEMES)})")
    return problems


def dataset_json_problems(meta: Any) -> list[str]:
    """Every problem of a parsed dataset.json, one sentence each, naming the field; [] if sound.

    The types come from ``dataset.schema.json``; only when they are right are the meanings
    checked. Split coverage (every case tested once, ...) is :func:`cmfnet.data.splits.check_splits`.
    """
    errors = sorted(_dataset_validator().iter_errors(meta), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        return list(dict.fromkeys(_schema_message(e) for e in errors))
    return _meaning_problems(meta)


def read_dataset_json(path: str | os.PathLike) -> dict[str, Any]:
    """A dataset.json that holds to the schema, or an InputError naming the file and the field."""
    meta = read_json(path)
    problems = dataset_json_problems(meta)
    if problems:
        more = f" (and {counted(len(problems) - 1, 'more problem')}: cmfnet validate lists them)" \
            if len(problems) > 1 else ""
        raise InputError(path, problems[0] + more)
    return meta


class Dataset:
    """A dataset folder in the suite's format, with validating loaders.

    Loading checks what training and evaluation rely on (every channel on one grid, label and
    scribble values within the declared classes) and raises :class:`InputError` naming the file.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.meta: dict[str, Any] = read_dataset_json(self.root / "dataset.json")

    # -- description -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.root.name))

    @property
    def channels(self) -> list[str]:
        names = self.meta["channel_names"]
        return [names[str(i)] for i in range(len(names))]

    @property
    def num_channels(self) -> int:
        return len(self.meta["channel_names"])

    @property
    def labels(self) -> dict[str, int]:
        return {name: int(v) for name, v in self.meta["labels"].items()}

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return max(self.labels.values()) + 1

    @property
    def class_names(self) -> dict[int, str]:
        return {v: name for name, v in self.labels.items()}

    @property
    def cases(self) -> list[str]:
        return list(self.meta["cases"])

    @property
    def splits(self) -> list[dict[str, list[str]]]:
        splits = self.meta.get("splits")
        if not splits:
            raise InputError(self.root / "dataset.json", "no 'splits' defined")
        return splits

    def split(self, fold: int) -> dict[str, list[str]]:
        splits = self.splits
        if not 0 <= fold < len(splits):
            raise InputError(self.root / "dataset.json",
                             f"fold {fold} out of range (dataset has {len(splits)} folds)")
        return splits[fold]

    def training_cases(self) -> list[str]:
        """Cases that are training cases in at least one fold: the only ones that get scribbles."""
        seen = {c for split in self.splits for c in split["train"]}
        return [c for c in self.cases if c in seen]

    # -- paths -------------------------------------------------------------------------------
    def image_paths(self, case: str) -> list[Path]:
        return [self.root / "imagesTr" / f"{case}_{c:04d}{FILE_ENDING}"
                for c in range(self.num_channels)]

    def label_path(self, case: str) -> Path:
        return self.root / "labelsTr" / f"{case}{FILE_ENDING}"

    def scribble_path(self, case: str, variant: str) -> Path:
        return self.root / "scribblesTr" / variant / f"{case}{FILE_ENDING}"

    # -- loading -----------------------------------------------------------------------------
    def load_image(self, case: str) -> tuple[np.ndarray, Geometry]:
        """All channels of a case as a float32 (C, z, y, x) array, after checking they share a grid."""
        arrays, first = [], None
        for path in self.image_paths(case):
            if not path.exists():
                raise InputError(path, f"missing modality '{self.channels[len(arrays)]}' of case {case}")
            array, geometry = read_image(path)
            if first is None:
                first = geometry
            elif not geometry.same_grid(first):
                raise InputError(path, f"grid {geometry.shape} @ {geometry.spacing} mm differs from "
                                       f"channel 0 ({first.shape} @ {first.spacing} mm)")
            if not np.isfinite(array).all():
                raise InputError(path, "contains NaN or inf")
            arrays.append(array.astype(np.float32, copy=False))
        assert first is not None
        return np.stack(arrays), first

    def geometry(self, case: str) -> Geometry:
        reader = sitk.ImageFileReader()
        path = self.image_paths(case)[0]
        if not path.is_file():
            raise InputError(path, "file not found")
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            raise InputError(path, "cannot read image header") from None
        return Geometry(tuple(reader.GetSize()[::-1]), tuple(reader.GetSpacing()[::-1]),
                        tuple(reader.GetOrigin()), tuple(reader.GetDirection()))

    def _load_labelmap(self, path: Path, case: str, allow_ignore: bool) -> np.ndarray:
        array, geometry = read_image(path)
        if not geometry.same_grid(self.geometry(case)):
            raise InputError(path, f"grid {geometry.shape} @ {geometry.spacing} mm differs from the images")
        if not np.issubdtype(array.dtype, np.integer):
            if not np.array_equal(array, np.round(array)):
                raise InputError(path, "label map has non-integer values")
        values = np.unique(array)
        allowed = set(range(self.num_classes)) | ({IGNORE} if allow_ignore else set())
        bad = [int(v) for v in values if int(v) not in allowed]
        if bad:
            raise InputError(path, f"values {bad[:5]} outside the declared classes 0..{self.num_classes - 1}"
                                   + (f" (and {IGNORE} = unlabelled)" if allow_ignore else ""))
        return array.astype(np.uint8)

    def load_label(self, case: str) -> np.ndarray:
        """Dense labels. Only evaluation and fully-supervised training of train cases may call this."""
        return self._load_labelmap(self.label_path(case), case, allow_ignore=False)

    def load_scribble(self, case: str, variant: str) -> np.ndarray:
        path = self.scribble_path(case, variant)
        scribble = self._load_labelmap(path, case, allow_ignore=True)
        if (scribble != IGNORE).sum() == 0:
            raise InputError(path, "scribble is empty (no labelled voxel)")
        return scribble


def make_dataset_json(
    name: str,
    channels: list[str],
    labels: dict[str, int],
    cases: list[str],
    spacing: tuple[float, ...],
    splits: list[dict[str, list[str]]],
    **extra: Any,
) -> dict[str, Any]:
    """The dataset.json every writer of datasets (synth, importers) produces."""
    return {
        "name": name,
        "channel_names": {str(i): c for i, c in enumerate(channels)},
        "labels": dict(labels),
        "ignore_value": IGNORE,
        "spacing": [float(s) for s in spacing],
        "spacing_order": "zyx",
        "file_ending": FILE_ENDING,
        "numTraining": len(cases),
        "cases": list(cases),
        "splits": splits,
        **extra,
    }

