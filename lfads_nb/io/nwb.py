"""Reading NWB files (Neurodata Without Borders, as DANDI serves the Neural Latents Benchmark sets).

``lfads_nb.load("x.nwb", bin_width=0.01, align_to="move_onset_time", window=(-0.25, 0.45),
condition="condition")`` bins every unit's spike times into one window per trial:

* Trials: the rows of the trials table (``nwbfile.trials``); ``trial`` holds their ids. The event
  of a trial is its value in the column ``align_to`` (default ``start_time``); trials whose event is
  NaN (e.g. no movement) are left out, with a warning.
* Spikes: bin ``k`` of a trial counts the spikes in ``[event + window[0] + k * bin_width,
  event + window[0] + (k + 1) * bin_width)``, for ``k = 0 .. n - 1`` with ``n = (window[1] -
  window[0]) / bin_width`` (which must be a whole number). ``time`` holds the bin centres relative
  to the event, ``window[0] + (k + 0.5) * bin_width`` seconds. Exact spike times are used, not
  nlb_tools' 1 ms grid, so counts can differ from NLB's tensors for spikes within 1 ms of an edge.
* Neurons: the rows of the units table; ``neuron`` holds their ids. A boolean ``heldout`` column
  (NLB's) becomes the ``heldout`` coordinate. Where the table has ``obs_intervals``, a unit's bins
  that do not lie inside one of its intervals are NaN (not observed; training skips them).
* ``condition``: the named trials column becomes the ``condition`` coordinate (None: none).
* Behaviour: every TimeSeries of the processing module ``behavior`` (also those inside
  containers such as ``Position``), or the ones named in ``behavior``, averaged over the samples
  whose timestamps fall in each bin (NaN where a bin has none, and where a sample is NaN it is
  left out), side by side as ``behavior`` with ``behavior_dim`` named ``<series>_<column>``: the
  columns come from a ``comments`` entry ``columns=[x,y]`` (NLB's convention), else 0, 1, ....
* Splits: a trials column ``split`` gives them (NLB's ``train``, ``val`` read as ``valid``,
  ``test``; trials marked ``none`` are left out). Without it, a seeded split stratified by
  condition: in each condition ``VALID_FRACTION`` of the trials, rounded, go to 'valid'.

pynwb is an optional extra: ``pip install "lfads_nb[nwb]"``.
"""
from __future__ import annotations

import numbers
import re
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from ..data.schema import make_dataset
from ..errors import ConfigError, DataError
from .common import is_hdf5, open_hdf5

VALID_FRACTION = 0.2  # of each condition's trials, in the split made when the file has none
NLB_SPLITS = {"train": "train", "val": "valid", "valid": "valid", "test": "test"}  # 'none': left out
BEHAVIOR_MODULE = "behavior"


def is_nwb(path: Path) -> bool:
    """Whether ``path`` is an NWB file: HDF5 whose root has the attribute ``nwb_version``, which NWB
    writers set."""
    if not is_hdf5(path):
        return False
    with open_hdf5(path) as f:
        return "nwb_version" in f.attrs


def _pynwb():
    try:
        import pynwb
    except ImportError as error:
        raise ImportError(
            'Reading NWB files needs pynwb, an optional extra: pip install "lfads_nb[nwb]" (or pip install pynwb).'
        ) from error
    return pynwb


def _check_options(bin_width, window, kind) -> tuple[float, tuple[float, float], int]:
    """The bin width, window and number of bins, or a ConfigError naming the bad one."""
    if kind not in (None, "spikes"):
        raise ConfigError(f"kind={kind!r}, but NWB units hold spike times, which lfads_nb reads as 'spikes'.")
    if bin_width is None:
        raise ConfigError("NWB files hold spike times, not bins: pass bin_width in seconds, e.g. bin_width=0.01.")
    if isinstance(bin_width, bool) or not isinstance(bin_width, numbers.Real) or not 0 < bin_width < np.inf:
        raise ConfigError(f"bin_width is {bin_width!r}; it must be a positive number of seconds, e.g. 0.01.")
    if window is None:
        raise ConfigError(
            "Pass window=(start, end): the seconds around each trial's align_to event to bin, e.g. "
            "window=(-0.25, 0.45) for NLB's MC_Maze around move_onset_time."
        )
    try:
        start, end = (float(w) for w in window)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"window is {window!r}; it must be two numbers of seconds (start, end).") from error
    n_bins = (end - start) / bin_width
    if not np.isfinite(n_bins) or n_bins < 1 - 1e-9 or abs(n_bins - round(n_bins)) > 1e-6:
        fitting_end = start + max(round(n_bins), 1) * bin_width
        raise ConfigError(
            f"window {window!r} is {end - start:g} s long, not a positive whole number of {bin_width:g} s bins; "
            f"make end - start a multiple of bin_width, e.g. window=({start:g}, {fitting_end:g})."
        )
    return float(bin_width), (start, end), int(round(n_bins))


