"""RADICaL against its baselines on sub-frame calcium data (tutorial 06).

Four ways to estimate each neuron's activity from the same deconvolved events, each then scored
against the truth on held-out trials (``truth_scores``: ``metrics.latent_r2``):

- ``smoothing_frame``: frame-binned events smoothed in time (``smoothed_events``);
- ``smoothing_subframe``: each neuron's events at its own sub-frame read times, smoothed or
  interpolated per neuron (``smoothed_events(timing='subframe')``): the sub-frame timing
  without a model;
- ``lfads_frame``: ZIG LFADS on the frame-binned events (one bin per frame, the AutoLFADS way);
- ``radical``: ZIG LFADS on the sub-frame events, unsampled bins NaN and skipped by selective
  backpropagation through time (Zhu et al. 2022).

Both LFADS models get the same sizes and training settings; ``s_min`` comes from the data. Both
smoothing baselines get the same grid of widths, chosen on the training trials.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from .data.calcium import frame_binned, on_subframe_time
from .errors import ConfigError, DataError
from .metrics import warn_at_grid_edge, latent_r2, smooth_spikes
from .models import build_model
from .training import TrainConfig, infer, train


METHODS = ("smoothing_frame", "smoothing_subframe", "lfads_frame", "radical")


def truth_scores(estimate: xr.DataArray, ds: xr.Dataset) -> dict[str, float]:
    """How well a per-neuron estimate (trial, time, neuron) recovers the true latent state of
    ``ds``, at ``ds``'s sub-frame bins (``on_subframe_time``):

    - ``latent_r2``: ``metrics.latent_r2`` from all neurons' estimates to the true Lorenz state, a
      ridge map fit on the 'train' trials and scored on the 'valid' trials, R^2 averaged over x, y, z.

    NaN where ``ds`` has no ``latents_true``.
    """
    if "latents_true" not in ds:
        return {"latent_r2": np.nan}
    estimate = on_subframe_time(estimate, ds).transpose("trial", "time", "neuron")
    return {"latent_r2": latent_r2(estimate, ds["latents_true"], train_trials="train", test_trials="valid")}


SMOOTHING_WIDTHS = (0.0, 0.005, 0.01, 0.02, 0.04, 0.08)  # seconds; 0 = no smoothing (frame values, or interpolation)


def _subframe_candidate(ds: xr.Dataset, sigma: float, frame_s: float) -> xr.DataArray:
    """Each neuron's events at its own read times, in events / s on the sub-frame grid: linearly
    interpolated between its reads (``sigma`` 0, held constant before the first and after the
    last), or a Gaussian of ``sigma`` s over its reads (the kernel renormalised over the read
    bins, ``metrics.smooth_spikes``)."""
    events = ds["events"].transpose("trial", "time", "neuron")
    if sigma > 0:
        smoothed = smooth_spikes(events, float(ds.attrs["bin_width"]), sigma) * float(ds.attrs["bin_width"])
        if np.isnan(smoothed.values).any():
            raise DataError(f"A smoothing width of {sigma:g} s leaves sub-frame bins with no read in reach; "
                            f"use widths of at least {frame_s / 4:g} s or 0 (interpolation).")
    else:
        values = events.values.astype(float)
        bins = np.arange(values.shape[1])
        out = np.empty_like(values)
        for trial in range(values.shape[0]):
            for neuron in range(values.shape[2]):
                read = ~np.isnan(values[trial, :, neuron])
                if not read.any():
                    raise DataError(f"Neuron position {neuron} has no read in trial position {trial}; the "
                                    "sub-frame smoothing baseline needs at least one per trial.")
                out[trial, :, neuron] = np.interp(bins, bins[read], values[trial, read, neuron])
        smoothed = events.copy(data=out)
    return (smoothed / frame_s).rename("events_smoothed").assign_attrs(units="events / s", sigma=float(sigma))


def smoothed_events(ds: xr.Dataset, sigmas=SMOOTHING_WIDTHS, *, timing: str = "frame") -> xr.DataArray:
    """The smoothing baseline: each neuron's events smoothed in time by a Gaussian, in events per
    second, its width chosen among ``sigmas`` (seconds) by how well all neurons' smoothed events
    predict the true state (``metrics.latent_r2``) on half of the training trials after a ridge map
    fit on the other half (the validation trials are not used).

    ``timing``: ``'frame'`` smooths the frame-binned events (``frame_binned``: one value per frame
    for every neuron, as if all were read at the frame's centre; width 0 = the frame values as
    they are), returning (trial, frame time, neuron); ``'subframe'`` keeps each event at its
    neuron's sub-frame read time (the information RADICaL has) and smooths over each neuron's own
    reads (width 0 = linear interpolation between them), returning (trial, sub-frame time, neuron).

    Without ``latents_true`` the middle width is used. Warns when the choice is the widest
    candidate, or the narrowest when that is not 0 (``metrics.warn_at_grid_edge``): the optimum
    may lie beyond the grid. ``attrs['sigma']`` holds the width.
    """
    grid = np.asarray(list(sigmas), dtype=float)
    if grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid < 0):
        raise ConfigError(f"sigmas must be smoothing widths >= 0 s (0 = no smoothing), e.g. (0, 0.03, 0.06); "
                          f"got {sigmas!r}.")
    if timing not in ("frame", "subframe"):
        raise ConfigError(f"timing must be 'frame' (frame-binned events) or 'subframe' (each event at its "
                          f"read time), got {timing!r}.")
    frames = frame_binned(ds)
    frame_s = float(frames.attrs["bin_width"])

    def candidate(sigma):
        if timing == "subframe":
            return _subframe_candidate(ds, sigma, frame_s)
        if sigma > 0:
            return smooth_spikes(frames["events"], frame_s, sigma)
        return (frames["events"] / frame_s).assign_attrs(units="events / s", sigma=0.0)

    if "latents_true" not in ds:
        return candidate(grid[len(grid) // 2])
    train = ds["trial"].values[ds["split"].values.astype(str) == "train"]
    fit, check = train[::2], train[1::2]
    best, best_r2 = None, -np.inf
    for sigma in grid.tolist():  # one candidate at a time: each is as large as the data
        estimate = candidate(sigma)
        r2 = latent_r2(on_subframe_time(estimate, ds).transpose("trial", "time", "neuron"), ds["latents_true"],
                       train_trials=fit, test_trials=check)
        if r2 > best_r2:
            best, best_r2 = estimate, r2
    if best.attrs["sigma"] > 0:  # no smoothing is the true floor of the grid: nothing lies below it
        warn_at_grid_edge(grid, best.attrs["sigma"], "smoothing width")
    return best


def compare_methods(ds: xr.Dataset, train_config: TrainConfig, *, seed: int = 0, progress_factory=None,
                    **sizes) -> tuple[xr.Dataset, dict[str, xr.DataArray], dict]:
    """Run the four methods on a sub-frame calcium Dataset ``ds``.

    ``train_config``: how both LFADS models train; ``sizes``: their LFADSConfig sizes;
    ``seed``: their initial weights; ``progress_factory``: called with the method name, returns
    a training progress display (None: the default one). Returns ``(scores, estimates, runs)``:
    ``scores`` a Dataset over ``method`` (``METHODS``) with ``latent_r2`` (NaN without
    truth) and ``smoothing_sigma`` (the chosen width in s; NaN for the LFADS models), attrs
    ``lorenz_hz`` when known; ``estimates`` each method's per-neuron estimate (trial, time,
    neuron), at frame resolution for the frame-binned methods and at sub-frame resolution for
    the others; ``runs`` the two TrainResults and infer outputs, keyed by method.
    """
    frames = frame_binned(ds)
    estimates = {"smoothing_frame": smoothed_events(ds, timing="frame"),
                 "smoothing_subframe": smoothed_events(ds, timing="subframe")}
    runs = {}
    for method, data in (("lfads_frame", frames), ("radical", ds)):
        model = build_model(data, train_config, seed=seed, **sizes)
        progress = progress_factory(method) if progress_factory else None
        result = train(model, data, train_config, progress=progress)
        output = infer(result.model, data)
        runs[method] = {"result": result, "output": output}
        estimates[method] = output["events_mean"]
    scores = xr.Dataset(
        {"latent_r2": ("method", np.array([truth_scores(estimates[m], ds)["latent_r2"] for m in METHODS])),
         "smoothing_sigma": ("method", np.array([estimates[m].attrs["sigma"] if m.startswith("smoothing") else np.nan
                                                 for m in METHODS]))},
        coords={"method": list(METHODS)},
        attrs={k: ds.attrs[k] for k in ("lorenz_hz", "seed") if k in ds.attrs},
    )
    scores["latent_r2"].attrs["description"] = ("metrics.latent_r2: ridge from all neurons' estimates to the true "
                                                "Lorenz state, fit on train trials, R^2 on valid trials")
    scores["smoothing_sigma"].attrs.update(units="s", description="the smoothing baselines' Gaussian width, "
                                           "chosen on training trials (0: no smoothing)")
    return scores, estimates, runs
