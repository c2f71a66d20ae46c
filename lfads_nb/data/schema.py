"""The lfads_nb data model and its validation.

A dataset is an ``xarray.Dataset`` with dims ``(trial, time, neuron)``:

====================  ==========================  =============================================
name                  dims                        meaning
====================  ==========================  =============================================
observed variable     (trial, time, neuron)       the recording, named by its kind (NaN = not
                                                  observed): ``spikes`` (counts per bin),
                                                  ``emg`` (rectified, filtered EMG envelope) or
                                                  ``events`` (deconvolved calcium events)
``trial``             (trial,)                    trial ids (coordinate)
``time``              (time,)                     bin centres in seconds (coordinate)
``neuron``            (neuron,)                   neuron (channel) ids or names (coordinate)
``condition``         (trial,)                    condition label per trial (coordinate)
``split``             (trial,)                    'train', 'valid' or 'test' (coordinate)
``heldout``           (neuron,)                   optional bool coordinate: True for neurons the
                                                  encoder does not see (co-smoothing)
``forward``           (time,)                     optional bool coordinate: True for the last
                                                  bins, which the encoder does not see and the
                                                  model predicts (forward prediction)
``rates_true``        (trial, time, neuron)       optional ground-truth rates in Hz (spikes)
``emg_mean_true``     (trial, time, neuron)       optional ground-truth EMG mean (data units)
``events_mean_true``  (trial, time, neuron)       optional ground-truth event mean (data units)
``latents_true``      (trial, time, latent)       optional ground-truth latent state
``inputs_true``       (trial, time, input)        optional ground-truth inputs to the dynamics
``behavior``          (trial, time, behavior_dim) optional behaviour (e.g. hand velocity)
``ext_input``         (trial, time, ext_input_dim) optional external inputs fed to the generator
====================  ==========================  =============================================

and the attributes ``bin_width`` (seconds) and ``kind`` (``'spikes'``, ``'emg'`` or
``'calcium_events'``; without it the kind is read off the observed variable's name). Each kind's
rules, default observation model and output live in :mod:`lfads_nb.data.kinds` (``KINDS``), so a new
kind adds one entry there without touching the rest. The Dataset that ``lfads_nb.infer`` returns
follows the same model with the kind's output (``rates`` in Hz, ``emg_mean`` or ``events_mean``
in the data's units) in place of the observed variable, so it can be saved, loaded, sliced and
plotted the same way. ``validate`` checks all of this and raises :class:`DataError` with a
message that names the problem and the fix.
"""
from __future__ import annotations

import numbers
import zlib

import numpy as np
import xarray as xr

from ..errors import DataError
from .kinds import KINDS, DataKind, get_kind, kind_of

DIMS = ("trial", "time", "neuron")
SPLITS = ("train", "valid", "test")

# Optional per-trial time series, each with its own last dim: the ground truth of each kind's
# output (rates_true, emg_mean_true, events_mean_true), then the kind-free ones.
TRUTH_VARIABLES = {
    **{kind.truth: "neuron" for kind in KINDS.values()},
    "latents_true": "latent",
    "inputs_true": "input",
    "behavior": "behavior_dim",
    "ext_input": "ext_input_dim",
}


def _check_output(values: np.ndarray, name: str) -> None:
    """An ``infer`` output (expected values of non-negative data, e.g. rates in Hz): finite numbers >= 0."""
    if values.dtype.kind not in "iuf":
        raise DataError(f"'{name}' has dtype {values.dtype}; '{name}' must be numbers.")
    observed = values[~np.isnan(values)] if values.dtype.kind == "f" else values
    if not np.isfinite(observed).all():
        raise DataError(f"'{name}' contains infinite values; '{name}' must be finite.")
    if observed.size and observed.min() < 0:
        raise DataError(
            f"'{name}' has negative values (min {observed.min()}); '{name}' is the expected value of "
            "non-negative data and must be >= 0."
        )


def _present_variable(ds: xr.Dataset, kind: DataKind) -> str:
    """The kind's observed variable if ``ds`` holds it, else its ``infer`` output variable."""
    for name in (kind.variable, kind.output):
        if name in ds.data_vars:
            return name
    # kind_of found a variable unless ds.attrs['kind'] named the kind, so that attribute may be wrong
    raise DataError(
        f"The dataset has no observed variable; its kind is '{kind.name}', so expected '{kind.variable}' with "
        f"dims {DIMS}. Found variables {sorted(ds.data_vars)}; rename yours with "
        f"ds.rename({{'old': '{kind.variable}'}}), or fix ds.attrs['kind']."
    )


