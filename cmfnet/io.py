"""Dataset format, NIfTI I/O and atomic writes.

A dataset is one folder, close to nnU-Net's raw format:

- ``imagesTr/{case}_{c:04d}.nii.gz``: channel ``c`` (0 = CT, 1 = MR for cross-modal data), all
  channels of a case on one voxel grid;
- ``labelsTr/{case}.nii.gz``: dense labels, uint8, 0 = background, 1..K classes;
- ``scribblesTr/{variant}/{case}.nii.gz``: scribbles, uint8, 0 = background scribble,
  k = class-k scribble, 255 = unlabelled;
- ``dataset.json``: channels, labels, spacing, cases and splits.

Arrays are always in SimpleITK's array order (z, y, x) and spacings are given in that same order.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import json
import os
import re
import secrets
import shutil
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import SimpleITK as sitk

from cmfnet.errors import InputError
from cmfnet.normalize import SCHEMES

IGNORE = 255
FILE_ENDING = ".nii.gz"
GRID_TOLERANCE = 1e-3
CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # as dataset.schema.json's case id pattern


@dataclass(frozen=True)
class Geometry:
    """Physical grid of an image: what a prediction must copy from its input."""

    shape: tuple[int, ...]  # (z, y, x)
    spacing: tuple[float, ...]  # (z, y, x), mm
    origin: tuple[float, ...]  # SimpleITK order (x, y, z)
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        return cls(
            shape=tuple(image.GetSize()[::-1]),
            spacing=tuple(float(s) for s in image.GetSpacing()[::-1]),
            origin=tuple(float(o) for o in image.GetOrigin()),
            direction=tuple(float(d) for d in image.GetDirection()),
        )

    @classmethod
    def default(cls, shape: tuple[int, ...], spacing: tuple[float, ...]) -> Geometry:
        """An axis-aligned grid at the origin (synthetic data)."""
        ndim = len(shape)
        return cls(tuple(shape), tuple(float(s) for s in spacing), (0.0,) * ndim,
                   tuple(np.eye(ndim).ravel().tolist()))

    def same_grid(self, other: Geometry, tol: float = GRID_TOLERANCE) -> bool:
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol * 10)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def apply(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing[::-1])
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "spacing": list(self.spacing),
                "origin": list(self.origin), "direction": list(self.direction)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Geometry:
        return cls(tuple(data["shape"]), tuple(data["spacing"]), tuple(data["origin"]),
                   tuple(data["direction"]))


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """Read a NIfTI (or any SimpleITK format) into a (z, y, x) array and its geometry."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a directory, not an image file")
    if not path.is_file():
        raise InputError(path, "file not found")
    problem = nifti_problem(path)
    if problem:
        raise InputError(path, problem)
    try:
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[-1] if str(err).strip() else "unreadable"
        raise InputError(path, f"cannot read image ({first_line[:160]})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, "expected a scalar image, found a vector image")
    return array, Geometry.of(image)


# header size -> offsets and struct codes of dim[8], datatype, bitpix and vox_offset
_NIFTI_HEADER = {348: {"dim": (40, "h"), "datatype": (70, "h"), "bitpix": (72, "h"), "vox_offset": (108, "f")},
                 540: {"dim": (16, "q"), "datatype": (12, "h"), "bitpix": (14, "h"), "vox_offset": (168, "q")}}
_NIFTI_FLOATS = {16: "f4", 64: "f8"}  # datatype codes of float32 and float64


def _nifti_payload_problem(data: bytes) -> str | None:
    """Whether decompressed NIfTI-1/2 bytes hold every voxel the header declares, all finite."""
    if len(data) < 4:
        return "file too short to be NIfTI"
    for endian in "<>":
        size = struct.unpack(endian + "i", data[:4])[0]
        if size in _NIFTI_HEADER:
            break
    else:
        return "not a NIfTI file (bad header size)"
    if len(data) < size:
        return f"truncated NIfTI header ({len(data)} of {size} bytes)"

    def field(name: str, count: int = 1) -> tuple:
        offset, code = _NIFTI_HEADER[size][name]
        return struct.unpack(endian + code * count, data[offset:offset + count * struct.calcsize(code)])

    dims = field("dim", 8)
    bitpix, datatype, vox_offset = field("bitpix")[0], field("datatype")[0], int(field("vox_offset")[0])
    if not 1 <= dims[0] <= 7 or bitpix <= 0 or min(dims[1:dims[0] + 1]) < 1:
        return "corrupt NIfTI header"
    voxels = int(np.prod(dims[1:dims[0] + 1], dtype=np.int64))
    start = max(vox_offset, size)
    stop = start + voxels * bitpix // 8
    if len(data) < stop:
        return f"truncated NIfTI ({len(data) - start} of {stop - start} bytes of voxel data)"
    if datatype in _NIFTI_FLOATS:
        values = np.frombuffer(data, np.dtype(endian + _NIFTI_FLOATS[datatype]), voxels, start)
        bad = voxels - int(np.count_nonzero(np.isfinite(values)))
        if bad:
            return f"contains NaN or inf ({bad} voxels; SimpleITK would silently read them as 0)"
    return None


def nifti_problem(path: Path) -> str | None:
    """Why a NIfTI file is incomplete, corrupt or non-finite, or None.

    SimpleITK reads a truncated ``.nii``/``.nii.gz`` without complaint (missing voxels come back as
    zeros) and turns NaN/inf into 0, so both are checked on the raw bytes: the gzip stream must
    end properly with a matching CRC, and the payload must hold every declared voxel, finite.
    """
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return None
    try:
        if name.endswith(".gz"):
            with gzip.open(path, "rb") as stream:
                data = stream.read()
        else:
            data = path.read_bytes()
    except (EOFError, OSError, zlib.error) as err:
        return f"corrupt or truncated file ({str(err) or type(err).__name__})"
    return _nifti_payload_problem(data)


def _temporary_sibling(path: Path, folder: bool = False) -> Path:
    """A hidden temporary name in the same folder (so the final rename is atomic).

    Only the name: the caller records it before creating it, so a signal can never leave a file
    behind that no ``finally`` knows of (signals reach Python between any two bytecodes).
    """
    suffix = ".part" if folder else ".part" + "".join(path.suffixes)
    return path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"


def _create(tmp: Path, folder: bool) -> bool:
    """Create ``tmp`` exclusively (file or folder); False if another writer took the name first."""
    try:
        if folder:
            tmp.mkdir()
        else:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    try:
        while not _create(tmp, folder=False):
            tmp = _temporary_sibling(path)
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # created 0600; give the permissions open() would
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary name and move it into place when complete.

    An existing directory at ``path`` is replaced only after the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path, folder=True)
    try:
        while not _create(tmp, folder=True):
            tmp = _temporary_sibling(path, folder=True)
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# Temporary names made by atomic_path (".NAME.XXXXXXXX.part.SUFFIXES") and atomic_dir
# (".NAME.XXXXXXXX.part", ".NAME.old"): the random part is eight characters.
def _partial_pattern(name: str) -> re.Pattern[str]:
    """The temporary names atomic_path/atomic_dir make for a file or folder matching ``name`` (a regex)."""
    return re.compile(rf"^\.{name}\.[A-Za-z0-9_]{{8}}\.part(\..+)?$|^\.{name}\.old$")


