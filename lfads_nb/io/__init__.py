"""Saving and loading datasets: lfads_nb netCDF files and the LFADS HDF5 layout.

``save(ds, path)`` writes a validated Dataset to netCDF-4 (engine ``h5netcdf``) and
``load(path)`` reads it back identical. Writes are atomic: the data goes to a hidden
temporary file ``.<name>.<random>.tmp`` in the target folder, which replaces ``path`` only
once it is complete, so an interrupted write never leaves half a file and never destroys an
existing one (a killed process may leave the hidden temporary file behind). Parent folders
are not created: a missing folder raises :class:`DataError`, so a typo in a path cannot
scatter new folders around. What netCDF changes on the way: string variables come back as
numpy unicode arrays (``<U``) whatever their dtype was, list attributes come back as numpy
arrays, and attributes must be strings, numbers or arrays of them (no bools, dicts or None).

``load`` tries the readers of ``READERS`` in order, each a :class:`Reader` (name, ``sniff``
from the content, ``read``), so another format (e.g. NWB) is one more entry; a file none of them
takes raises :class:`DataError` listing what each looks for. Besides netCDF, ``load`` reads the
HDF5 layout of the original LFADS and lfads-torch (one array per key, trials x time x neurons)::

    {train,valid,test}_encod_data   data the encoders see (spike counts, or the kind's values)
    {train,valid,test}_recon_data   data the model reconstructs (encod neurons first)
    {train,valid,test}_data         older single-array form: encod = recon = this
    {train,valid,test}_truth        optional truth; truth / conversion_factor = expected value per bin
    {train,valid,test}_inds         optional trial ids (integers)
    {train,valid,test}_ext_input    optional external inputs (trials x time x inputs)
    conversion_factor               dataset or file attribute; absent means 1
    kind                            optional file attribute: the data kind (lfads_nb.data.kinds)
    s_min                           optional file attribute: calcium events' smallest event size

The data arrays hold the kind ``load(path, kind=...)`` names: ``'spikes'`` (counts, the
default), ``'emg'`` or ``'calcium_events'`` (floats, read as they are, never rounded); files
written by :func:`export_lfads_h5` store it as the file attribute ``kind``, and, as for the bin
width, an explicit kind that contradicts a stored one raises :class:`DataError` (in netCDF files
too, where it is the attribute ``kind``).

The layout has no bin width, so ``load(path, bin_width=...)`` takes it in seconds; files
written by :func:`export_lfads_h5` carry it as the file attribute ``bin_width``. With
``bin_width=None`` the stored value is used, else 0.01 s (with a warning); an explicit value
that contradicts a stored one raises :class:`DataError` (this also holds for netCDF files).
Trials are concatenated train, valid, test; with ``*_inds`` these are the trial ids and
trials are sorted by id (which restores the original order when ids are trial positions),
without them trials are numbered 0..n-1 in that concatenated order. Neurons are numbered
0..N-1 and time holds bin centres ``(t + 0.5) * bin_width``. ``*_truth`` becomes the ground truth
of the kind's ``infer`` output, in its units: ``rates_true`` in Hz (truth / conversion_factor /
bin_width) for spikes, ``emg_mean_true`` or ``events_mean_true`` in the data's units
(truth / conversion_factor) for EMG and calcium events.

Held-out neurons: when ``*_encod_data`` has fewer neurons than ``*_recon_data``, the extra
(last) recon neurons are held out (seen only by the reconstruction, as in NLB co-smoothing).
The observed variable keeps all recon neurons, and the boolean neuron coordinate ``heldout`` marks them
(True = held out). It exists only when some neuron is held out.

``export_lfads_h5(ds, path)`` writes that layout (``*_encod_data`` / ``*_recon_data``) so the
same data runs in lfads-torch: neurons with ``heldout`` True go only into recon data, after
the observed ones (so recon neurons are reordered observed-first when they were
interleaved); ``*_inds`` are the trial ids, which must be integers; ``*_truth`` holds the
kind's truth (``rates_true`` in Hz with ``conversion_factor = 1 / bin_width``, so truth /
conversion_factor is counts per bin, as lfads-torch expects; ``emg_mean_true`` or
``events_mean_true`` with ``conversion_factor = 1``); ``*_ext_input`` holds ``ext_input``; the
file attributes ``bin_width``, ``kind`` and ``s_min`` (if set) hold those of the dataset. lfads-torch
needs train and valid trials and cannot take NaN, so both raise :class:`DataError`; a test
split without trials is omitted. Condition labels, neuron ids, time offsets and the other
ground-truth variables have no place in the layout and are not written.
"""
from __future__ import annotations

