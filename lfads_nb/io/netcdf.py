"""lfads_nb's own files: netCDF-4 (engine ``h5netcdf``).

``save(ds, path)`` writes a validated Dataset to netCDF-4 and ``load(path)`` reads it back
identical; writes are atomic (:func:`lfads_nb.io.common.atomic_write`). What netCDF changes on the
way: string variables come back as numpy unicode arrays (``<U``) whatever their dtype was, list
attributes come back as numpy arrays, and attributes must be strings, numbers or arrays of them (no
bools, dicts or None). ``save`` also takes a DataTree of sessions (:mod:`lfads_nb.data.sessions`),
written the same way with one netCDF group per session, and ``load`` of such a file returns the
DataTree, each session validated. ``load``'s ``kind`` and ``bin_width`` are checked against the
attributes ``kind`` and ``bin_width`` as for LFADS files. ``save_scores`` writes a score table (any
Dataset) the same way.
"""
from __future__ import annotations

import numbers
from pathlib import Path

import h5py
import numpy as np
import xarray as xr

from ..data.schema import validate
from ..data.sessions import validate_sessions
from ..errors import DataError
from .common import atomic_write, is_hdf5, open_hdf5, resolve_bin_width, resolve_kind


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


def save(ds: xr.Dataset | xr.DataTree, path) -> Path:
    """Validate ``ds`` and write it atomically to netCDF-4 at ``path`` (``.nc`` by convention).

    ``ds`` is a Dataset, or a DataTree of sessions (:mod:`lfads_nb.data.sessions`), written as one
    netCDF group per session. Returns the path written. The folder must exist. Raises
    :class:`DataError` for invalid data, values netCDF cannot store, or a path that cannot be written.
    """
    if isinstance(ds, xr.DataTree):
        validate_sessions(ds)
        _check_serializable(ds.to_dataset())  # the root's attributes
        for name, node in ds.children.items():
            try:
                _check_serializable(node.to_dataset())
            except DataError as error:
                raise DataError(f"Session '{name}': {error}") from error
    else:
        validate(ds)
        _check_serializable(ds)

    def write(tmp: Path) -> None:
        try:
            ds.to_netcdf(tmp, engine="h5netcdf")
        except DataError:
            raise
        except (TypeError, ValueError) as error:
            raise DataError(f"netCDF cannot store this dataset: {error}") from error

    return atomic_write(path, write)


def save_scores(scores: xr.Dataset, path) -> Path:
    """Write a score table (any Dataset, e.g. a tutorial's ``scores_path`` table with dim ``method``)
    atomically to netCDF-4; unlike :func:`save` it is not held to the (trial, time, neuron) data model."""
    if not isinstance(scores, xr.Dataset):
        raise DataError(f"scores must be an xarray.Dataset, got {type(scores).__name__}.")
    _check_serializable(scores)
    return atomic_write(path, lambda tmp: scores.to_netcdf(tmp, engine="h5netcdf"))


def _as_unicode(var: xr.DataArray) -> xr.DataArray:
    """A string variable as numpy unicode: bytes decoded as UTF-8, objects through ``str``."""
    values = var.values
    return var.copy(data=np.char.decode(values, "utf-8") if values.dtype.kind == "S" else values.astype(str))


def _unicode_strings(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with its string variables as numpy unicode. Older xarray versions decode netCDF strings
    as object arrays, and fixed-width strings come back as bytes (b'valid' != 'valid')."""
    strings = {name: _as_unicode(ds[name]) for name in ds.variables if ds[name].dtype.kind in "OS"}
    return ds.assign_coords({n: v for n, v in strings.items() if n in ds.coords}).assign(
        {n: v for n, v in strings.items() if n in ds.data_vars}
    )


def _read_file(path: Path) -> xr.Dataset | xr.DataTree:
    """The Dataset of a netCDF file, or its DataTree when the file has groups (sessions)."""
    with open_hdf5(path) as f:
        has_groups = any(isinstance(item, h5py.Group) for item in f.values())
    try:
        if has_groups:
            with xr.open_datatree(path, engine="h5netcdf") as opened:
                tree = opened.load()
            return xr.DataTree.from_dict(
                {"/": tree.to_dataset().drop_encoding(),
                 **{name: _unicode_strings(node.to_dataset().drop_encoding()) for name, node in tree.children.items()}}
            )
        with xr.open_dataset(path, engine="h5netcdf") as opened:
            return _unicode_strings(opened.load().drop_encoding())
    except (OSError, ValueError, KeyError) as error:
        raise DataError(
            f"{path} looks like netCDF but cannot be read ({error}); it may be corrupt."
        ) from error


def is_netcdf4(path: Path) -> bool:
    """Whether ``path`` is HDF5 written by a netCDF-4 writer."""
    if not is_hdf5(path):
        return False
    with open_hdf5(path) as f:
        return "_NCProperties" in f.attrs  # the mark netCDF-4 writers (h5netcdf, netCDF-C) leave


def read_netcdf(path: Path, *, kind, bin_width) -> xr.Dataset | xr.DataTree:
    """The Dataset (or DataTree of sessions) of a netCDF file, ``kind`` and ``bin_width`` checked against
    the stored ones; ``load`` validates it."""
    data = _read_file(path)
    if isinstance(data, xr.DataTree):  # sessions: each one's kind and bin width as a Dataset's
        return xr.DataTree.from_dict({"/": data.to_dataset(), **{
            name: _netcdf_options(node.to_dataset(), path, kind, bin_width) for name, node in data.children.items()
        }})
    return _netcdf_options(data, path, kind, bin_width)


def _netcdf_options(ds: xr.Dataset, path: Path, kind, bin_width) -> xr.Dataset:
    """``ds`` with ``load``'s kind and bin width checked against the stored ones."""
    if "kind" in ds.attrs or kind is not None:  # else the kind is read off the observed variable
        ds.attrs["kind"] = resolve_kind(ds.attrs.get("kind"), kind, path)
    if "bin_width" in ds.attrs or bin_width is not None:  # else validate names the missing attribute
        ds.attrs["bin_width"] = resolve_bin_width(ds.attrs.get("bin_width"), bin_width, path)
    return ds