def _column(table, name: str | None, what: str, option: str) -> np.ndarray:
    """A trials column as a numpy array, or a DataError listing the columns that exist."""
    columns = ["start_time", "stop_time", *[c for c in table.colnames if c not in ("start_time", "stop_time")]]
    if name not in columns:
        raise DataError(
            f"The trials table has no column {name!r} ({option}={name!r}); its columns are {columns}. "
            f"Pass the name of the {what}."
        )
    values = np.asarray(table[name][:])
    if values.dtype.kind == "S":
        values = np.char.decode(values, "utf-8")
    elif values.dtype == object:
        values = np.array([v.decode() if isinstance(v, bytes) else v for v in values])
    return values


def _edges(events: np.ndarray, window: tuple[float, float], bin_width: float, n_bins: int) -> np.ndarray:
    """(trial, n_bins + 1) bin edges in seconds: event + window[0] + k * bin_width."""
    return events[:, None] + window[0] + np.arange(n_bins + 1)[None, :] * bin_width


def _spike_counts(units, edges: np.ndarray) -> np.ndarray:
    """(trial, time, unit) counts of each unit's spikes in [edge_k, edge_k+1); NaN in bins not inside
    one of the unit's ``obs_intervals`` (when the table has them), as nlb_tools masks them."""
    if "spike_times" not in units.colnames:
        raise DataError(
            f"The units table has no 'spike_times' column (columns {list(units.colnames)}); lfads_nb bins spike "
            "times. Sorted units from a spike sorter store them with nwbfile.add_unit(spike_times=...)."
        )
    counts = np.empty((edges.shape[0], edges.shape[1] - 1, len(units)), dtype=np.int64)
    observed = np.ones(counts.shape, dtype=bool)
    for i in range(len(units)):
        spike_times = np.sort(np.asarray(units["spike_times"][i], dtype=float))
        below = np.searchsorted(spike_times, edges, side="left")  # spikes before each edge
        counts[..., i] = np.diff(below, axis=1)
        if "obs_intervals" in units.colnames:
            intervals = np.asarray(units["obs_intervals"][i], dtype=float).reshape(-1, 2)
            starts, stops = edges[:, :-1, None], edges[:, 1:, None]
            observed[..., i] = ((intervals[:, 0] <= starts) & (stops <= intervals[:, 1])).any(axis=-1)
    return counts if observed.all() else np.where(observed, counts, np.nan)


def _behavior_series(nwbfile, names) -> list:
    """The TimeSeries of the 'behavior' processing module (in containers too), sorted by name."""
    pynwb = _pynwb()
    if BEHAVIOR_MODULE not in nwbfile.processing:
        if names:
            raise DataError(f"behavior={list(names)} but the file has no '{BEHAVIOR_MODULE}' processing module "
                            f"(modules: {sorted(nwbfile.processing)}).")
        return []
    found = {}
    for interface in nwbfile.processing[BEHAVIOR_MODULE].data_interfaces.values():
        inner = [interface] if isinstance(interface, pynwb.TimeSeries) else interface.children  # e.g. Position
        found.update({s.name: s for s in inner if isinstance(s, pynwb.TimeSeries)})
    if names is None:
        return [found[n] for n in sorted(found)]
    missing = [n for n in names if n not in found]
    if missing:
        raise DataError(f"No behaviour series {missing} in the '{BEHAVIOR_MODULE}' module; it has {sorted(found)}.")
    return [found[n] for n in names]


def _series_columns(series, n_columns: int) -> list[str]:
    """Names of a series' columns: NLB's ``columns=[x,y]`` in ``comments``, else 0, 1, ..."""
    match = re.search(r"columns=\[([^\]]*)\]", series.comments or "")
    names = [c.strip().strip("'\"") for c in match.group(1).split(",")] if match else []
    if len(names) != n_columns:
        names = [str(i) for i in range(n_columns)]
    return [series.name if n_columns == 1 and not match else f"{series.name}_{c}" for c in names]


