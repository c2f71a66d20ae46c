"""Several recording sessions of one task: an ``xarray.DataTree`` with one child Dataset per session.

Sessions record different neurons (their own ``neuron`` ids and numbers, possibly overlapping)
on the same conditions, so they cannot share one ``(trial, time, neuron)`` array. Each child is a
single-session Dataset of the data model (:mod:`lfads_nb.data.schema`) and is validated on its
own; together they need the same kind, bin width and number of time bins, since a stitched model
runs one generator over the trials of every session. The root holds no variables (attributes
such as the generator's settings are fine)::

    tree = make_sessions({"monday": ds_a, "tuesday": ds_b})
    tree["monday"].to_dataset()          # the session's Dataset
    lfads_nb.save(tree, "sessions.nc")   # one netCDF group per session, written atomically
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr

from ..errors import DataError
from .kinds import kind_of
from .schema import validate


def session_names(tree: xr.DataTree) -> list[str]:
    """The sessions of a validated tree, in their order."""
    return list(tree.children)


def sessions_of(data: xr.Dataset | xr.DataTree, *, require_train: bool = False) -> dict[str | None, xr.Dataset]:
    """Each session's Dataset by name, validated (``require_train`` as in ``validate``): the sessions of
    a DataTree, in order, or a lone Dataset as the one session ``None``. Code that takes either form
    goes through here, so the two part ways in one place."""
    if isinstance(data, xr.DataTree):
        validate_sessions(data, require_train=require_train)
        return {name: data[name].to_dataset() for name in session_names(data)}
    return {None: validate(data, require_train=require_train)}


def validate_sessions(tree: xr.DataTree, *, require_train: bool = False) -> xr.DataTree:
    """Check that ``tree`` holds sessions as described in the module docstring; return it unchanged.

    Each session is checked by ``validate`` (``require_train`` as there); errors name the session.
    Raises :class:`DataError` naming the problem and the fix.
    """
    if not isinstance(tree, xr.DataTree):
        raise DataError(f"Expected an xarray.DataTree of sessions, got {type(tree).__name__}; build one with "
                        "lfads_nb.data.make_sessions({'session_a': ds_a, 'session_b': ds_b}).")
    if tree.data_vars:
        raise DataError(f"The tree's root holds variables {sorted(tree.data_vars)}; sessions' data belongs in "
                        "their own groups (the root may only hold attributes).")
    if not tree.children:
        raise DataError("The tree has no sessions; add one child Dataset per session with make_sessions.")
    firsts = {}
    for name, node in tree.children.items():
        if node.children:
            raise DataError(f"Session '{name}' has groups of its own ({sorted(node.children)}); a session is "
                            "one Dataset.")
        ds = node.to_dataset()
        try:
            validate(ds, require_train=require_train)
        except DataError as error:
            raise DataError(f"Session '{name}': {error}") from error
        shared = {"kind": kind_of(ds).name, "bin width (s)": float(ds.attrs["bin_width"]),
                  "number of time bins": ds.sizes["time"]}
        for what, value in shared.items():
            first_name, first = firsts.setdefault(what, (name, value))
            if not np.isclose(value, first, rtol=1e-9, atol=0) if isinstance(value, float) else value != first:
                raise DataError(f"Session '{name}' has {what} {value!r} but session '{first_name}' has {first!r}; "
                                "sessions of one model need the same kind, bin width and trial length. Bring "
                                "them to one grid first: rebin to a common bin width, and crop trials to the "
                                "same bins (e.g. ds.isel(time=slice(0, n_bins))).")
    return tree


def make_sessions(datasets: Mapping[str, xr.Dataset], **attrs) -> xr.DataTree:
    """A validated tree of sessions from ``{name: Dataset}`` (names are netCDF group names: no '/').

    ``attrs`` become the root's attributes. Each Dataset keeps its own neurons and trials.
    """
    if not isinstance(datasets, Mapping) or not datasets:
        raise DataError("make_sessions needs a non-empty mapping {session name: Dataset}.")
    for name, ds in datasets.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise DataError(f"Session name {name!r} must be a non-empty string without '/' (a netCDF group name).")
        if not isinstance(ds, xr.Dataset):
            raise DataError(f"Session '{name}' is a {type(ds).__name__}; give each session as an xarray.Dataset.")
    tree = xr.DataTree.from_dict(dict(datasets))
    tree.attrs.update(attrs)
    return validate_sessions(tree)
