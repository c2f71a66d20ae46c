"""What the file formats share: atomic writes, HDF5 sniffing, and ``load``'s ``kind`` and
``bin_width`` options checked against the values a file stores.

Writes are atomic: the data goes to a hidden temporary file ``.<name>.<random>.tmp`` in the target
folder, which replaces ``path`` only once it is complete, so an interrupted write never leaves half a
file and never destroys an existing one (a killed process may leave the hidden temporary file
behind). Parent folders are not created: a missing folder raises :class:`DataError`, so a typo in a
path cannot scatter new folders around.
"""
from __future__ import annotations

import numbers
import os
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from ..data.kinds import get_kind
from ..errors import DataError

DEFAULT_BIN_WIDTH = 0.01  # seconds, assumed for LFADS files that store none
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def atomic_write(path, write) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then move it onto ``path``."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise DataError(f"{path} is a folder; give a file path such as {path / 'data.nc'}.")
    if not path.parent.is_dir():
        raise DataError(
            f"The folder {path.parent} does not exist; create it first with "
            f"Path({str(path.parent)!r}).mkdir(parents=True)."
        )
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the bytes reach the disk before the rename makes them visible
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise DataError(
                f"Could not write {path}: {error}. Check that the folder is writable and has free space."
            ) from error
        raise
    return path


def is_hdf5(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            if f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                return True
        return bool(h5py.is_hdf5(path))  # finds files whose HDF5 data starts after a user block
    except OSError as error:
        raise DataError(f"Cannot read {path} ({error}); check its permissions.") from error


@contextmanager
def open_hdf5(path: Path):
    """``h5py.File(path, 'r')``, with a file that cannot be opened as a :class:`DataError`."""
    try:
        f = h5py.File(path, "r")
    except OSError as error:
        raise DataError(f"Cannot open {path} ({error}); the file is corrupt or truncated.") from error
    with f:
        yield f


def resolve_bin_width(stored, given, path: Path) -> float:
    """The bin width in seconds: the stored one (``given`` must agree), else ``given``, else the default."""
    for value, origin in ((given, "bin_width"), (stored, f"The bin_width stored in {path}")):
        if value is None:
            continue
        if (
            isinstance(value, (bool, np.bool_))
            or not isinstance(value, numbers.Real)
            or not np.isfinite(value)
            or value <= 0
        ):
            raise DataError(f"{origin} is {value!r}; it must be a positive number of seconds, e.g. 0.01.")
    if given is not None and stored is not None and not np.isclose(given, stored, rtol=1e-9, atol=0):
        raise DataError(
            f"{path} stores bin_width={stored} s but bin_width={given} was passed; "
            "omit bin_width to use the stored value (re-binning needs new counts, not a new label)."
        )
    if stored is not None:
        return float(stored)
    if given is not None:
        return float(given)
    warnings.warn(
        f"{path} stores no bin width; assuming {DEFAULT_BIN_WIDTH} s bins. "
        "Pass load(path, bin_width=...) with the real bin width in seconds.",
        stacklevel=5,  # point at the caller of load() (via load, the reader, _read_lfads)
    )
    return DEFAULT_BIN_WIDTH


def resolve_kind(stored, given, path: Path) -> str | None:
    """The data kind's name: the stored one (``given`` must agree), else ``given``; None if neither."""
    if isinstance(stored, bytes):  # some writers store fixed-width byte strings
        stored = stored.decode()
    for value, origin in ((given, "kind"), (stored, f"The kind stored in {path}")):
        if value is not None:
            try:
                get_kind(value)
            except DataError as error:
                raise DataError(f"{origin}: {error}") from error
    if given is not None and stored is not None and given != stored:
        raise DataError(
            f"{path} stores kind={stored!r} but kind={given!r} was passed; omit kind to use the stored one."
        )
    return stored if stored is not None else given
