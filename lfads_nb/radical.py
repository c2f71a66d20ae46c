"""RADICaL against its baselines on sub-frame calcium data (tutorial 06).

Four ways to estimate each neuron's activity from the same deconvolved events, each then scored
against the truth on held-out trials (``calcium.truth_scores``: ``metrics.latent_r2``):

- ``smoothing_frame``: frame-binned events smoothed in time (``calcium.smoothed_events``);
- ``smoothing_subframe``: each neuron's events at its own sub-frame read times, smoothed or
  interpolated per neuron (``calcium.smoothed_events(timing='subframe')``): the sub-frame timing
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

from .calcium import METHODS, frame_binned, smoothed_events, truth_scores
from .models import build_model
from .training import TrainConfig, infer, train


def compare_methods(ds: xr.Dataset, train_config: TrainConfig, *, seed: int = 0, progress_factory=None,
                    **sizes) -> tuple[xr.Dataset, dict[str, xr.DataArray], dict]:
    """Run the four methods on a sub-frame calcium Dataset ``ds``.

    ``train_config``: how both LFADS models train; ``sizes``: their LFADSConfig sizes;
    ``seed``: their initial weights; ``progress_factory``: called with the method name, returns
    a training progress display (None: the default one). Returns ``(scores, estimates, runs)``:
    ``scores`` a Dataset over ``method`` (``calcium.METHODS``) with ``latent_r2`` (NaN without
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