import numbers
import os
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import xarray as xr

from ..data.kinds import get_kind, kind_of
from ..data.schema import SPLITS, make_dataset, observed_variable, validate
from ..errors import DataError

DEFAULT_BIN_WIDTH = 0.01  # seconds, assumed for LFADS files that store none
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
OPTIONAL_LFADS_KEYS = ("truth", "inds", "ext_input")


# ----------------------------------------------------------------------------- atomic writes

def _atomic_write(path, write) -> Path:
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


# ----------------------------------------------------------------------------- netCDF

def _check_serializable(ds: xr.Dataset) -> None:
    """Refuse what netCDF cannot store, naming the variable or attribute, before writing."""
    owners = [("the dataset", ds.attrs)] + [(f"variable '{n}'", v.attrs) for n, v in ds.variables.items()]
    for owner, attrs in owners:
        for key, value in attrs.items():
            if isinstance(value, (bool, np.bool_)) or not isinstance(
                value, (str, bytes, numbers.Number, np.ndarray, list, tuple)
            ):
                raise DataError(
                    f"Attribute {key!r} of {owner} is {value!r} ({type(value).__name__}); netCDF "
                    "attributes must be strings, numbers or lists of them. Store bools as 0/1 and "
                    "dicts as JSON strings (json.dumps)."
                )
    for name, var in ds.variables.items():
        if var.dtype == object and not all(isinstance(v, str) for v in var.values.ravel()):
            raise DataError(
                f"Variable '{name}' is an object array holding non-strings (e.g. None or mixed "
                f"types); netCDF stores strings or numbers. Convert it, e.g. "
                f"ds['{name}'] = ds['{name}'].astype(str)."
            )


def save(ds: xr.Dataset, path) -> Path:
    """Validate ``ds`` and write it atomically to netCDF-4 at ``path`` (``.nc`` by convention).

    Returns the path written. The folder must exist. Raises :class:`DataError` for invalid
    data, values netCDF cannot store, or a path that cannot be written.
    """
    validate(ds)
    _check_serializable(ds)

    def write(tmp: Path) -> None:
        try:
            ds.to_netcdf(tmp, engine="h5netcdf")
        except DataError:
            raise
        except (TypeError, ValueError) as error:
            raise DataError(f"netCDF cannot store this dataset: {error}") from error

    return _atomic_write(path, write)


def save_scores(scores: xr.Dataset, path) -> Path:
    """Write a score table (any Dataset, e.g. a tutorial's ``scores_path`` table with dim ``method``)
    atomically to netCDF-4; unlike :func:`save` it is not held to the (trial, time, neuron) data model."""
    if not isinstance(scores, xr.Dataset):
        raise DataError(f"scores must be an xarray.Dataset, got {type(scores).__name__}.")
    _check_serializable(scores)
    return _atomic_write(path, lambda tmp: scores.to_netcdf(tmp, engine="h5netcdf"))


def _as_unicode(var: xr.DataArray) -> xr.DataArray:
    """A string variable as numpy unicode: bytes decoded as UTF-8, objects through ``str``."""
    values = var.values
    return var.copy(data=np.char.decode(values, "utf-8") if values.dtype.kind == "S" else values.astype(str))


def _read_netcdf(path: Path) -> xr.Dataset:
    try:
        with xr.open_dataset(path, engine="h5netcdf") as opened:
            ds = opened.load().drop_encoding()
    except (OSError, ValueError, KeyError) as error:
        raise DataError(
            f"{path} looks like netCDF but cannot be read ({error}); it may be corrupt."
        ) from error
    # Older xarray versions decode netCDF strings as object arrays, and fixed-width strings come
    # back as bytes (b'valid' != 'valid'); make them all numpy unicode.
    strings = {name: _as_unicode(ds[name]) for name in ds.variables if ds[name].dtype.kind in "OS"}
    return ds.assign_coords({n: v for n, v in strings.items() if n in ds.coords}).assign(
        {n: v for n, v in strings.items() if n in ds.data_vars}
    )


