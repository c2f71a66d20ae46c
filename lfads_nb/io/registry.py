"""The reader registry: ``load`` finds the format of a file from its content.

``load`` tries the readers of ``READERS`` in order, each a :class:`Reader` (name, ``sniff`` from the
content, ``read``), so another format is one more entry; a file none of them takes raises
:class:`DataError` listing what each looks for.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import xarray as xr

from ..data.sessions import sessions_of
from ..errors import ConfigError, DataError
from .common import is_hdf5, open_hdf5
from .lfads_h5 import is_lfads, read_lfads
from .netcdf import is_netcdf4, read_netcdf
from .nwb import is_nwb, read_nwb


@dataclass(frozen=True)
class Reader:
    """A file format ``load`` reads. ``sniff(path)`` says whether the file at ``path`` is in this
    format, from its content, raising :class:`DataError` for a file it cannot open.
    ``read(path, kind=..., bin_width=..., **options)`` returns its Dataset (``load`` validates it);
    ``options`` names the format's own keyword options of ``load`` (e.g. NWB's ``align_to``).
    ``needs`` says what ``sniff`` looks for, for the error ``load`` raises when no reader takes a file."""

    name: str
    sniff: Callable[[Path], bool]
    read: Callable[..., xr.Dataset]
    needs: str
    options: tuple[str, ...] = ()


# The formats load() tries, in order; a new format is one more entry.
READERS = [
    Reader(
        "LFADS HDF5", is_lfads, read_lfads,
        "HDF5 with train_encod_data and train_recon_data, or train_data, or the same for valid/test",
    ),
    Reader("lfads_nb netCDF-4", is_netcdf4, read_netcdf, "HDF5 with the netCDF-4 mark '_NCProperties'"),
    Reader("NWB", is_nwb, read_nwb, "HDF5 with the root attribute 'nwb_version'",
           ("align_to", "window", "condition", "behavior", "seed")),
]


def _no_reader(path: Path) -> DataError:
    """The error for a file no reader takes: what each needs and what the file is."""
    tried = "; ".join(f"{r.name} ({r.needs})" for r in READERS)
    if is_hdf5(path):
        with open_hdf5(path) as f:
            found = f"It is HDF5 with keys {sorted(f.keys())}."
    else:
        found = (
            "It is not HDF5. If it is netCDF-3, convert it: "
            "xr.open_dataset(path).to_netcdf(new_path, engine='h5netcdf')."
        )
    return DataError(f"{path} is in none of the formats lfads_nb reads; tried {tried}. {found}")


def load(path, kind: str | None = None, bin_width: float | None = None, **options) -> xr.Dataset:
    """Read a dataset from a file in one of the formats of ``READERS``: an lfads_nb netCDF file,
    an LFADS / lfads-torch HDF5 file, or an NWB file.

    The format is detected from the content, not the extension: the readers are tried in order
    and the first whose ``sniff`` takes the file reads it. ``kind`` (a name in ``KINDS``) says what
    an LFADS file's arrays hold: None means the stored kind, else ``'spikes'``. ``bin_width``
    (seconds) is for LFADS files, which may not store one: None means the stored value, else
    0.01 s. An explicit kind or bin width that contradicts the stored one is refused. The result is
    validated and held in memory (the file is closed). Raises :class:`DataError` for a missing,
    corrupt or inconsistent file, or one no reader takes (naming what each looks for).

    NWB files (spike times, :mod:`lfads_nb.io.nwb`) need ``bin_width`` and take ``options``:
    ``window=(start, end)`` in seconds around each trial's ``align_to`` event (a trials column;
    default ``'start_time'``), ``condition`` (a trials column), ``behavior`` (the names of series
    of the ``behavior`` processing module; default all) and ``seed`` (of the stratified split made
    when the trials table has no ``split`` column). An option the file's format does not take
    raises :class:`ConfigError`.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"No file at {path} (working folder {Path.cwd()}); check the path.")
    if path.is_dir():
        raise DataError(f"{path} is a folder; give the path of a .nc or .h5 file inside it.")
    reader = next((r for r in READERS if r.sniff(path)), None)
    if reader is None:
        raise _no_reader(path)
    unknown = sorted(set(options) - set(reader.options))
    if unknown:
        takes = (f"takes only {list(reader.options)}" if reader.options
                 else "takes no options besides kind and bin_width")
        raise ConfigError(f"load() got {unknown} for {path}, a {reader.name} file, which {takes}.")
    ds = reader.read(path, kind=kind, bin_width=bin_width, **options)
    try:
        sessions_of(ds)  # validates a Dataset, or each session of a DataTree
        return ds
    except DataError as error:
        raise DataError(f"{path}: {error}") from error
