"""The HDF5 layout of the original LFADS and lfads-torch: reading it (``load``) and writing it
(``export_lfads_h5``).

``load`` reads one array per key, trials x time x neurons::

    {train,valid,test}_encod_data   data the encoders see (spike counts, or the kind's values)
    {train,valid,test}_recon_data   data the model reconstructs (encod neurons and bins first);
                                    test_recon_data may be missing (NLB's test phase)
    {train,valid,test}_data         older single-array form: encod = recon = this
    {train,valid,test}_truth        optional truth; truth / conversion_factor = expected value per bin
    {train,valid,test}_inds         optional trial ids (integers)
    {train,valid,test}_ext_input    optional external inputs (trials x time x inputs)
    {train,valid,test}_behavior     optional behaviour (trials x time x dims), read as ``behavior``
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
(True = held out). It exists only when some neuron is held out. Forward-prediction bins, the same
in time: when ``*_encod_data`` has fewer time bins than ``*_recon_data`` (NLB's forward window, as
in lfads-torch's NLB configs), the extra (last) bins are marked by the boolean time coordinate
``forward``; training hides them from the encoder and reconstructs them, and ``metrics.fp_bps``
scores them. A test split with ``test_encod_data`` only (NLB's test phase) is read with NaN (not
observed) in its held-out neurons and forward bins, as lfads-torch pads it. A split without
``*_behavior`` while others have it (NLB's test split) gets NaN behaviour, and behaviour that
covers only the encoder's bins (nlb_tools' tensors) gets NaN in the forward bins.

``export_lfads_h5(ds, path)`` writes that layout (``*_encod_data`` / ``*_recon_data``) so the
same data runs in lfads-torch: neurons with ``heldout`` True go only into recon data, after
the observed ones (so recon neurons are reordered observed-first when they were
interleaved); ``*_inds`` are the trial ids, which must be integers; ``*_truth`` holds the
kind's truth (``rates_true`` in Hz with ``conversion_factor = 1 / bin_width``, so truth /
conversion_factor is counts per bin, as lfads-torch expects; ``emg_mean_true`` or
``events_mean_true`` with ``conversion_factor = 1``); ``*_ext_input`` holds ``ext_input`` and
``*_behavior`` ``behavior``; ``*_encod_data`` stops before the ``forward`` bins; the
file attributes ``bin_width``, ``kind`` and ``s_min`` (if set) hold those of the dataset. lfads-torch
needs train and valid trials and cannot take NaN, so both raise :class:`DataError`; a test
split without trials is omitted. Condition labels, neuron ids, time offsets and the other
ground-truth variables have no place in the layout and are not written.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import xarray as xr

from ..data.kinds import get_kind, kind_of
from ..data.schema import SPLITS, encoder_bins, make_dataset, observed_variable, validate
from ..errors import DataError
from .common import atomic_write, is_hdf5, open_hdf5, resolve_bin_width, resolve_kind

OPTIONAL_LFADS_KEYS = ("truth", "inds", "ext_input")


# ----------------------------------------------------------------------------- read

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
    """The arrays of one split, checked against each other, or None if the file has none.

    ``recon`` is None for a test split with encod data only (NLB's test phase)."""
    encod_key, recon_key = f"{split}_encod_data", f"{split}_recon_data"
    if encod_key in f or recon_key in f:
        for key, other in ((encod_key, recon_key), (recon_key, encod_key)):
            if other not in f and not (split == "test" and key == encod_key):
                raise DataError(
                    f"{path} has '{key}' but no '{other}'; LFADS files need both for the {split} split "
                    "(write the same array twice when no neurons or bins are held out)."
                )
        arrays = {"encod": _read_array(f, encod_key, path),
                  "recon": _read_array(f, recon_key, path) if recon_key in f else None}
    elif f"{split}_data" in f:
        encod_key = recon_key = f"{split}_data"  # messages name the key the file has
        arrays = {"encod": _read_array(f, encod_key, path)}
        arrays["recon"] = arrays["encod"]
    else:
        return None
    for name in OPTIONAL_LFADS_KEYS + ("behavior",):
        if f"{split}_{name}" in f:
            arrays[name] = _read_array(f, f"{split}_{name}", path)

    encod, recon = arrays["encod"], arrays["recon"]
    for key, array in ((encod_key, encod), (recon_key, recon)):
        if array is not None and array.ndim != 3:
            raise DataError(
                f"'{key}' in {path} has shape {array.shape}; expected (trial, time, neuron). "
                "Keep the axis of a single trial or neuron when writing it, e.g. data[..., np.newaxis]."
            )
    if encod.shape[0] == 0:
        raise DataError(f"The {split} split in {path} has zero trials; delete its keys or add trials.")
    if recon is not None:
        if encod.shape[0] != recon.shape[0] or not 0 < encod.shape[1] <= recon.shape[1]:
            raise DataError(
                f"'{encod_key}' has shape {encod.shape} but '{recon_key}' has {recon.shape}; they need the "
                "same trials, and encod data the first time bins of the recon data (the rest are "
                "forward-prediction bins)."
            )
        n_encod = encod.shape[2]
        if n_encod == 0 or n_encod > recon.shape[2]:
            raise DataError(
                f"'{encod_key}' has {n_encod} neurons and '{recon_key}' {recon.shape[2]}; encod data "
                "needs between 1 and all of the recon neurons (the extra recon neurons are held out)."
            )
        if not np.array_equal(encod, recon[:, :encod.shape[1], :n_encod], equal_nan=encod.dtype.kind == "f"):
            raise DataError(
                f"'{encod_key}' differs from the first {n_encod} neurons and {encod.shape[1]} bins of "
                f"'{recon_key}'; lfads_nb reads held-out neurons as the last recon neurons and forward-"
                "prediction bins as the last recon bins, so recon data must start with the encod data."
            )
    if "truth" in arrays and recon is not None and arrays["truth"].shape != recon.shape:
        raise DataError(
            f"'{split}_truth' has shape {arrays['truth'].shape} but '{recon_key}' has {recon.shape}; "
            "truth needs one rate per recon (trial, time, neuron)."
        )
    if "inds" in arrays:
        inds = arrays["inds"]
        if inds.shape != (encod.shape[0],) or inds.dtype.kind not in "iu":
            raise DataError(
                f"'{split}_inds' has shape {inds.shape} and dtype {inds.dtype}; it needs one integer "
                f"trial id per {split} trial, i.e. shape ({encod.shape[0]},)."
            )
    for name in ("ext_input", "behavior"):
        if name in arrays and (arrays[name].ndim != 3 or arrays[name].shape[0] != encod.shape[0]):
            raise DataError(
                f"'{split}_{name}' has shape {arrays[name].shape}; expected ({encod.shape[0]}, n_time, n_{name}s) "
                f"with the trials of '{encod_key}'."
            )
    if "ext_input" in arrays and recon is not None and arrays["ext_input"].shape[1] != recon.shape[1]:
        raise DataError(
            f"'{split}_ext_input' has {arrays['ext_input'].shape[1]} time bins but '{recon_key}' has "
            f"{recon.shape[1]}; the generator needs an external input for every bin it runs."
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


def _fill_encod_only(arrays: dict, n_time: int, n_neurons: int) -> None:
    """Recon data for a split that has encod data only: the encod data, NaN (not observed) in the
    held-out neurons and forward-prediction bins, as lfads-torch pads NLB's test phase."""
    encod = arrays["encod"]
    recon = np.full((len(encod), n_time, n_neurons), np.nan)
    recon[:, :encod.shape[1], :encod.shape[2]] = encod
    arrays["recon"] = recon
    expected = {"truth": (len(encod), n_time, n_neurons), "ext_input": (len(encod), n_time)}
    for key, shape in expected.items():
        if key in arrays and (arrays[key].ndim != 3 or arrays[key].shape[:len(shape)] != shape):
            raise DataError(
                f"'test_{key}' has shape {arrays[key].shape}; expected {shape} (then inputs, for ext_input): "
                "the trials of 'test_encod_data' and every time bin of the other splits' recon data."
            )


def _behavior(splits: dict, n_time: int) -> np.ndarray | None:
    """``*_behavior`` of every split, trials x n_time x dims: NaN where a split has none (NLB's
    test split) and in the forward-prediction bins of behaviour that covers the encoder's bins only."""
    having = {s: a["behavior"] for s, a in splits.items() if "behavior" in a}
    if not having:
        return None
    first_name, first = next(iter(having.items()))
    parts = []
    for name, arrays in splits.items():
        behavior = arrays.get("behavior")
        if behavior is None:
            parts.append(np.full((len(arrays["encod"]), n_time, first.shape[2]), np.nan))
            continue
        if behavior.shape[2] != first.shape[2]:
            raise DataError(
                f"'{name}_behavior' has {behavior.shape[2]} dims but '{first_name}_behavior' has "
                f"{first.shape[2]}; all splits need the same."
            )
        if behavior.shape[1] not in (n_time, arrays["encod"].shape[1]):
            raise DataError(
                f"'{name}_behavior' has {behavior.shape[1]} time bins; expected {n_time} (the recon data's) or "
                f"{arrays['encod'].shape[1]} (the encod data's, without the forward-prediction bins)."
            )
        padded = np.full(behavior.shape[:1] + (n_time,) + behavior.shape[2:], np.nan)
        padded[:, :behavior.shape[1]] = behavior
        parts.append(padded)
    return np.concatenate(parts)


def _read_lfads(f: h5py.File, path: Path, bin_width, kind) -> xr.Dataset:
    splits = {s: arrays for s in SPLITS if (arrays := _read_split(f, s, path)) is not None}
    with_recon = {s: a for s, a in splits.items() if a["recon"] is not None}
    if not with_recon:
        raise DataError(f"{path} has 'test_encod_data' but no recon data of any split; lfads_nb needs "
                        "'train_recon_data' (or 'valid_recon_data') to know the trials' neurons and time bins.")

    first_name, first = next(iter(with_recon.items()))
    for name, arrays in splits.items():
        checks = [("time bins", "recon", 1), ("recon neurons", "recon", 2)] if arrays["recon"] is not None else []
        checks += [("encoder time bins", "encod", 1), ("encod neurons", "encod", 2)]
        for what, key, axis in checks:
            if arrays[key].shape[axis] != first[key].shape[axis]:
                raise DataError(
                    f"The {name} split in {path} has {arrays[key].shape[axis]} {what} but the "
                    f"{first_name} split has {first[key].shape[axis]}; all splits need the same."
                )
    n_time, n_neurons = first["recon"].shape[1:]
    for arrays in splits.values():
        if arrays["recon"] is None:
            _fill_encod_only(arrays, n_time, n_neurons)
    for name, arrays in splits.items():
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
    width = resolve_bin_width(stored, bin_width, path)
    data_kind = get_kind(resolve_kind(f.attrs.get("kind"), kind, path) or "spikes")
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
    behavior = _behavior(splits, n_time)
    if behavior is not None:
        truth["behavior"] = behavior
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
    n_encod, n_encod_time = first["encod"].shape[2], first["encod"].shape[1]
    if n_encod < n_neurons:
        ds = ds.assign_coords(heldout=("neuron", np.arange(n_neurons) >= n_encod))
    if n_encod_time < n_time:
        ds = ds.assign_coords(forward=("time", np.arange(n_time) >= n_encod_time))
    return ds


def is_lfads(path: Path) -> bool:
    """Whether ``path`` is HDF5 with the data arrays of at least one split."""
    if not is_hdf5(path):
        return False
    with open_hdf5(path) as f:
        return any(f"{s}_{key}" in f for s in SPLITS for key in ("encod_data", "recon_data", "data"))


def read_lfads(path: Path, *, kind, bin_width) -> xr.Dataset:
    """The Dataset of an LFADS HDF5 file (the module docstring says how); ``load`` validates it."""
    try:
        with open_hdf5(path) as f:
            return _read_lfads(f, path, bin_width, kind)
    except OSError as error:  # a read inside a file that opened
        raise DataError(f"Cannot read {path} ({error}); the file is corrupt or truncated.") from error


# ----------------------------------------------------------------------------- write

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
    n_encod_time = int(encoder_bins(ds).sum())  # the forward-prediction bins follow them
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
                f.create_dataset(f"{split}_encod_data", data=recon[:, :n_encod_time, :n_encod])
                f.create_dataset(f"{split}_recon_data", data=recon)
                f.create_dataset(f"{split}_inds", data=ids[trials].astype(np.int64))
                if kind.truth in ds.data_vars:
                    truth = ds[kind.truth].values[trials][..., neuron_order]
                    f.create_dataset(f"{split}_truth", data=truth)
                if "ext_input" in ds.variables:
                    ext_input = ds["ext_input"].transpose("trial", "time", ...).values[trials]
                    f.create_dataset(f"{split}_ext_input", data=ext_input)
                if "behavior" in ds.data_vars:
                    f.create_dataset(f"{split}_behavior", data=ds["behavior"].values[trials])
            if kind.truth in ds.data_vars:  # truth / conversion_factor = expected value per bin
                f.create_dataset("conversion_factor", data=kind.to_output(1.0, bin_width))

    return atomic_write(path, write)