# ----------------------------------------------------------------------------- LFADS HDF5 (read)

def _read_array(f: h5py.File, key: str, path: Path) -> np.ndarray:
    if not isinstance(f[key], h5py.Dataset):
        raise DataError(f"'{key}' in {path} is an HDF5 group; LFADS files hold arrays under that key.")
    try:
        return f[key][()]
    except (OSError, KeyError, ValueError) as error:
        raise DataError(
            f"Cannot read '{key}' from {path} ({error}); the file is corrupt or truncated."
        ) from error


def _read_split(f: h5py.File, split: str, path: Path) -> dict | None:
    """The arrays of one split, checked against each other, or None if the file has none."""
    encod_key, recon_key = f"{split}_encod_data", f"{split}_recon_data"
    if encod_key in f or recon_key in f:
        for key, other in ((encod_key, recon_key), (recon_key, encod_key)):
            if other not in f:
                raise DataError(
                    f"{path} has '{key}' but no '{other}'; LFADS files need both "
                    "(write the same array twice when no neurons are held out)."
                )
        arrays = {"encod": _read_array(f, encod_key, path), "recon": _read_array(f, recon_key, path)}
    elif f"{split}_data" in f:
        encod_key = recon_key = f"{split}_data"  # messages name the key the file has
        arrays = {"encod": _read_array(f, encod_key, path)}
        arrays["recon"] = arrays["encod"]
    else:
        return None
    for name in OPTIONAL_LFADS_KEYS:
        if f"{split}_{name}" in f:
            arrays[name] = _read_array(f, f"{split}_{name}", path)

    encod, recon = arrays["encod"], arrays["recon"]
    for key, array in ((encod_key, encod), (recon_key, recon)):
        if array.ndim != 3:
            raise DataError(
                f"'{key}' in {path} has shape {array.shape}; expected (trial, time, neuron). "
                "Keep the axis of a single trial or neuron when writing it, e.g. data[..., np.newaxis]."
            )
    if recon.shape[0] == 0:
        raise DataError(f"The {split} split in {path} has zero trials; delete its keys or add trials.")
    if encod.shape[:2] != recon.shape[:2]:
        raise DataError(
            f"'{encod_key}' has shape {encod.shape} but '{recon_key}' has {recon.shape}; "
            "they need the same trials and time bins."
        )
    n_encod = encod.shape[2]
    if n_encod == 0 or n_encod > recon.shape[2]:
        raise DataError(
            f"'{encod_key}' has {n_encod} neurons and '{recon_key}' {recon.shape[2]}; encod data "
            "needs between 1 and all of the recon neurons (the extra recon neurons are held out)."
        )
    if not np.array_equal(encod, recon[..., :n_encod], equal_nan=encod.dtype.kind == "f"):
        raise DataError(
            f"'{encod_key}' differs from the first {n_encod} neurons of '{recon_key}'; lfads_nb reads "
            "held-out neurons as the last recon neurons, so recon data must start with the encod data."
        )
    if "truth" in arrays and arrays["truth"].shape != recon.shape:
        raise DataError(
            f"'{split}_truth' has shape {arrays['truth'].shape} but '{recon_key}' has {recon.shape}; "
            "truth needs one rate per recon (trial, time, neuron)."
        )
    if "inds" in arrays:
        inds = arrays["inds"]
        if inds.shape != (recon.shape[0],) or inds.dtype.kind not in "iu":
            raise DataError(
                f"'{split}_inds' has shape {inds.shape} and dtype {inds.dtype}; it needs one integer "
                f"trial id per {split} trial, i.e. shape ({recon.shape[0]},)."
            )
    if "ext_input" in arrays:
        ext = arrays["ext_input"]
        if ext.ndim != 3 or ext.shape[:2] != recon.shape[:2]:
            raise DataError(
                f"'{split}_ext_input' has shape {ext.shape}; expected ({recon.shape[0]}, "
                f"{recon.shape[1]}, n_inputs) to match '{recon_key}'."
            )
    return arrays