def _bin_means(series, edges: np.ndarray) -> np.ndarray:
    """(trial, time, column) mean of a series' non-NaN samples in each [edge_k, edge_k+1); NaN if none."""
    data = np.asarray(series.data[:], dtype=float)
    data = data.reshape(len(data), -1)
    if series.timestamps is not None:
        times = np.asarray(series.timestamps[:], dtype=float)
    else:
        times = series.starting_time + np.arange(len(data)) / series.rate
    if np.any(np.diff(times) < 0):
        raise DataError(f"The timestamps of behaviour series '{series.name}' are not sorted; sort the samples by time.")
    seen = ~np.isnan(data)
    sums = np.concatenate([np.zeros((1, data.shape[1])), np.cumsum(np.where(seen, data, 0.0), axis=0)])
    numbers_seen = np.concatenate([np.zeros((1, data.shape[1])), np.cumsum(seen, axis=0)])
    at = np.searchsorted(times, edges, side="left")  # samples before each edge
    total, count = np.diff(sums[at], axis=1), np.diff(numbers_seen[at], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def _stratified_split(n_trials: int, condition: np.ndarray | None, seed: int) -> np.ndarray:
    """'train' / 'valid' per trial: in each condition (or among all trials, without conditions) a
    seeded VALID_FRACTION of the trials, rounded, are 'valid'."""
    groups = np.zeros(n_trials, int) if condition is None else np.unique(condition, return_inverse=True)[1]
    rng = np.random.default_rng(seed)
    labels = np.full(n_trials, "train", dtype="<U5")
    for group in range(groups.max() + 1):
        members = rng.permutation(np.flatnonzero(groups == group))
        labels[members[:int(round(VALID_FRACTION * len(members)))]] = "valid"
    return labels


def read_nwb(path: Path, *, kind=None, bin_width=None, align_to: str | None = None, window=None,
             condition: str | None = None, behavior=None, seed: int = 0) -> xr.Dataset:
    """The Dataset of an NWB file: see the module docstring. ``load`` validates it."""
    bin_width, window, n_bins = _check_options(bin_width, window, kind)
    pynwb = _pynwb()
    align_to = align_to or "start_time"
    try:
        io = pynwb.NWBHDF5IO(str(path), "r")
        nwbfile = io.read()
    except Exception as error:  # pynwb raises many types for a file it cannot build
        raise DataError(f"{path} looks like NWB but pynwb cannot read it ({error}).") from error
    with io:
        trials, units = nwbfile.trials, nwbfile.units
        if units is None or len(units) == 0:
            raise DataError(f"{path} has no units table (or an empty one); lfads_nb bins the units' spike times. "
                            "Spike-sorted NWB files store them in nwbfile.units.")
        if trials is None or len(trials) == 0:
            raise DataError(f"{path} has no trials table; lfads_nb cuts one window per trial around align_to. "
                            "Add trials with nwbfile.add_trial(start_time=..., stop_time=...).")
        events = _column(trials, align_to, "event to align to", "align_to").astype(float)
        keep = ~np.isnan(events)
        if not keep.all():
            warnings.warn(f"{int((~keep).sum())} trials of {path.name} have no {align_to} (NaN) and are left out.",
                          stacklevel=4)
        labels = None
        if "split" in trials.colnames:
            raw = _column(trials, "split", "split", "split").astype(str)
            unknown = sorted(set(raw) - set(NLB_SPLITS) - {"none"})
            if unknown:
                raise DataError(f"The trials column 'split' holds {unknown}; expected train, val (or valid), test "
                                "or none (left out).")
            keep &= raw != "none"
            labels = np.array([NLB_SPLITS.get(s, s) for s in raw])[keep]
        conditions = _column(trials, condition, "condition label", "condition")[keep] if condition else None
        ids = np.asarray(trials.id[:])[keep]
        starts = np.asarray(trials["start_time"][:], dtype=float)[keep]
        stops = np.asarray(trials["stop_time"][:], dtype=float)[keep]
        events = events[keep]
        if not len(events):
            raise DataError(f"No trial of {path} is left to bin (every {align_to} is NaN or split 'none').")
        edges = _edges(events, window, bin_width, n_bins)
        tolerance = 1e-9 * max(1.0, float(np.abs(edges).max()))
        outside = (edges[:, 0] < starts - tolerance) | (edges[:, -1] > stops + tolerance)
        if outside.any():
            fits = (float(np.max(starts - events)), float(np.min(stops - events)))
            raise DataError(
                f"window {window} s around {align_to} runs outside trials {ids[outside][:8].tolist()} "
                f"({int(outside.sum())} of {len(ids)}: before start_time or after stop_time). Every trial "
                f"covers ({fits[0]:.4g}, {fits[1]:.4g}) s around {align_to}; choose a window inside it."
            )
        spikes = _spike_counts(units, edges)
        neuron_ids = np.asarray(units.id[:])
        heldout = np.asarray(units["heldout"][:]).astype(bool) if "heldout" in units.colnames else None
        series = _behavior_series(nwbfile, None if behavior is None else list(behavior))
        means = [_bin_means(s, edges) for s in series]
        columns = [name for s, m in zip(series, means) for name in _series_columns(s, m.shape[2])]
        identifier = str(nwbfile.identifier)

    truth = {"behavior": np.concatenate(means, axis=2)} if means else {}
    if labels is None:
        labels = _stratified_split(len(ids), conditions, seed)
    ds = make_dataset(spikes, bin_width, "spikes", split_labels=labels, condition=conditions, trial_ids=ids,
                      neuron_ids=neuron_ids, **truth)
    ds = ds.assign_coords(time=window[0] + (np.arange(n_bins) + 0.5) * bin_width)
    ds["time"].attrs.update(units="s", long_name=f"time from {align_to}")
    if heldout is not None:
        ds = ds.assign_coords(heldout=("neuron", heldout))
    if columns:
        ds = ds.assign_coords(behavior_dim=columns)
    ds.attrs.update(align_to=align_to, window=list(window), source=path.name, nwb_identifier=identifier)
    return ds
