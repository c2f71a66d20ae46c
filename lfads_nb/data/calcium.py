"""Two-photon calcium data for RADICaL: deconvolution, staggered sampling and the frame-binned view.

A two-photon microscope scans the field of view line by line, so within each frame of
``frame_s`` seconds every neuron is sampled once, at a fixed offset set by its row: its
**scan phase**, a sub-frame bin ``j`` in ``0 .. sub_bins - 1``. On a grid of sub-frame bins
(``bin_width = frame_s / sub_bins``), neuron n is observed at bins ``k * sub_bins + j_n`` of
frame k and nowhere else. RADICaL (Zhu et al. 2022) keeps that timing: events sit at their
sub-frame bin and the other bins are NaN (not observed), which selective backpropagation through
time (``lfads_nb.transforms.sbtt``) skips. The classic view bins them per frame instead
(:func:`frame_binned`).

Deconvolution is OASIS for an AR(1) calcium model (Friedrich, Zhou & Paninski 2017,
PLoS Comput Biol 13:e1005423), written here from the paper: :func:`oasis_ar1`. The GPL-3
``oasis-deconv`` package implements the same algorithm; lfads_nb does not depend on it.
"""
from __future__ import annotations

import numbers

import numpy as np
import xarray as xr

from ..errors import ConfigError, DataError
from .schema import validate


# ----------------------------------------------------------------------------- OASIS AR(1)