def _conversion_factor(f: h5py.File, path: Path) -> float:
    if "conversion_factor" in f:
        value = _read_array(f, "conversion_factor", path)
    else:
        value = f.attrs.get("conversion_factor", 1.0)
    value = np.asarray(value)
    if value.size != 1 or value.dtype.kind not in "iuf" or not np.isfinite(value) or value.item() <= 0:
        raise DataError(
            f"conversion_factor in {path} is {value!r}; it must be one positive number "
            "(truth / conversion_factor = expected counts per bin)."
        )
    return float(value.item())


def _bin_width(stored, given, path: Path) -> float:
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


def _kind(stored, given, path: Path) -> str | None:
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


def _read_lfads(f: h5py.File, path: Path, bin_width, kind) -> xr.Dataset:
    splits = {s: arrays for s in SPLITS if (arrays := _read_split(f, s, path)) is not None}

    first_name, first = next(iter(splits.items()))
    for name, arrays in splits.items():
        for what, key, axis in (
            ("time bins", "recon", 1), ("recon neurons", "recon", 2), ("encod neurons", "encod", 2)
        ):
            if arrays[key].shape[axis] != first[key].shape[axis]:
                raise DataError(
                    f"The {name} split in {path} has {arrays[key].shape[axis]} {what} but the "
                    f"{first_name} split has {first[key].shape[axis]}; all splits need the same."
                )
        for key in OPTIONAL_LFADS_KEYS:
            if (key in arrays) != (key in first):
                having = [s for s in splits if key in splits[s]]
                raise DataError(
                    f"Only the {having} splits in {path} have '*_{key}'; give every split "
                    f"('{name}_{key}' and '{first_name}_{key}') or none."
                )
        if "ext_input" in arrays and arrays["ext_input"].shape[2] != first["ext_input"].shape[2]:
            raise DataError(
                f"'{name}_ext_input' has {arrays['ext_input'].shape[2]} inputs but "
                f"'{first_name}_ext_input' has {first['ext_input'].shape[2]}; all splits need the same."
            )

    stored = f.attrs.get("bin_width")
    if isinstance(stored, np.ndarray) and stored.shape == (1,):  # some writers store a scalar so
        stored = stored[0]
    width = _bin_width(stored, bin_width, path)
    data_kind = get_kind(_kind(f.attrs.get("kind"), kind, path) or "spikes")
    data = np.concatenate([a["recon"] for a in splits.values()])
    labels = np.concatenate([[s] * len(a["recon"]) for s, a in splits.items()])
    truth = {}
    if "truth" in first:
        true_means = np.concatenate([a["truth"] for a in splits.values()])  # / conversion_factor: per bin
        dtype = true_means.dtype if true_means.dtype.kind == "f" else np.float64
        # to_output is a unit conversion, linear in the mean: this is its factor over conversion_factor.
        per_unit = data_kind.to_output(1.0, width) / _conversion_factor(f, path)
        # Truth already in the output's units (as export writes it: Hz for spikes) stays bit-exact.
        if not np.isclose(per_unit, 1.0, rtol=1e-12, atol=0):
            true_means = true_means * per_unit
        truth[data_kind.truth] = true_means.astype(dtype)
    if "ext_input" in first:
        truth["ext_input"] = np.concatenate([a["ext_input"] for a in splits.values()])
    if "inds" in first:
        ids = np.concatenate([a["inds"] for a in splits.values()])
        if len(np.unique(ids)) != len(ids):
            raise DataError(f"The '*_inds' in {path} repeat trial ids; every trial needs its own id.")
        order = np.argsort(ids, kind="stable")
    else:
        ids = np.arange(len(data))
        order = ids
    ds = make_dataset(
        data[order],
        width,
        data_kind.name,
        split_labels=labels[order],
        trial_ids=ids[order],
        **{name: values[order] for name, values in truth.items()},
    )
    if "s_min" in f.attrs:  # the ZIG's smallest event size, for calcium events; load validates it
        ds.attrs["s_min"] = float(np.asarray(f.attrs["s_min"]).item())
    n_encod = first["encod"].shape[2]
    if n_encod < data.shape[2]:
        ds = ds.assign_coords(heldout=("neuron", np.arange(data.shape[2]) >= n_encod))
    return ds