def heldin_mask(ds: xr.Dataset) -> np.ndarray:
    """Boolean per neuron: True for neurons the encoder sees (all unless a ``heldout`` coord says)."""
    if "heldout" in ds.coords:
        return ~ds["heldout"].values.astype(bool)
    return np.ones(ds.sizes["neuron"], dtype=bool)


def encoder_bins(ds: xr.Dataset) -> np.ndarray:
    """Boolean per time bin: True for bins the encoder sees (all unless a ``forward`` coord marks
    the last bins as forward-prediction bins, which only the reconstruction covers)."""
    if "forward" in ds.coords:
        return ~ds["forward"].values.astype(bool)
    return np.ones(ds.sizes["time"], dtype=bool)


def sample_validation_mask(ds: xr.Dataset, fraction: float, seed: int) -> np.ndarray:
    """Sample validation's fixed mask, (trial, time, neuron) bool, False for the entries held out of
    every split: each entry with probability ``fraction``, drawn per trial from a generator seeded by
    (``seed``, trial id), so the mask of a trial does not depend on the trial order."""
    shape = (ds.sizes["time"], ds.sizes["neuron"])
    if fraction == 0:
        return np.ones((ds.sizes["trial"],) + shape, dtype=bool)
    ids = ds["trial"].values
    keep = np.empty((len(ids),) + shape, dtype=bool)
    for i, trial_id in enumerate(ids):
        key = int(trial_id) if np.issubdtype(np.asarray(trial_id).dtype, np.integer) else zlib.crc32(str(trial_id).encode())
        keep[i] = np.random.default_rng([seed, key]).random(shape) >= fraction
    return keep


def training_values(ds: xr.Dataset, sv_fraction: float = 0.0, sv_seed: int = 0) -> np.ndarray:
    """The observed values (trial, time, neuron) a model may start from: the 'train' trials (all if
    none is labelled 'train'), NaN where sample validation (``sv_fraction``, ``sv_seed``) holds
    entries out. Raises DataError for neurons with nothing observed there."""
    values = ds[observed_variable(ds)].values.astype(np.float64)
    if sv_fraction > 0:
        values[~sample_validation_mask(ds, sv_fraction, sv_seed)] = np.nan  # NaN: not used
    is_train = ds["split"].values.astype(str) == "train"
    fit_on = values[is_train] if is_train.any() else values
    unseen = np.isnan(fit_on).all(axis=(0, 1))
    if unseen.any():
        raise DataError(f"Neurons {ds['neuron'].values[unseen].tolist()} have no observed (non-NaN) entries in the "
                        "training trials, so the model cannot learn them. Drop them, e.g. "
                        "ds.drop_sel(neuron=[...]), or move trials where they were recorded into 'train'.")
    return fit_on


def observed_variable(ds: xr.Dataset) -> str:
    """The name of the recorded variable in ``ds`` (``'spikes'``, ``'emg'`` or ``'events'``, by its kind).

    Raises :class:`DataError` when ``ds`` holds only an ``infer`` output, which is not a recording.
    """
    kind = kind_of(ds)
    name = _present_variable(ds, kind)
    if name != kind.variable:
        raise DataError(
            f"This dataset holds '{name}', the output of lfads_nb.infer, not recorded {kind.name} data "
            f"('{kind.variable}'). Train on (or export) the recorded data instead."
        )
    return name


def _check_bin_width(bin_width) -> None:
    """A bin width must be one positive, finite number of seconds."""
    if isinstance(bin_width, (bool, np.bool_)) or not isinstance(bin_width, numbers.Real):
        raise DataError(
            f"bin_width must be a number of seconds, got {bin_width!r} ({type(bin_width).__name__}); "
            "e.g. 0.01 for 10 ms bins."
        )
    if not np.isfinite(bin_width) or float(bin_width) <= 0:
        raise DataError(f"bin_width must be a positive number of seconds, got {bin_width!r}.")