_PARTIAL = _partial_pattern(".+")


def leftover_partials(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Partial files and folders a killed write left in ``folder`` (SIGKILL runs no cleanup).

    With ``name``, only those of a write to ``folder/name`` (another write may be running beside it).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = _PARTIAL if name is None else _partial_pattern(re.escape(name))
    return sorted(p for p in folder.iterdir() if pattern.match(p.name))


def remove_leftover_partials(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete what :func:`leftover_partials` finds (only names this module makes); return them."""
    removed = leftover_partials(folder, name)
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed


def recover_leftovers(path: str | os.PathLike) -> list[str]:
    """Undo what a killed earlier :func:`atomic_dir` write to ``path`` left; say what, one note each.

    A kill between its two renames leaves no ``path`` but the previous folder as ``.NAME.old``:
    that is put back (the interrupted write never finished). Then the hidden ``.NAME.*.part``
    leftovers of ``path`` only (never those of another folder beside it) are removed.
    """
    path = Path(path)
    notes = []
    old = path.with_name(f".{path.name}.old")
    if not path.exists() and old.is_dir() and not old.is_symlink():
        os.replace(old, path)
        notes.append(f"{path}: restored the previous folder from {old.name} (an earlier write was killed "
                     "while swapping folders)")
    for leftover in remove_leftover_partials(path.parent, path.name):
        notes.append(f"removed {leftover}, left by a killed earlier write")
    return notes


def write_image(array: np.ndarray, path: str | os.PathLike, geometry: Geometry) -> None:
    """Write a (z, y, x) array with the given geometry, atomically."""
    if tuple(array.shape) != tuple(geometry.shape):
        raise ValueError(f"{path}: array shape {array.shape} != grid shape {geometry.shape}")
    image = geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(array)))
    path = Path(path)
    with atomic_path(path) as tmp:
        # SimpleITK picks the writer from the extension, so keep the real suffixes on the temp name.
        sitk.WriteImage(image, str(tmp), useCompression=True)


def write_json(data: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(path, f"invalid JSON ({err.msg} at line {err.lineno})") from None


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``1 case``, ``2 cases``: a number with its noun in the right number."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


# -- dataset.json: one schema, checked here for every reader ----------------------------------------
@functools.cache
def _dataset_validator() -> jsonschema.protocols.Validator:
    text = importlib.resources.files("cmfnet").joinpath("dataset.schema.json").read_text()
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
    checked. Split coverage (every case tested once, ...) is :func:`cmfnet.splits.check_splits`.
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