def oasis_ar1(traces: np.ndarray, g: float, *, lam: float = 0.0, s_min: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Deconvolve AR(1) calcium traces with OASIS (Friedrich et al. 2017), many traces at once.

    For each trace y (T samples) it solves

        minimise_c  1/2 ||c - y||^2 + lam * sum_t s_t   with  s_t = c_t - g c_{t-1} >= 0,  c_0 >= 0

    (c_{-1} = 0, so s_0 = c_0) by pooling adjacent violators: each pool is a run of samples
    with no event inside, c decaying as v g^k from its start value v; a new sample starts a
    pool, and while a pool would start lower than the previous pool's decayed end (an event
    s < 0, or s < ``s_min``), the two merge into one with the least-squares start value. With
    ``s_min = 0`` this is the exact solution of the convex problem; with ``s_min > 0`` it is
    OASIS's greedy rule that makes every event 0 or >= s_min (``oasisAR1(y, g, lam, s_min)``
    of the reference implementation); it is the best solution over all event supports on
    traces that start with calcium, while from a zero start (the first pool held at 0) small
    early events merge into the zero run.

    ``traces``: (..., T) fluorescence in spike-amplitude units (baseline 0). ``g``: the AR
    coefficient per sample, exp(-sample interval / decay time constant), in (0, 1).
    Returns ``(calcium, events)``, both (..., T): the denoised calcium c and the events s.
    ``events[..., 0]`` is c_0, the calcium left over from before the trace, not an event of
    the trace; ``s_min`` does not apply to it.
    """
    y = np.asarray(traces, dtype=np.float64)
    if y.ndim == 0 or y.shape[-1] == 0:
        raise DataError("oasis_ar1 needs traces with a time axis (last) of at least one sample.")
    if not np.isfinite(y).all():
        raise DataError("The traces hold NaN or infinite values; OASIS needs every sample of a trace. "
                        "Deconvolve each neuron's sampled frames only (see deconvolve_staggered).")
    for name, value in (("g", g), ("lam", lam), ("s_min", s_min)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
            raise ConfigError(f"oasis_ar1: {name} must be a finite number, got {value!r}.")
    if not 0 < g < 1:
        raise ConfigError(f"oasis_ar1: g must lie in (0, 1) (g = exp(-dt / tau_decay)), got {g!r}.")
    if lam < 0 or s_min < 0:
        raise ConfigError(f"oasis_ar1: lam and s_min must be >= 0, got lam={lam!r}, s_min={s_min!r}.")
    shape = y.shape
    y = y.reshape(-1, shape[-1])
    blocks = [_oasis_block(y[i:i + OASIS_BLOCK], g, lam, s_min) for i in range(0, len(y), OASIS_BLOCK)]
    return tuple(np.concatenate(parts).reshape(shape) for parts in zip(*blocks))


OASIS_BLOCK = 8192  # traces deconvolved together: bounds the memory of the pool arrays


def _oasis_block(y: np.ndarray, g: float, lam: float, s_min: float) -> tuple[np.ndarray, np.ndarray]:
    """oasis_ar1 on (n, T) traces whose inputs are already checked."""
    n, T = y.shape
    # The L1 penalty is linear in c: lam * sum_t s_t = lam * ((1 - g) sum_{t<T-1} c_t + c_{T-1}),
    # so it shifts the data: 1/2||c - y||^2 + lam a.c = 1/2||c - (y - lam a)||^2 + const.
    shifted = y - lam * (1.0 - g)
    shifted[:, -1] = y[:, -1] - lam

    value = np.zeros((n, T))    # pool start values v
    weight = np.zeros((n, T))   # sum_k g^(2k) over the pool
    length = np.zeros((n, T), dtype=np.int64)
    pinned = np.zeros(n, dtype=bool)  # the first pool is held at c = 0 (the constraint c_0 >= 0 is active)
    top = np.full(n, -1)
    rows = np.arange(n)
    for t in range(T):
        top += 1
        value[rows, top], weight[rows, top], length[rows, top] = shifted[:, t], 1.0, 1
        active = rows  # traces whose newest pool may still violate; after a merge, only those merged
        while active.size:
            top_a = top[active]
            unpin = active[(top_a == 0) & ~pinned[active] & (value[active, 0] < 0)]
            pinned[unpin] = True  # c_0 >= 0 is active: the first pool is held at 0
            value[unpin, 0] = 0.0
            active = active[top_a >= 1]
            p, q = top[active] - 1, top[active]
            decayed = value[active, p] * g ** length[active, p]
            violates = decayed + s_min > value[active, q]
            active, p, q = active[violates], p[violates], q[violates]
            l1, w1, w2 = length[active, p], weight[active, p], weight[active, q]
            decay_l1 = g ** l1
            new_weight = w1 + decay_l1 ** 2 * w2
            new_value = (w1 * value[active, p] + decay_l1 * w2 * value[active, q]) / new_weight
            value[active, p] = np.where(pinned[active] & (p == 0), 0.0, new_value)
            weight[active, p] = new_weight
            length[active, p] = l1 + length[active, q]
            top[active] -= 1

    # Rebuild c from the pools: pool p covers [start_p, start_p + length_p) with c = v_p g^k.
    valid = np.arange(T)[None, :] <= top[:, None]
    starts = np.cumsum(length, axis=1) - length
    is_start = np.zeros((n, T), dtype=bool)
    r, p = np.nonzero(valid)
    is_start[r, starts[r, p]] = True
    pool = np.cumsum(is_start, axis=1) - 1
    start_time = np.maximum.accumulate(np.where(is_start, np.arange(T), 0), axis=1)
    calcium = np.take_along_axis(value, pool, axis=1) * g ** (np.arange(T) - start_time)
    previous = np.concatenate([np.zeros((n, 1)), calcium[:, :-1]], axis=1)
    events = np.where(is_start, calcium - g * previous, 0.0)  # exactly 0 inside pools
    return calcium, np.maximum(events, 0.0)  # max: rounding at a pinned start


# ----------------------------------------------------------------------------- staggered sampling

def _check_phases(scan_phase, sub_bins: int, n_neurons: int) -> np.ndarray:
    """The scan phases as integers in [0, sub_bins), one per neuron, or a DataError naming the fix."""
    if isinstance(sub_bins, bool) or not isinstance(sub_bins, numbers.Integral) or sub_bins < 1:
        raise ConfigError(f"sub_bins (sub-frame bins per frame) must be a whole number >= 1, got {sub_bins!r}.")
    phase = np.asarray(scan_phase)
    if phase.shape != (n_neurons,):
        raise DataError(f"scan_phase has shape {phase.shape}; expected one sub-frame bin per neuron, ({n_neurons},).")
    if phase.dtype.kind not in "iu" and not (phase.dtype.kind == "f" and np.array_equal(phase, np.round(phase))):
        raise DataError(f"scan_phase must hold whole sub-frame bins (0 .. {sub_bins - 1}), got dtype {phase.dtype}.")
    outside = (phase < 0) | (phase >= sub_bins)
    if outside.any():
        raise DataError(
            f"scan_phase of neurons at positions {np.flatnonzero(outside)[:8].tolist()} is "
            f"{phase[outside][:8].tolist()}, outside the frame: a neuron is sampled at a sub-frame bin "
            f"0 .. {sub_bins - 1}. Give each neuron's row offset within the frame as "
            f"floor(row / rows_per_frame * {sub_bins})."
        )
    return phase.astype(np.int64)


def sampled_mask(n_time: int, scan_phase, sub_bins: int) -> np.ndarray:
    """Where each neuron is sampled on the sub-frame grid: bool (n_time, neuron), True at bins
    ``k * sub_bins + scan_phase[n]`` (frame k). ``n_time`` must be a whole number of frames."""
    phase = _check_phases(scan_phase, sub_bins, len(np.atleast_1d(scan_phase)))
    if n_time % sub_bins:
        raise DataError(f"{n_time} sub-frame bins is not a whole number of frames of {sub_bins} bins; "
                        "crop the data to whole frames.")
    return (np.arange(n_time)[:, None] % sub_bins) == phase[None, :]


def deconvolve_staggered(fluorescence: np.ndarray, scan_phase, sub_bins: int, g: float,
                         s_min: float = 0.1) -> np.ndarray:
    """Deconvolve staggered-sampled fluorescence into events at their sub-frame bins.

    ``fluorescence``: (trial, time, neuron) on the sub-frame grid (time = frames x ``sub_bins``),
    finite where each neuron is sampled (``sampled_mask``), anything (usually NaN) elsewhere;
    spike-amplitude units with baseline 0. ``scan_phase`` (neuron,): the sub-frame bin each
    neuron is read at. ``g``: the AR(1) coefficient per frame, exp(-frame_s / tau_decay).
    Each (trial, neuron) frame series is deconvolved by :func:`oasis_ar1` with ``s_min``.
    Returns events (trial, time, neuron): 0 or >= s_min at sampled bins, NaN elsewhere; the first
    frame is NaN too, since its OASIS value is the calcium left from before the trace (deconvolve
    a longer trace and crop it to keep the first frame).
    """
    values = np.asarray(fluorescence)
    if values.ndim != 3:
        raise DataError(f"fluorescence must be (trial, time, neuron), got shape {values.shape}.")
    sampled_mask(values.shape[1], scan_phase, sub_bins)  # checks the phases and whole frames
    frame_idx = frame_index(values.shape[1], scan_phase, sub_bins)
    return to_subframe(deconvolve_frames(np.take_along_axis(values, frame_idx[None], axis=1), g, s_min),
                       scan_phase, sub_bins)


def frame_index(n_time: int, scan_phase, sub_bins: int) -> np.ndarray:
    """(frame, neuron): the sub-frame bin at which each neuron is read in each frame."""
    return np.arange(n_time // sub_bins)[:, None] * sub_bins + np.asarray(scan_phase, dtype=np.int64)[None, :]


def deconvolve_frames(frames: np.ndarray, g: float, s_min: float = 0.1) -> np.ndarray:
    """OASIS AR(1) events of each neuron's frame series: ``frames`` (trial, frame, neuron), one
    fluorescence sample per frame; returns events of the same shape, the first frame NaN (see
    :func:`deconvolve_staggered`). NaN or infinite samples raise :class:`DataError`."""
    bad = ~np.isfinite(frames)
    if bad.any():
        trial, frame, neuron = np.argwhere(bad)[0]
        raise DataError(
            f"fluorescence is NaN or infinite at {bad.sum()} bins where a neuron is sampled, e.g. trial position "
            f"{trial}, frame {frame}, neuron position {neuron}. Check that scan_phase gives each neuron's sampled "
            "sub-frame bin, or fill short gaps (e.g. interpolate the neuron's frame series) before deconvolving."
        )
    _, events = oasis_ar1(np.moveaxis(frames, 1, -1), g, s_min=s_min)  # (trial, neuron, frame)
    events = np.moveaxis(events, -1, 1)
    events[:, 0] = np.nan  # leftover calcium from before the trace, not an event
    return events


def to_subframe(frames: np.ndarray, scan_phase, sub_bins: int) -> np.ndarray:
    """Per-frame values (trial, frame, neuron) placed at each neuron's sampled sub-frame bin of
    the (trial, frame x sub_bins, neuron) grid, NaN elsewhere."""
    phase = _check_phases(scan_phase, sub_bins, frames.shape[2])
    out = np.full((frames.shape[0], frames.shape[1] * sub_bins, frames.shape[2]), np.nan, dtype=frames.dtype)
    np.put_along_axis(out, frame_index(out.shape[1], phase, sub_bins)[None].repeat(len(frames), 0), frames, axis=1)
    return out


def _staggered_layout(ds: xr.Dataset) -> tuple[int, float, np.ndarray]:
    """(sub_bins, frame_s, scan_phase) of a sub-frame calcium Dataset, checked."""
    for name in ("sub_bins", "frame_s"):
        if name not in ds.attrs:
            raise DataError(
                f"The dataset has no attrs['{name}']; a sub-frame calcium dataset records the frame period "
                "(frame_s, seconds) and the sub-frame bins per frame (sub_bins), e.g. from "
                "data_generators.calcium_2p, or set them: ds.attrs.update(frame_s=0.03, sub_bins=3)."
            )
    if "scan_phase" not in ds.coords:
        raise DataError("The dataset has no 'scan_phase' coordinate (the sub-frame bin each neuron is sampled "
                        "at); add it: ds.assign_coords(scan_phase=('neuron', phases)).")
    sub_bins, frame_s = ds.attrs["sub_bins"], float(ds.attrs["frame_s"])
    phase = _check_phases(ds["scan_phase"].values, sub_bins, ds.sizes["neuron"])
    if not np.isclose(frame_s, sub_bins * float(ds.attrs["bin_width"])):
        raise DataError(f"attrs frame_s={frame_s:g} s is not sub_bins x bin_width = {sub_bins} x "
                        f"{ds.attrs['bin_width']:g} s; fix one of them.")
    if ds.sizes["time"] % sub_bins:
        raise DataError(f"{ds.sizes['time']} sub-frame bins is not a whole number of frames of {sub_bins} bins; "
                        f"crop the data to whole frames: ds.isel(time=slice(0, {ds.sizes['time'] // sub_bins * sub_bins})).")
    return int(sub_bins), frame_s, phase


def frame_binned(ds: xr.Dataset) -> xr.Dataset:
    """The frame-binned view of a sub-frame calcium Dataset (``data_generators.calcium_2p``).

    Every neuron has one sampled sub-frame bin per frame, so its frame value is that bin's: the
    view has bins of ``frame_s`` seconds, centred on the frames, and loses when within the frame
    each neuron was read. ``events`` and ``fluorescence`` take the sampled bin's value; ground
    truth is aggregated over the frame: ``rates_true`` and ``latents_true`` averaged,
    ``spikes_true`` summed. Coords (trial, neuron, split, condition, heldout) and attrs are
    kept, with ``bin_width = frame_s`` and ``sub_bins = 1``; ``scan_phase`` is dropped (the
    frame view has no sub-frame timing).
    """
    validate(ds)
    sub_bins, frame_s, phase = _staggered_layout(ds)
    n_frames = ds.sizes["time"] // sub_bins
    frame_idx = np.arange(n_frames)[:, None] * sub_bins + phase[None, :]
    sampled = {"events", "fluorescence"}
    aggregate = {"rates_true": np.mean, "latents_true": np.mean, "spikes_true": np.sum}
    data_vars = {}
    for name, da in ds.data_vars.items():
        values = da.values
        if name in sampled:
            out = np.take_along_axis(values, frame_idx[None], axis=1)
        elif name in aggregate and da.dims[:2] == ("trial", "time"):
            out = aggregate[name](values.reshape(values.shape[0], n_frames, sub_bins, *values.shape[2:]), axis=2)
        else:
            continue
        data_vars[name] = (da.dims, out.astype(values.dtype), da.attrs)
    coords = {name: c.variable for name, c in ds.coords.items() if "time" not in c.dims and name != "scan_phase"}
    coords["time"] = ("time", (np.arange(n_frames) + 0.5) * frame_s, {"units": "s"})
    out = xr.Dataset(data_vars, coords=coords, attrs={**ds.attrs, "bin_width": frame_s, "sub_bins": 1})
    return validate(out)


# ----------------------------------------------------------------------------- scoring against truth

# The four estimates tutorial 06 compares: two smoothing baselines, one per view of the events
# (frame-binned, or each event at its neuron's sub-frame read time), and LFADS on each view.
def on_subframe_time(estimate: xr.DataArray, ds: xr.Dataset) -> xr.DataArray:
    """``estimate`` (trial, time, ...) at any time resolution, linearly interpolated to the
    sub-frame bins of ``ds`` (held constant beyond the first and last estimate): how a
    frame-resolution estimate is compared with sub-frame truth."""
    if estimate.sizes["time"] == ds.sizes["time"] and np.allclose(estimate["time"], ds["time"]):
        return estimate
    source, target = estimate["time"].values.astype(float), ds["time"].values.astype(float)
    position = np.interp(target, source, np.arange(len(source)))  # fractional source index, clamped at the ends
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, len(source) - 1)
    weight = xr.DataArray(position - low, dims="time")
    values = estimate.isel(time=low).drop_vars("time") * (1 - weight) + estimate.isel(time=high).drop_vars("time") * weight
    return values.assign_coords(time=ds["time"]).transpose(*estimate.dims)