def _check_time(time: np.ndarray, bin_width: float) -> None:
    """Bin centres in seconds, ``bin_width`` apart: a mismatch means one of them is in other units."""
    fix = "Set bin centres in seconds: ds.assign_coords(time=(np.arange(T) + 0.5) * ds.attrs['bin_width'])"
    if time.dtype.kind not in "iuf":
        raise DataError(f"'time' has dtype {time.dtype}; it must hold numbers. {fix}.")
    steps = np.diff(time.astype(float))
    if steps.size and not np.allclose(steps, bin_width, rtol=1e-2, atol=0):
        raise DataError(
            f"'time' steps by {steps.min():g} to {steps.max():g} but bin_width is {bin_width:g} s; consecutive "
            f"bin centres must be bin_width apart (is one of them in ms, or are bins missing?). {fix}, or fix "
            "ds.attrs['bin_width'] if it is the one in other units."
        )


def _check_forward(forward: xr.DataArray) -> None:
    """Forward-prediction bins: a boolean per time bin, True for some last bins only."""
    fix = "e.g. ds.assign_coords(forward=('time', np.arange(T) >= T - n_forward))"
    if forward.dims != ("time",) or forward.dtype != bool:
        raise DataError(
            f"'forward' must be a boolean per time bin (True = a forward-prediction bin the encoder does not "
            f"see), got dtype {forward.dtype} and dims {forward.dims}; {fix}."
        )
    values = forward.values
    if values.all():
        raise DataError(f"Every time bin is marked forward; the encoder needs at least the first bin. Mark only "
                        f"the last bins, {fix}.")
    first = int(np.argmax(values)) if values.any() else len(values)
    if not values[first:].all():
        raise DataError(
            f"'forward' marks bins {np.flatnonzero(values).tolist()[:8]} but forward-prediction bins are the "
            f"last ones of a trial (after the bins the encoder sees), with none in between; {fix}."
        )