# ----------------------------------------------------------------------------- load

def _is_hdf5(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            if f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                return True
        return bool(h5py.is_hdf5(path))  # finds files whose HDF5 data starts after a user block
    except OSError as error:
        raise DataError(f"Cannot read {path} ({error}); check its permissions.") from error


@contextmanager
def _open_hdf5(path: Path):
    """``h5py.File(path, 'r')``, with a file that cannot be opened as a :class:`DataError`."""
    try:
        f = h5py.File(path, "r")
    except OSError as error:
        raise DataError(f"Cannot open {path} ({error}); the file is corrupt or truncated.") from error
    with f:
        yield f


def _is_lfads(path: Path) -> bool:
    if not _is_hdf5(path):
        return False
    with _open_hdf5(path) as f:
        return any(f"{s}_{key}" in f for s in SPLITS for key in ("encod_data", "recon_data", "data"))


def _is_netcdf4(path: Path) -> bool:
    if not _is_hdf5(path):
        return False
    with _open_hdf5(path) as f:
        return "_NCProperties" in f.attrs  # the mark netCDF-4 writers (h5netcdf, netCDF-C) leave


def _load_lfads(path: Path, *, kind, bin_width) -> xr.Dataset:
    try:
        with _open_hdf5(path) as f:
            return _read_lfads(f, path, bin_width, kind)
    except OSError as error:  # a read inside a file that opened
        raise DataError(f"Cannot read {path} ({error}); the file is corrupt or truncated.") from error


def _load_netcdf(path: Path, *, kind, bin_width) -> xr.Dataset:
    ds = _read_netcdf(path)
    if "kind" in ds.attrs or kind is not None:  # else the kind is read off the observed variable
        ds.attrs["kind"] = _kind(ds.attrs.get("kind"), kind, path)
    if "bin_width" in ds.attrs or bin_width is not None:  # else validate names the missing attribute
        ds.attrs["bin_width"] = _bin_width(ds.attrs.get("bin_width"), bin_width, path)
    return ds


@dataclass(frozen=True)
class Reader:
    """A file format ``load`` reads. ``sniff(path)`` says whether the file at ``path`` is in this
    format, from its content, raising :class:`DataError` for a file it cannot open.
    ``read(path, **options)`` returns its Dataset (``load`` validates it); the options are those
    of ``load`` (``kind``, ``bin_width``). ``needs`` says what ``sniff`` looks for, for the error
    ``load`` raises when no reader takes a file."""

    name: str
    sniff: Callable[[Path], bool]
    read: Callable[..., xr.Dataset]
    needs: str


# The formats load() tries, in order; a new format (e.g. NWB) is one more entry.
READERS = [
    Reader(
        "LFADS HDF5", _is_lfads, _load_lfads,
        "HDF5 with train_encod_data and train_recon_data, or train_data, or the same for valid/test",
    ),
    Reader("lfads_nb netCDF-4", _is_netcdf4, _load_netcdf, "HDF5 with the netCDF-4 mark '_NCProperties'"),
]


def _no_reader(path: Path) -> DataError:
    """The error for a file no reader takes: what each needs and what the file is."""
    tried = "; ".join(f"{r.name} ({r.needs})" for r in READERS)
    if _is_hdf5(path):
        with _open_hdf5(path) as f:
            found = f"It is HDF5 with keys {sorted(f.keys())}."
    else:
        found = (
            "It is not HDF5. If it is netCDF-3, convert it: "
            "xr.open_dataset(path).to_netcdf(new_path, engine='h5netcdf')."
        )
    return DataError(f"{path} is in none of the formats lfads_nb reads; tried {tried}. {found}")


def load(path, kind: str | None = None, bin_width: float | None = None) -> xr.Dataset:
    """Read a dataset from a file in one of the formats of ``READERS``: an lfads_nb netCDF file or
    an LFADS / lfads-torch HDF5 file.

    The format is detected from the content, not the extension: the readers are tried in order
    and the first whose ``sniff`` takes the file reads it. ``kind`` (a name in ``KINDS``) says what
    an LFADS file's arrays hold: None means the stored kind, else ``'spikes'``. ``bin_width``
    (seconds) is for LFADS files, which may not store one: None means the stored value, else
    0.01 s. An explicit kind or bin width that contradicts the stored one is refused. The result is
    validated and held in memory (the file is closed). Raises :class:`DataError` for a missing,
    corrupt or inconsistent file, or one no reader takes (naming what each looks for).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"No file at {path} (working folder {Path.cwd()}); check the path.")
    if path.is_dir():
        raise DataError(f"{path} is a folder; give the path of a .nc or .h5 file inside it.")
    reader = next((r for r in READERS if r.sniff(path)), None)
    if reader is None:
        raise _no_reader(path)
    ds = reader.read(path, kind=kind, bin_width=bin_width)
    try:
        return validate(ds)
    except DataError as error:
        raise DataError(f"{path}: {error}") from error


# ----------------------------------------------------------------------------- LFADS HDF5 (write)

def export_lfads_h5(ds: xr.Dataset, path) -> Path:
    """Write ``ds`` atomically in the LFADS HDF5 layout that lfads-torch reads; returns the path.

    Needs train and valid trials, integer trial ids and no NaN. See the module docstring
    for how held-out neurons, truth and the bin width are written.
    """
    validate(ds, require_train=True)
    kind = kind_of(ds)
    name = observed_variable(ds)
    counts = ds[name].values
    if counts.dtype.kind == "f" and np.isnan(counts).any():
        raise DataError(
            f"'{name}' has {int(np.isnan(counts).sum())} unobserved (NaN) bins, which lfads-torch "
            "cannot take. Drop the trials that have them, e.g. "
            f"ds.isel(trial=~ds['{name}'].isnull().any(['time', 'neuron']).values), "
            f"or fill them if zeros are right: ds['{name}'] = ds['{name}'].fillna(0)."
        )
    ids = ds["trial"].values
    if ids.dtype.kind not in "iu":
        raise DataError(
            f"Trial ids have dtype {ids.dtype}; the LFADS layout stores integer ids ('*_inds'). "
            "Number them first: ds = ds.assign_coords(trial=np.arange(ds.sizes['trial']))."
        )
    labels = ds["split"].values.astype(str)
    if not (labels == "valid").any():
        raise DataError(
            "The dataset has no validation trials (split == 'valid'); lfads-torch needs some. "
            "Relabel trials with ds.assign_coords(split=('trial', labels))."
        )
    heldout = np.zeros(ds.sizes["neuron"], bool)
    if "heldout" in ds.coords:  # validate has checked it is a bool per neuron
        heldout = ds["heldout"].values
        if heldout.all():
            raise DataError("Every neuron is marked heldout; the encoders need at least one observed neuron.")
    neuron_order = np.argsort(heldout, kind="stable")  # observed neurons first, as the layout needs
    n_encod = int((~heldout).sum())
    bin_width = float(ds.attrs["bin_width"])

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["bin_width"] = bin_width
            f.attrs["kind"] = kind.name
            if "s_min" in ds.attrs:
                f.attrs["s_min"] = float(ds.attrs["s_min"])
            for split in SPLITS:
                trials = np.flatnonzero(labels == split)
                if len(trials) == 0:
                    continue
                recon = counts[trials][..., neuron_order]
                f.create_dataset(f"{split}_encod_data", data=recon[..., :n_encod])
                f.create_dataset(f"{split}_recon_data", data=recon)
                f.create_dataset(f"{split}_inds", data=ids[trials].astype(np.int64))
                if kind.truth in ds.data_vars:
                    truth = ds[kind.truth].values[trials][..., neuron_order]
                    f.create_dataset(f"{split}_truth", data=truth)
                if "ext_input" in ds.variables:
                    ext_input = ds["ext_input"].transpose("trial", "time", ...).values[trials]
                    f.create_dataset(f"{split}_ext_input", data=ext_input)
            if kind.truth in ds.data_vars:  # truth / conversion_factor = expected value per bin
                f.create_dataset("conversion_factor", data=kind.to_output(1.0, bin_width))

    return _atomic_write(path, write)
