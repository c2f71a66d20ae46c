"""RADICaL against its baselines on sub-frame calcium data (tutorial 06).

Three ways to estimate each neuron's activity from the same deconvolved events, each then scored
against the truth on held-out trials (``calcium.truth_scores``):

- ``smoothing``: frame-binned events smoothed in time (``calcium.smoothed_events``);
- ``lfads_frame``: ZIG LFADS on the frame-binned events (one bin per frame, the AutoLFADS way);
- ``radical``: ZIG LFADS on the sub-frame events, unsampled bins NaN and skipped by selective
  backpropagation through time (Zhu et al. 2022).

Both LFADS models get the same sizes and training settings; ``s_min`` comes from the data.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from .calcium import METHODS, frame_binned, smoothed_events, truth_scores
from .models import build_model
from .training import TrainConfig, infer, train


def compare_methods(ds: xr.Dataset, train_config: TrainConfig, *, seed: int = 0, progress_factory=None,
                    **sizes) -> tuple[xr.Dataset, dict[str, xr.DataArray], dict]:
    """Run the three methods on a sub-frame calcium Dataset ``ds``.

    ``train_config``: how both LFADS models train; ``sizes``: their LFADSConfig sizes;
    ``seed``: their initial weights; ``progress_factory``: called with the method name, returns
    a training progress display (None: the default one). Returns ``(scores, estimates, runs)``:
    ``scores`` a Dataset with dim ``method`` = smoothing, lfads_frame, radical and variables
    ``state_r2``, ``rate_r2`` (NaN without truth), attrs ``lorenz_hz`` when known;
    ``estimates`` each method's per-neuron estimate (trial, time, neuron), smoothing and
    lfads_frame at frame resolution, radical at sub-frame resolution; ``runs`` the two
    TrainResults and infer outputs, keyed by method.
    """
    frames = frame_binned(ds)
    estimates, runs = {"smoothing": smoothed_events(ds)}, {}
    for method, data in (("lfads_frame", frames), ("radical", ds)):
        model = build_model(data, train_config, seed=seed, **sizes)
        progress = progress_factory(method) if progress_factory else None
        result = train(model, data, train_config, progress=progress)
        output = infer(result.model, data)
        runs[method] = {"result": result, "output": output}
        estimates[method] = output["events_mean"]
    rows = [truth_scores(estimates[m], ds) for m in METHODS]
    scores = xr.Dataset(
        {name: ("method", np.array([row[name] for row in rows])) for name in ("state_r2", "rate_r2")},
        coords={"method": list(METHODS)},
        attrs={k: ds.attrs[k] for k in ("lorenz_hz", "seed") if k in ds.attrs},
    )
    scores["state_r2"].attrs["description"] = "ridge from the estimates to the true Lorenz state, R^2 on valid trials"
    scores["rate_r2"].attrs["description"] = "per-neuron affine map to the true rates, R^2 on valid trials"
    return scores, estimates, runs