def validate(ds: xr.Dataset, *, require_train: bool = False) -> xr.Dataset:
    """Check that ``ds`` follows the lfads_nb data model and return it unchanged.

    The observed variable is checked by the rules of the dataset's kind (see :mod:`lfads_nb.data.kinds`),
    including any default observation options it derives (ZIG ``s_min``); an ``infer`` output
    variable must hold finite values >= 0. ``require_train`` (used by training entry points) also
    refuses data without the recorded variable (an ``infer`` output) or without training trials.
    Raises :class:`DataError` naming the problem and the fix.
    """
    if isinstance(ds, xr.DataTree):
        raise DataError("Expected one session (an xarray.Dataset), got a DataTree of sessions. Pass one session, "
                        "tree['name'].to_dataset(); build_model, train, infer and pbt take the whole tree (stitching).")
    if not isinstance(ds, xr.Dataset):
        raise DataError(
            f"Expected an xarray.Dataset, got {type(ds).__name__}. "
            "Build one with data_generators or load one with lfads_nb.load(path)."
        )
    kind = kind_of(ds)
    name = _present_variable(ds, kind)
    observed = ds[name]
    if observed.dims != DIMS:
        missing = [d for d in DIMS if d not in observed.dims]
        hint = f" Missing dims {missing}." if missing else ""
        raise DataError(
            f"'{name}' has dims {observed.dims}; expected {DIMS}.{hint} "
            f"Rename dims with ds.rename_dims(...) / ds.rename(...) or reorder with ds.transpose{DIMS}."
        )
    for dim in ("trial", "neuron"):
        if ds.sizes[dim] == 0:
            raise DataError(f"The dataset has zero {dim}s; it needs at least one {dim}.")
    if ds.sizes["time"] == 0:
        raise DataError("The dataset has zero time bins; it needs at least one.")
    if name == kind.variable:
        kind.check(observed.values, name)
        kind.observation_options(ds)  # options derived from the data (ZIG s_min) must be derivable
    else:
        _check_output(observed.values, name)

    if ds.attrs.get("bin_width") is None:
        raise DataError(
            "The dataset has no 'bin_width' attribute; set it in seconds, "
            "e.g. ds.attrs['bin_width'] = 0.01 for 10 ms bins."
        )
    _check_bin_width(ds.attrs["bin_width"])

    for coord in ("split", "condition", "heldout", "forward"):
        if coord in ds.data_vars:  # e.g. ds['heldout'] = ...: it would be ignored, not used
            raise DataError(f"'{coord}' is a data variable; make it a coordinate: ds = ds.set_coords('{coord}').")
    for coord in ("time", "split"):
        if coord not in ds.coords:
            raise DataError(
                f"The dataset has no '{coord}' coordinate. "
                + (
                    "Add bin centres in seconds: ds.assign_coords(time=(np.arange(T) + 0.5) * bin_width)."
                    if coord == "time"
                    else "Add one label per trial: ds.assign_coords(split=('trial', labels)) "
                    f"with labels from {SPLITS}."
                )
            )
    _check_time(ds["time"].values, float(ds.attrs["bin_width"]))
    if ds["split"].dims != ("trial",):
        raise DataError(f"'split' must have dims ('trial',), got {ds['split'].dims}.")
    labels = set(np.unique(ds["split"].values.astype(str)))
    unknown = labels - set(SPLITS)
    if unknown:
        raise DataError(
            f"Unknown split labels {sorted(str(x) for x in unknown)}; every trial's split must be one of {SPLITS}."
        )
    if require_train:
        observed_variable(ds)  # refuses an infer output
    if require_train and "train" not in labels:
        raise DataError(
            "The dataset has no training trials (split == 'train'); training needs some. "
            "Relabel trials with ds.assign_coords(split=('trial', labels))."
        )
    if "condition" in ds.coords and ds["condition"].dims != ("trial",):
        raise DataError(f"'condition' must have dims ('trial',), got {ds['condition'].dims}.")
    if len(set(ds["trial"].values.tolist())) != ds.sizes["trial"]:  # a set: ids of mixed types do not sort
        raise DataError("Trial ids repeat; give every trial its own id, e.g. ds.assign_coords(trial=np.arange(n)).")
    if len(set(ds["neuron"].values.tolist())) != ds.sizes["neuron"]:
        raise DataError(
            "Neuron ids repeat, so selecting a neuron by id picks several; give every neuron its own id, "
            "e.g. ds.assign_coords(neuron=np.arange(n))."
        )
    if "heldout" in ds.coords and (ds["heldout"].dims != ("neuron",) or ds["heldout"].dtype != bool):
        raise DataError(
            "'heldout' must be a boolean per neuron (True = not seen by the encoder), "
            "e.g. ds.assign_coords(heldout=('neuron', mask))."
        )
    if "forward" in ds.coords:
        _check_forward(ds["forward"])

    for var, last_dim in TRUTH_VARIABLES.items():
        if var not in ds.data_vars:
            continue
        da = ds[var]
        expected = ("trial", "time", last_dim)
        if da.dims != expected:
            raise DataError(f"'{var}' has dims {da.dims}; expected {expected}.")
        if da.dtype.kind not in "biuf":
            raise DataError(f"'{var}' has dtype {da.dtype}; it must hold numbers, e.g. ds['{var}'].astype(float).")
    if "ext_input" in ds.data_vars and not np.isfinite(ds["ext_input"].values).all():
        raise DataError(
            "'ext_input' has NaN or infinite values; the generator needs every external input. "
            "Fill them (e.g. ds['ext_input'] = ds['ext_input'].fillna(0)) or drop those trials."
        )
    return ds


def split(ds: xr.Dataset, name: str) -> xr.Dataset:
    """The trials of one split ('train', 'valid' or 'test')."""
    if name not in SPLITS:
        raise DataError(f"Unknown split {name!r}; use one of {SPLITS}.")
    return ds.isel(trial=np.flatnonzero(ds["split"].values.astype(str) == name))


def _as_array(values, name: str) -> np.ndarray:
    """``values`` as a numpy array; the masked entries of a masked array become NaN."""
    if isinstance(values, np.ma.MaskedArray) and np.ma.getmask(values).any():
        return values.astype(float).filled(np.nan)
    try:
        return np.asarray(values)
    except ValueError as error:  # ragged nested lists
        raise DataError(
            f"{name} is not a rectangular array ({error}); pad trials to one length "
            "(NaN marks bins that were not observed) or cut them to the shortest."
        ) from error


def _per_item(values, n: int, name: str, dim: str) -> np.ndarray:
    """``values`` as a 1-D array of one value per ``dim``, ``n`` in all."""
    values = _as_array(values, name)
    if values.shape != (n,):
        raise DataError(f"{name} needs one value per {dim}, i.e. shape ({n},); got shape {values.shape}.")
    return values


