"""Dataset format, NIfTI I/O and atomic writes (``dataset.json`` and :class:`Dataset`: :mod:`cmfnet.data.dataset`).

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

import gzip
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

import numpy as np
import SimpleITK as sitk

from cmfnet.errors import InputError

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