def make_dataset(
    values: np.ndarray,
    bin_width: float,
    kind: str = "spikes",
    *,
    split_labels,
    condition=None,
    trial_ids=None,
    neuron_ids=None,
    **truth: np.ndarray,
) -> xr.Dataset:
    """Assemble a validated Dataset from numpy arrays.

    ``values``: the recording, shape (trial, time, neuron) (a DataArray with these dims in
    another order is transposed); the masked entries of a masked array become NaN (not observed).
    ``bin_width``: seconds. ``kind``: what ``values`` hold, a name in ``KINDS``: ``'spikes'``
    (counts), ``'emg'`` or ``'calcium_events'``; it names the variable (``spikes``, ``emg``,
    ``events``) and is stored in ``attrs['kind']``. ``split_labels``: one of 'train'/'valid'/'test'
    per trial. ``truth``: optional arrays named as in ``TRUTH_VARIABLES`` (the kind's truth,
    e.g. ``rates_true``, is in the units of its ``infer`` output: Hz for rates).
    Arguments of the wrong type or shape raise :class:`DataError`.
    """
    data_kind = get_kind(kind)
    variable = data_kind.variable
    if isinstance(values, xr.DataArray) and set(values.dims) == set(DIMS):
        values = values.transpose(*DIMS)  # named dims in another order are reordered, not misread
    values = _as_array(values, variable)
    if values.ndim != 3:
        raise DataError(f"{variable} must be 3-D (trial, time, neuron), got shape {values.shape}.")
    _check_bin_width(bin_width)
    n_trials, n_time, n_neurons = values.shape
    trial_ids = np.arange(n_trials) if trial_ids is None else trial_ids
    neuron_ids = np.arange(n_neurons) if neuron_ids is None else neuron_ids
    coords = {
        "trial": _per_item(trial_ids, n_trials, "trial_ids", "trial"),
        "time": (np.arange(n_time) + 0.5) * bin_width,
        "neuron": _per_item(neuron_ids, n_neurons, "neuron_ids", "neuron"),
        "split": ("trial", _per_item(split_labels, n_trials, "split_labels", "trial").astype(str)),
    }
    if condition is not None:
        coords["condition"] = ("trial", _per_item(condition, n_trials, "condition", "trial"))
    data_vars = {variable: (DIMS, values)}
    for var, array in truth.items():
        if var not in TRUTH_VARIABLES:
            raise DataError(f"Unknown ground-truth variable {var!r}; known: {sorted(TRUTH_VARIABLES)}.")
        array = _as_array(array, var)
        per_neuron = TRUTH_VARIABLES[var] == "neuron"
        last = n_neurons if per_neuron else TRUTH_VARIABLES[var]
        wrong_last = per_neuron and array.shape[-1:] != (n_neurons,)
        if array.ndim != 3 or array.shape[:2] != (n_trials, n_time) or wrong_last:
            raise DataError(
                f"{var} has shape {array.shape}; expected ({n_trials}, {n_time}, {last}) "
                f"to match {variable} (trial, time, ...)."
            )
        data_vars[var] = (("trial", "time", TRUTH_VARIABLES[var]), array)
    ds = xr.Dataset(data_vars, coords=coords, attrs={"bin_width": float(bin_width), "kind": data_kind.name})
    ds["time"].attrs["units"] = "s"
    if data_kind.truth in ds:
        ds[data_kind.truth].attrs.update(data_kind.output_attrs(ds))
    return validate(ds)


def describe_ids(values) -> str:
    """A short description of a set of coordinate values, for error messages."""
    values = np.asarray(values)
    if values.size and values.dtype.kind in "iu":
        return f"ids from {values.min()} to {values.max()} ({values.size} in all)"
    shown = ", ".join(repr(v) for v in values[:8].tolist())
    return f"[{shown}{', ...' if values.size > 8 else ''}] ({values.size} in all)"


def select_ids(obj, dim: str, ids, name: str):
    """``obj.sel({dim: ids})`` for one id or a list of ids that must all exist.

    Raises DataError naming the missing ids and the valid range, where xarray would raise a KeyError.
    """
    if dim not in obj.dims:
        raise DataError(f"'{name}' has no '{dim}' dim (dims {tuple(obj.dims)}).")
    wanted = [ids] if np.ndim(ids) == 0 else np.asarray(ids).tolist()
    if not wanted:
        raise DataError(f"No {dim}s selected; pass at least one {dim} id.")
    valid = set(obj[dim].values.tolist())
    missing = [i for i in wanted if i not in valid]
    if missing:
        raise DataError(
            f"{dim} ids {missing[:8]} are not in '{name}'; valid {dim}s: {describe_ids(obj[dim].values)}."
        )
    return obj.sel({dim: ids})
