"""Evaluation metrics, computed the way nlb_tools (Neural Latents Benchmark) computes them.

All inputs are xarray DataArrays and are matched by dimension name and coordinate value,
never by position: ``rates`` and ``spikes`` have dims ``(trial, time, neuron)`` in any order,
latents ``(trial, time, <latent dim>)``, behaviour ``(trial, time, behavior_dim)``. Rates are
in Hz; ``bin_width`` (seconds) turns them into expected counts per bin where a metric needs
counts. Bad input raises :class:`DataError` (data) or :class:`ConfigError` (arguments).

===================  ==========================================================================
metric               definition
===================  ==========================================================================
``rate_r2``          R^2 per neuron over all (trial, time) points, averaged over neurons
``bits_per_spike``   (NLL_null - NLL_model) / (spike count x ln 2), Poisson NLL incl. log(x!)
``co_bps``           ``bits_per_spike`` on the held-out neurons only
``fp_bps``           ``bits_per_spike`` on the forward-prediction bins only
``velocity_r2``      ridge decoder (alpha by 5-fold CV over logspace(-4, 0, 9)) fit on train
                     trials, R^2 on test trials, uniform average over behaviour dims
``psth_r2``          per condition, mean rates over its evaluated trials vs the mean smoothed
                     spikes over all its trials; R^2 per neuron over the stacked conditions,
                     averaged over neurons
``state_r2``         least-squares affine map true latents -> inferred latents, R^2 averaged
                     over inferred dims (Sedler et al. 2023: superfluous inferred dims lower it)
``spike_echo``       slope of a model's rate error at t + lag on the spike noise at t (identity
                     overfitting: a model that copies its input spikes has a peak at lag 0)
``latent_r2``        ridge map inferred latents (factors) -> true latents fit on train trials,
                     R^2 on test trials averaged over true dims (decoding: held out)
``session_decoding_  affine decoder from each session's factors to the true state's top PCs,
r2``                 fit within a session or on the other sessions (optionally aligned to the
                     session first), R^2 on valid trials
===================  ==========================================================================

``smooth_spikes`` is the Gaussian-smoothing baseline; ``choose_smoothing_sigma`` picks its width.
``spike_scores`` puts these scores for several rate estimates in one table (dim ``method``).

``score(out, ds)`` (``lfads_nb.score``) is the one entry for every data kind: the kind's table for
one inference or several, ``latent_r2`` and ``state_r2`` included, NaN where the data lack a truth.

EMG (values in the data's units, (trial, time, neuron=channel)): ``smooth_emg`` is the low-pass
baseline and ``choose_emg_smoothing`` picks its width without truth; ``activation_r2`` scores an
estimate against the true expected EMG (optionally on some entries only, e.g. ``artifact_free``
bins) and ``artifact_leakage`` measures how much of injected artifacts an estimate reproduces.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr
from scipy.ndimage import convolve1d
from scipy.special import gammaln
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV

from .data.kinds import kind_of
from .data.schema import DIMS, describe_ids, select_ids
from .errors import ConfigError, DataError

# nlb_tools replaces zero predicted counts with this so a spike under a zero rate costs a
# large but finite NLL instead of infinity.
MIN_EXPECTED_COUNT = 1e-9
# Ridge penalties nlb_tools searches over, with its default 5-fold (unshuffled) CV.
RIDGE_ALPHAS = np.logspace(-4, 0, 9)
CV_FOLDS = 5
# The Gaussian kernel is truncated at this many standard deviations.
KERNEL_TRUNCATE_SD = 4.0


# ----------------------------------------------------------------------------- input checks

def _as_array(da, name: str, dims: Sequence[str]) -> xr.DataArray:
    """``da`` transposed to ``dims``; DataError if it is not a DataArray with exactly those dims."""
    if isinstance(da, xr.Dataset):
        raise DataError(
            f"'{name}' is a Dataset; pass one variable, e.g. ds['spikes'] or ds['rates_true']."
        )
    if not isinstance(da, xr.DataArray):
        raise DataError(
            f"'{name}' must be an xarray.DataArray with dims {tuple(dims)}, got {type(da).__name__}. "
            f"Wrap a numpy array with xr.DataArray(values, dims={tuple(dims)})."
        )
    if set(da.dims) != set(dims) or len(da.dims) != len(dims):
        raise DataError(f"'{name}' has dims {da.dims}; expected {tuple(dims)} (in any order).")
    return da.transpose(*dims)


def _feature_dim(da, name: str) -> str:
    """The one dim of a (trial, time, <feature>) DataArray that is neither trial nor time."""
    if not isinstance(da, xr.DataArray):
        raise DataError(f"'{name}' must be an xarray.DataArray, got {type(da).__name__}.")
    others = [d for d in da.dims if d not in ("trial", "time")]
    if "trial" not in da.dims or "time" not in da.dims or len(others) != 1:
        raise DataError(
            f"'{name}' has dims {da.dims}; expected ('trial', 'time', <one feature dim>), "
            "e.g. ('trial', 'time', 'latent')."
        )
    return others[0]


def _same_index(a: xr.DataArray, b: xr.DataArray, names: tuple[str, str], dims: Sequence[str]) -> None:
    """Check that ``a`` and ``b`` have the same sizes and coordinate values along ``dims``."""
    for dim in dims:
        if a.sizes[dim] != b.sizes[dim]:
            raise DataError(
                f"'{names[0]}' has {a.sizes[dim]} entries along '{dim}' but '{names[1]}' has "
                f"{b.sizes[dim]}; select matching entries, e.g. "
                f"{names[1]}.sel({dim}={names[0]}['{dim}'])."
            )
        if dim not in a.coords or dim not in b.coords:
            continue
        va, vb = a[dim].values, b[dim].values
        if va.dtype.kind == "f" and vb.dtype.kind == "f":
            same = np.allclose(va, vb, rtol=1e-9, atol=1e-12)
        else:
            same = np.array_equal(va, vb)
        if not same:
            bad = int(np.flatnonzero(va != vb)[0]) if va.shape == vb.shape else 0
            raise DataError(
                f"'{names[0]}' and '{names[1]}' disagree on the '{dim}' coordinate "
                f"(first difference at position {bad}: {va[bad].item()!r} vs {vb[bad].item()!r}); "
                f"select matching entries, e.g. {names[1]}.sel({dim}={names[0]}['{dim}'])."
            )


def _finite(values: np.ndarray, name: str, where: str = "") -> None:
    if not np.all(np.isfinite(values)):
        raise DataError(
            f"'{name}' contains NaN or infinite values{where}; metrics need finite predictions there."
        )


def _check_rates(values: np.ndarray, name: str) -> None:
    negative = values < 0
    if np.any(negative):
        raise DataError(
            f"'{name}' has negative values (min {np.nanmin(values):.4g}); rates must be >= 0 Hz. "
            "Pass rates from the model's output nonlinearity (exp or softplus), not log-rates."
        )


def _check_bin_width(bin_width: float) -> float:
    if not isinstance(bin_width, (int, float, np.number)) or not np.isfinite(bin_width) or bin_width <= 0:
        raise ConfigError(f"bin_width must be a positive number of seconds, got {bin_width!r}.")
    return float(bin_width)


def _labels(da: xr.DataArray, dim: str) -> np.ndarray:
    return da[dim].values if dim in da.coords else np.arange(da.sizes[dim])


def _r2_columns(pred: np.ndarray, target: np.ndarray, what: str, labels) -> np.ndarray:
    """R^2 of each column of ``pred`` (samples, columns) against ``target``."""
    ss_tot = np.sum((target - target.mean(axis=0)) ** 2, axis=0)
    flat = ss_tot == 0
    if np.any(flat):
        raise DataError(
            f"R^2 is undefined for {what} {np.asarray(labels)[flat].tolist()}: the target is constant "
            "there. Drop them first, e.g. .drop_sel(...) on that dim."
        )
    ss_res = np.sum((target - pred) ** 2, axis=0)
    return 1.0 - ss_res / ss_tot


# ----------------------------------------------------------------------------- rate R^2

def rate_r2_per_neuron(rates: xr.DataArray, rates_true: xr.DataArray) -> xr.DataArray:
    """R^2 of ``rates`` against ``rates_true`` for each neuron, over all (trial, time) points.

    Both (trial, time, neuron) in the same unit (Hz). Returns a DataArray over ``neuron``.
    """
    rates = _as_array(rates, "rates", DIMS)
    rates_true = _as_array(rates_true, "rates_true", DIMS)
    _same_index(rates, rates_true, ("rates", "rates_true"), DIMS)
    pred = rates.values.reshape(-1, rates.sizes["neuron"]).astype(float)
    target = rates_true.values.reshape(-1, rates.sizes["neuron"]).astype(float)
    _finite(pred, "rates")
    _finite(target, "rates_true")
    _check_rates(pred, "rates")
    _check_rates(target, "rates_true")
    neurons = _labels(rates_true, "neuron")
    r2 = _r2_columns(pred, target, "neurons", neurons)
    return xr.DataArray(r2, dims=("neuron",), coords={"neuron": neurons}, name="rate_r2")


def rate_r2(rates: xr.DataArray, rates_true: xr.DataArray) -> float:
    """Rate R^2: per-neuron R^2 over all (trial, time) points, averaged over neurons."""
    return float(rate_r2_per_neuron(rates, rates_true).mean())


# ----------------------------------------------------------------------------- bits per spike

def _poisson_nll(expected: np.ndarray, counts: np.ndarray) -> float:
    """Summed Poisson NLL, lambda - x log(lambda) + log(x!), over the given (observed) bins."""
    expected = np.where(expected == 0, MIN_EXPECTED_COUNT, expected)
    return float(np.sum(expected - counts * np.log(expected) + gammaln(counts + 1.0)))


def _counts_and_expected(rates, spikes, bin_width: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked (counts, expected counts ``rates x bin_width``, observed mask), all (trial, time, neuron)."""
    bin_width = _check_bin_width(bin_width)
    rates = _as_array(rates, "rates", DIMS)
    spikes = _as_array(spikes, "spikes", DIMS)
    _same_index(rates, spikes, ("rates", "spikes"), DIMS)
    counts = spikes.values.astype(float)
    observed = ~np.isnan(counts)
    if np.any(counts[observed] < 0):
        raise DataError("'spikes' has negative counts; spike counts must be >= 0.")
    expected = rates.values.astype(float) * bin_width
    _finite(expected[observed], "rates", " where spikes are observed")
    _check_rates(expected[observed], "rates")
    return counts, expected, observed


def nll_per_entry(rates: xr.DataArray, spikes: xr.DataArray, bin_width: float) -> float:
    """Mean Poisson NLL (nats, including log(x!)) per observed (trial, time, neuron) entry of
    ``spikes`` under ``rates`` (Hz): the unit of LFADS's reconstruction loss, so the true rates'
    value is the reference a model's validation NLL should not go below. NaN spikes are left out."""
    counts, expected, observed = _counts_and_expected(rates, spikes, bin_width)
    return _poisson_nll(expected[observed], counts[observed]) / max(1, int(observed.sum()))


def bits_per_spike(rates: xr.DataArray, spikes: xr.DataArray, bin_width: float) -> float:
    """Bits per spike of ``rates`` (Hz) on ``spikes`` (counts), both (trial, time, neuron).

    ``(NLL_null - NLL_model) / (spike count x ln 2)`` with the Poisson NLL (including
    log(x!)) of expected counts ``rates x bin_width``. The null model predicts each neuron's
    mean count over the evaluated (trial, time) bins. NaN spikes (bins not observed) are
    left out; rates must be finite and >= 0 wherever spikes are observed. Zero expected
    counts are replaced by 1e-9, as nlb_tools does. 0 = no better than each neuron's mean
    rate; the higher the better.
    """
    counts, expected, observed = _counts_and_expected(rates, spikes, bin_width)
    total = counts[observed].sum()
    if total == 0:
        raise DataError(
            "The evaluated spikes contain no spikes, so bits per spike is undefined; "
            "evaluate on more trials or neurons."
        )
    # Null: each neuron's mean count over the observed bins, broadcast over (trial, time).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a neuron never observed: all-NaN mean
        null = np.broadcast_to(np.nanmean(counts, axis=(0, 1), keepdims=True), counts.shape)
    nll_model = _poisson_nll(expected[observed], counts[observed])
    nll_null = _poisson_nll(null[observed], counts[observed])
    return (nll_null - nll_model) / (total * math.log(2))


def _selected_ids(spec, dim: str, rates, spikes, what: str) -> np.ndarray:
    """Ids along ``dim`` chosen by ``spec``: the name of a boolean coordinate over ``dim`` (on
    ``spikes`` or ``rates``) that is True where chosen, or a list of ids."""
    if isinstance(spec, str):
        source = spikes if spec in getattr(spikes, "coords", {}) else rates
        if not isinstance(source, xr.DataArray) or spec not in source.coords:
            raise DataError(
                f"No coordinate {spec!r} on 'spikes' or 'rates'; add a boolean {dim} coord, "
                f"e.g. spikes.assign_coords({spec}=('{dim}', mask)), or pass a list of {dim} ids."
            )
        mask = source[spec]
        if mask.dims != (dim,) or mask.dtype != bool:
            raise DataError(f"Coordinate {spec!r} must be boolean with dims ('{dim}',), got "
                            f"dtype {mask.dtype} and dims {mask.dims}.")
        ids = source[dim].values[mask.values]
    else:
        ids = np.asarray(list(spec))
    if ids.size == 0:
        raise DataError(f"No {what} selected; pass at least one.")
    return ids


def co_bps(rates: xr.DataArray, spikes: xr.DataArray, heldout, bin_width: float) -> float:
    """Co-smoothing bits per spike: ``bits_per_spike`` on the held-out neurons only.

    ``heldout`` is either the name of a boolean coordinate along ``neuron`` (on ``spikes``
    or ``rates``) that is True for held-out neurons, or a list of held-out neuron ids.
    ``rates`` may cover all neurons or only the held-out ones.
    """
    ids = _selected_ids(heldout, "neuron", rates, spikes, "held-out neurons")
    return bits_per_spike(select_ids(rates, "neuron", ids, "rates"), select_ids(spikes, "neuron", ids, "spikes"),
                          bin_width)


def fp_bps(rates: xr.DataArray, spikes: xr.DataArray, forward, bin_width: float) -> float:
    """Forward-prediction bits per spike: ``bits_per_spike`` on the forward-prediction bins only.

    Forward-prediction bins follow the data the model saw; their rates come from the
    model's dynamics alone. ``forward`` is either the name of a boolean coordinate along
    ``time`` (on ``spikes`` or ``rates``) that is True for those bins, or a list of their
    time values, e.g. ``spikes['time'].values[-10:]``. ``rates`` may cover the whole trial
    or only the forward bins. The null model is each neuron's mean count over the forward
    bins. nlb_tools scores held-in and held-out neurons together there: pass all neurons,
    or select the ones to score first.
    """
    ids = _selected_ids(forward, "time", rates, spikes, "forward-prediction bins")
    return bits_per_spike(select_ids(rates, "time", ids, "rates"), select_ids(spikes, "time", ids, "spikes"),
                          bin_width)


# ----------------------------------------------------------------------------- identity overfitting

def spike_echo(rates: xr.DataArray, ds: xr.Dataset, lags=range(-3, 4)) -> xr.DataArray:
    """How much of each spike's own noise reaches the model's rate estimate, by lag (in bins).

    With x the spike counts, lambda = rates_true x bin_width the true expected counts and
    r = rates x bin_width the inferred ones, for every trial and neuron

        echo(lag) = sum_t (x_t - lambda_t) (r_{t+lag} - lambda_{t+lag}) / sum_t (x_t - lambda_t)^2,

    the least-squares slope of the model's error at t + lag on the Poisson noise at t (over the
    pairs of bins inside the trial). A model that reads rates off the population's dynamics has
    a small echo, spread smoothly over lags; a model that copies spikes through (identity
    overfitting) has a sharp peak at lag 0; 1 would be a perfect copy.

    ``rates``: (trial, time, neuron) in Hz, e.g. ``infer(...)['rates']``; ``ds``: the data, with
    ``rates_true``, holding those trials. Unobserved (NaN) bins are left out. Returns a
    DataArray over ``lag``.
    """
    if "rates_true" not in ds:
        raise DataError("spike_echo needs the true rates (ds['rates_true']); it is defined for synthetic data only.")
    if not isinstance(rates, xr.DataArray) or set(rates.dims) != {"trial", "time", "neuron"}:
        raise DataError("rates must be a DataArray (trial, time, neuron) in Hz, e.g. lfads_nb.infer(model, ds)['rates'].")
    lags = [int(lag) for lag in lags]
    n_time = ds.sizes["time"]
    if not lags or max(abs(lag) for lag in lags) >= n_time:
        raise ConfigError(f"lags must be a non-empty list of bin offsets smaller than the trial ({n_time} bins), got {lags}.")
    data = select_ids(ds, "trial", rates["trial"].values, "ds")
    bin_width = float(ds.attrs["bin_width"])
    truth = data["rates_true"].transpose(*DIMS).values.astype(float) * bin_width
    noise = data["spikes"].transpose(*DIMS).values.astype(float) - truth
    rates = select_ids(rates, "neuron", data["neuron"].values, "rates")
    error = rates.transpose(*DIMS).values.astype(float) * bin_width - truth
    noise, error = np.nan_to_num(noise), np.where(np.isnan(noise), 0.0, error)
    echo = []
    for lag in lags:
        a = noise[:, max(0, -lag):n_time - max(0, lag)]
        b = error[:, max(0, lag):n_time - max(0, -lag)]
        echo.append(float((a * b).sum() / (a * a).sum()))
    return xr.DataArray(np.array(echo), dims=("lag",), coords={"lag": lags}, name="spike_echo",
                        attrs={"description": "slope of the rate error at t + lag on the spike noise at t"})


# ----------------------------------------------------------------------------- behaviour decoding

def _trial_ids(spec, da: xr.DataArray, name: str) -> np.ndarray:
    """Trial ids from a split name (looked up in the 'split' coordinate) or a list of ids."""
    if isinstance(spec, str):
        if "split" not in da.coords:
            raise DataError(
                f"{name}={spec!r} names a split but there is no 'split' coordinate; "
                "pass a list of trial ids instead."
            )
        ids = da["trial"].values[da["split"].values.astype(str) == spec]
        if ids.size == 0:
            raise DataError(f"No trials with split == {spec!r}; splits present: "
                            f"{sorted(set(da['split'].values.astype(str)))}.")
        return ids
    ids = np.asarray(list(spec))
    missing = sorted(set(ids.tolist()) - set(da["trial"].values.tolist()))
    if missing:
        raise DataError(f"{name} has trial ids {missing[:8]} that are not in the data; valid trials: "
                        f"{describe_ids(da['trial'].values)}.")
    if ids.size == 0:
        raise DataError(f"{name} is empty; it needs at least one trial.")
    return ids


def _disjoint_trials(train_trials, test_trials, da: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    """The trial ids of ``train_trials`` and ``test_trials`` (see ``_trial_ids``), which must not overlap."""
    train = _trial_ids(train_trials, da, "train_trials")
    test = _trial_ids(test_trials, da, "test_trials")
    overlap = sorted(set(train.tolist()) & set(test.tolist()))
    if overlap:
        raise DataError(f"train_trials and test_trials share trials {overlap[:8]}; "
                        "the decoder must be scored on trials it was not fit on.")
    return train, test


def _lag_bins(lag: float, bin_width: float, n_time: int) -> int:
    bins = round(lag / bin_width)
    if not math.isclose(bins * bin_width, lag, rel_tol=1e-6, abs_tol=1e-9):
        raise ConfigError(f"lag {lag} s is not a whole number of {bin_width} s bins.")
    if abs(bins) >= n_time:
        raise ConfigError(f"lag {lag} s spans the whole trial ({n_time} bins of {bin_width} s).")
    return bins


def _lagged(values: np.ndarray, bins: int, side: str) -> np.ndarray:
    """The time slice of ``values`` (trial, time, ...) that pairs rates at t with behaviour at t + bins."""
    n_time = values.shape[1]
    if side == "rates":
        return values[:, max(0, -bins): n_time - max(0, bins)]
    return values[:, max(0, bins): n_time - max(0, -bins)]


def _decoder_inputs(rates, behavior, bin_width, lag):
    bin_width = _check_bin_width(bin_width)
    rates = _as_array(rates, "rates", DIMS)
    dim = _feature_dim(behavior, "behavior")
    behavior = behavior.transpose("trial", "time", dim)
    _same_index(rates, behavior, ("rates", "behavior"), ("trial", "time"))
    values = rates.values.astype(float)
    _finite(values, "rates")
    bins = _lag_bins(lag, bin_width, rates.sizes["time"])
    return rates, behavior, dim, bins, values * bin_width


def _ridge_decoder(x: np.ndarray, y: np.ndarray) -> GridSearchCV:
    """nlb_tools' decoder fitted from x (samples, features) to y (samples, targets): ridge with
    alpha chosen over ``RIDGE_ALPHAS`` by ``CV_FOLDS``-fold (unshuffled) cross-validation."""
    return GridSearchCV(Ridge(), {"alpha": RIDGE_ALPHAS}, cv=CV_FOLDS).fit(x, y)


def decode_behavior(rates: xr.DataArray, behavior: xr.DataArray, *, train_trials, bin_width: float,
                    lag: float = 0.0) -> xr.DataArray:
    """Fit the nlb_tools ridge decoder from rates to behaviour on ``train_trials``; predict all trials.

    ``rates``: (trial, time, neuron) in Hz, converted to expected counts per bin (what
    nlb_tools regresses from, so its alpha grid means the same here). ``behavior``:
    (trial, time, behavior_dim) with the same trial and time coordinates; NaN marks
    samples without behaviour, left out of the fit. ``train_trials``: a split name
    ('train') or a list of trial ids. ``lag`` (seconds, a whole number of bins): rates at
    time t predict behaviour at t + lag (positive when neural activity leads movement);
    bins with no paired rates are NaN in the output. The alpha chosen by 5-fold CV over
    logspace(-4, 0, 9) is in ``attrs['alpha']``. Returns a DataArray like ``behavior``.
    """
    rates, behavior, dim, bins, counts = _decoder_inputs(rates, behavior, bin_width, lag)
    train = np.isin(rates["trial"].values, _trial_ids(train_trials, behavior, "train_trials"))
    x = _lagged(counts[train], bins, "rates").reshape(-1, counts.shape[-1])
    y = _lagged(behavior.values[train].astype(float), bins, "behavior").reshape(-1, behavior.sizes[dim])
    keep = np.all(np.isfinite(y), axis=1)
    if keep.sum() < CV_FOLDS:
        raise DataError(
            f"Only {keep.sum()} training samples have behaviour; the decoder's {CV_FOLDS}-fold "
            "cross-validation needs at least that many. Use more training trials."
        )
    search = _ridge_decoder(x[keep], y[keep])
    paired = _lagged(counts, bins, "rates")
    pred = np.full(behavior.shape, np.nan)
    pred[:, max(0, bins): behavior.sizes["time"] - max(0, -bins)] = search.predict(
        paired.reshape(-1, counts.shape[-1])
    ).reshape(paired.shape[:2] + (behavior.sizes[dim],))
    out = behavior.copy(data=pred)
    out.name = f"{behavior.name}_decoded" if behavior.name else "behavior_decoded"
    out.attrs = {**behavior.attrs, "alpha": float(search.best_params_["alpha"]), "lag": float(lag)}
    return out


def velocity_r2(rates: xr.DataArray, behavior: xr.DataArray, *, train_trials, test_trials,
                bin_width: float, lag: float = 0.0) -> float:
    """Behaviour-decoding R^2 (nlb_tools 'vel R2').

    A ridge decoder (see :func:`decode_behavior`) fit on ``train_trials``, scored on
    ``test_trials`` (split names or lists of trial ids; they must not overlap). R^2 per
    behaviour dim over the test (trial, time) samples with behaviour, then the uniform
    average over dims: what nlb_tools' ``GridSearchCV.score`` returns with scikit-learn
    >= 0.23 (older versions weighted dims by variance). A sample is left out where any
    behaviour dim is NaN (nlb_tools looks at the first dim only; its velocities are NaN
    together). Area2_Bump's nlb score averages separate decoders for active and passive
    trials: call this once per group and average.
    """
    train, test = _disjoint_trials(train_trials, test_trials, behavior)
    pred = decode_behavior(rates, behavior, train_trials=train, bin_width=bin_width, lag=lag)
    dim = pred.dims[-1]
    true = behavior.transpose("trial", "time", dim).sel(trial=test).values.reshape(-1, pred.sizes[dim])
    pred = pred.sel(trial=test).values.reshape(-1, pred.sizes[dim])
    keep = np.all(np.isfinite(true), axis=1) & np.all(np.isfinite(pred), axis=1)
    if keep.sum() < 2:
        raise DataError("The test trials have fewer than 2 samples with behaviour; R^2 is undefined.")
    return float(_r2_columns(pred[keep], true[keep], "behaviour dims", _labels(behavior, dim)).mean())


# ----------------------------------------------------------------------------- smoothing

def gaussian_kernel(bin_width: float, sigma: float) -> xr.DataArray:
    """Gaussian kernel of std ``sigma`` seconds sampled at bin offsets, summing to 1.

    Truncated at 4 sigma (at least one bin each side). Returns a DataArray over ``offset``
    (seconds).
    """
    bin_width = _check_bin_width(bin_width)
    if not np.isfinite(sigma) or sigma <= 0:
        raise ConfigError(f"sigma must be a positive number of seconds, got {sigma!r}.")
    half = max(1, math.ceil(KERNEL_TRUNCATE_SD * sigma / bin_width))
    offsets = np.arange(-half, half + 1) * bin_width
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    return xr.DataArray(weights / weights.sum(), dims=("offset",), coords={"offset": offsets},
                        attrs={"sigma": float(sigma), "units": "1"})


def _smooth(counts: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """Kernel-weighted mean count per bin, normalised by the kernel mass on observed bins.

    Bins outside the trial and NaN (unobserved) bins carry no weight, so a constant count
    stays that constant up to the edges; a bin with no observed bin in reach is NaN.
    """
    counts = np.asarray(counts, dtype=float)
    observed = ~np.isnan(counts)
    if observed.all():  # the kernel mass inside the trial depends on the bin alone: one row for all
        ones = np.ones([n if d == axis % counts.ndim else 1 for d, n in enumerate(counts.shape)])
        num = convolve1d(counts, kernel, axis=axis, mode="constant", cval=0.0)
        num /= convolve1d(ones, kernel, axis=axis, mode="constant", cval=0.0)
        return num
    num = convolve1d(np.where(observed, counts, 0.0), kernel, axis=axis, mode="constant", cval=0.0)
    den = convolve1d(observed.astype(float), kernel, axis=axis, mode="constant", cval=0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def smooth_spikes(spikes: xr.DataArray, bin_width: float, sigma: float) -> xr.DataArray:
    """The Gaussian-smoothing baseline: spikes smoothed in time, per trial and neuron, in Hz.

    ``spikes``: (trial, time, neuron) counts (NaN = not observed). ``sigma``: kernel std in
    seconds. At trial edges (and around unobserved bins) the kernel is renormalised by its
    mass inside the observed part, so no rate is lost there: a constant count c gives
    c / bin_width Hz everywhere. Returns a DataArray with the coords of ``spikes``.
    """
    kernel = gaussian_kernel(bin_width, sigma).values
    spikes = _as_array(spikes, "spikes", DIMS)
    counts = spikes.values.astype(float)
    if np.any(counts[~np.isnan(counts)] < 0):
        raise DataError("'spikes' has negative counts; spike counts must be >= 0.")
    rates = _smooth(counts, kernel, axis=1)
    rates /= float(bin_width)
    out = spikes.copy(data=rates)
    out.name = "rates_smoothed"
    out.attrs = {"units": "Hz", "sigma": float(sigma)}
    return out


def _neighbour_kernel(bin_width: float, sigma: float) -> np.ndarray:
    """The Gaussian kernel of std ``sigma`` (s) with its centre removed, so that smoothing
    predicts each bin from its neighbours only (leave-one-bin-out; ``_smooth`` renormalises)."""
    if sigma < 0.5 * bin_width:
        raise ConfigError(
            f"sigma {sigma} s is under half a bin ({bin_width} s): leaving the centre bin out "
            "would leave almost no weight on the neighbours. Use sigmas >= bin_width / 2."
        )
    kernel = gaussian_kernel(bin_width, sigma).values.copy()
    kernel[kernel.size // 2] = 0.0
    return kernel


def warn_at_grid_edge(sigmas: np.ndarray, best: float, what: str) -> None:
    """Warn when the chosen width ``best`` is the smallest or largest of ``sigmas`` (s): the
    optimum may lie outside the grid, and a baseline tuned there is not a fair one."""
    if sigmas.size > 1 and best in (sigmas.min(), sigmas.max()):
        end = "low" if best == sigmas.min() else "high"
        warnings.warn(f"The best {what}, {best:g} s, is at the {end} end of the grid ({sigmas.min():g}-"
                      f"{sigmas.max():g} s); at an edge of the grid the optimum may lie beyond it. "
                      "Widen the grid in that direction.", UserWarning, stacklevel=3)


def choose_smoothing_sigma(spikes: xr.DataArray, bin_width: float, sigmas: Sequence[float],
                           rates_true: xr.DataArray | None = None) -> tuple[float, xr.DataArray]:
    """Pick the smoothing width for ``smooth_spikes`` from candidate ``sigmas`` (seconds).

    With ``rates_true`` (Hz): the sigma with the highest :func:`rate_r2` of the smoothed
    spikes. Without: the sigma with the highest leave-one-bin-out bits per spike, where
    each bin's rate comes from its neighbours only (kernel centre removed, renormalised),
    so the spikes being scored never predict themselves. Pass training trials only.
    Returns ``(best_sigma, scores)``, scores a DataArray over ``sigma``. Warns when the best
    sigma is the smallest or largest candidate: the optimum may lie outside the grid, and a
    baseline tuned there is not a fair one. Widen the grid.
    """
    bin_width = _check_bin_width(bin_width)
    sigmas = np.asarray(list(sigmas), dtype=float)
    if sigmas.size == 0:
        raise ConfigError("sigmas is empty; give candidate kernel widths in seconds.")
    spikes = _as_array(spikes, "spikes", DIMS)
    scores = []
    for sigma in sigmas:
        if rates_true is not None:
            scores.append(rate_r2(smooth_spikes(spikes, bin_width, sigma), rates_true))
            continue
        kernel = _neighbour_kernel(bin_width, sigma)
        rates = spikes.copy(data=_smooth(spikes.values.astype(float), kernel, axis=1) / bin_width)
        scores.append(bits_per_spike(rates, spikes, bin_width))
    scores = xr.DataArray(np.asarray(scores), dims=("sigma",), coords={"sigma": sigmas},
                          name="rate_r2" if rates_true is not None else "loo_bits_per_spike")
    best = float(sigmas[int(np.argmax(scores.values))])
    warn_at_grid_edge(sigmas, best, "smoothing width")
    return best, scores


# ----------------------------------------------------------------------------- PSTH R^2

def psth_r2(rates: xr.DataArray, spikes: xr.DataArray, *, bin_width: float, sigma: float = 0.03,
            condition="condition") -> float:
    """PSTH R^2 (nlb_tools 'psth R2'): how well condition-averaged rates match the conditions' PSTHs.

    For each condition among the trials of ``rates`` (Hz, (trial, time, neuron)), the
    predicted PSTH is the mean of ``rates`` over those trials, and the true PSTH the mean of
    ``smooth_spikes(spikes, bin_width, sigma)`` over all of that condition's trials in
    ``spikes``, evaluated trials included (no leave-one-out), each trial counting at the
    bins where its spikes are observed. Time bins the true PSTH does not cover are left out;
    the conditions' PSTHs are stacked over time and R^2 is taken per neuron, then averaged
    over neurons. ``spikes`` holds the trials that form the PSTHs (e.g. all trials) and must
    include those of ``rates``. ``condition``: the name of a per-trial coordinate of
    ``spikes`` or a DataArray over ``trial``.
    nlb_tools smooths the whole session's 1 ms spikes before binning, with a sigma set per
    dataset (70 ms for MC_Maze, 50 ms for the MC_Maze scaling sets, 40 ms for Area2_Bump);
    here smoothing is per trial at bin resolution: pass the sigma of the dataset compared with.
    """
    bin_width = _check_bin_width(bin_width)
    rates = _as_array(rates, "rates", DIMS)
    spikes = _as_array(spikes, "spikes", DIMS)
    _same_index(rates, spikes, ("rates", "spikes"), ("time", "neuron"))
    if isinstance(condition, str):
        if condition not in spikes.coords:
            raise DataError(f"'spikes' has no {condition!r} coordinate; pass ds['spikes'] from a dataset "
                            "with per-trial conditions, or a DataArray of conditions over 'trial'.")
        condition = spikes[condition]
    if not isinstance(condition, xr.DataArray) or condition.dims != ("trial",):
        raise DataError("condition must be a coordinate name or a DataArray with dims ('trial',).")
    _same_index(spikes, condition, ("spikes", "condition"), ("trial",))
    eval_ids = _trial_ids(rates["trial"].values, spikes, "rates' trials")
    labels = condition.values
    position = {tid: i for i, tid in enumerate(spikes["trial"].values.tolist())}
    eval_labels = labels[[position[tid] for tid in eval_ids.tolist()]]
    # A trial adds to its PSTH only where it was observed, not where smoothing reaches past its end.
    smoothed = np.where(np.isnan(spikes.values), np.nan, smooth_spikes(spikes, bin_width, sigma).values)
    values = rates.values.astype(float)
    preds, targets = [], []
    for label in dict.fromkeys(eval_labels.tolist()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # bins no trial observed: NaN
            target = np.nanmean(smoothed[labels == label], axis=0)
        covered = np.isfinite(target).all(axis=1)
        pred = values[eval_labels == label][:, covered]
        _finite(pred, "rates", f" in bins that condition {label!r}'s PSTH covers")
        _check_rates(pred, "rates")
        preds.append(pred.mean(axis=0))
        targets.append(target[covered])
    return float(_r2_columns(np.concatenate(preds), np.concatenate(targets), "neurons",
                             _labels(rates, "neuron")).mean())


# ----------------------------------------------------------------------------- state R^2

def affine_fit(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The least-squares affine map from (n, F) ``source`` rows to (n, G) ``target`` rows, as (F + 1, G)
    weights whose last row is the offset: ``affine_apply(weights, x)`` maps new rows. The one affine
    fit of the library (``state_r2``, ``session_decoding_r2``, ``dynamics.affine_map``)."""
    weights, *_ = np.linalg.lstsq(np.hstack([source, np.ones((len(source), 1))]), target, rcond=None)
    return weights


def affine_apply(weights: np.ndarray, source: np.ndarray) -> np.ndarray:
    """(n, F) rows through an ``affine_fit`` map: (n, G)."""
    return source @ weights[:-1] + weights[-1]


def _affine_r2(source: xr.DataArray, target: xr.DataArray, names: tuple[str, str]) -> float:
    """R^2 of the least-squares affine map from ``source`` to ``target`` (both (trial, time,
    <feature>), fitted over all (trial, time) points), per target feature, averaged."""
    source_dim, target_dim = _feature_dim(source, names[0]), _feature_dim(target, names[1])
    x = source.transpose("trial", "time", source_dim)
    y = target.transpose("trial", "time", target_dim)
    _same_index(x, y, names, ("trial", "time"))
    xv = x.values.reshape(-1, x.sizes[source_dim]).astype(float)
    yv = y.values.reshape(-1, y.sizes[target_dim]).astype(float)
    _finite(xv, names[0])
    _finite(yv, names[1])
    fitted = affine_apply(affine_fit(xv, yv), xv)
    return float(_r2_columns(fitted, yv, f"{names[1]} '{target_dim}'", _labels(y, target_dim)).mean())


def state_r2(latents_inferred: xr.DataArray, latents_true: xr.DataArray) -> float:
    """State R^2 as Sedler, Versteeg & Pandarinath 2023 define it: how much of the INFERRED
    latent state the TRUE state explains.

    Both (trial, time, <latent dim>); the latent dims may differ in name and size. An affine map
    FROM the true latents TO the inferred latents is fitted by least squares over all (trial,
    time) points; the result is R^2 per inferred dim, averaged over inferred dims. Inferred dims
    the truth cannot explain (a 25-D GRU state for a 3-D attractor) lower the score, so it asks
    "is the model's state the true state, and nothing else?". In-sample, so between 0 and 1 (the
    paper's clamp at -10 never binds). The other direction is ``latent_r2``.
    """
    return _affine_r2(latents_true, latents_inferred, ("latents_true", "latents_inferred"))


def latent_r2(latents_inferred: xr.DataArray, latents_true: xr.DataArray, *, train_trials="train",
               test_trials="valid") -> float:
    """Latent R^2 (decoding direction, held out): how much of the TRUE latent state the INFERRED one
    predicts on trials the decoder was not fit on.

    Both (trial, time, <latent dim>) on the same trials and bins; the dims may differ in name and
    size. A ridge map FROM the inferred latents (e.g. ``factors``, or 100 per-neuron estimates) TO
    the true latents is fit on ``train_trials`` (alpha by 5-fold cross-validation over
    ``RIDGE_ALPHAS``, the nlb_tools decoder of :func:`velocity_r2`) and scored on ``test_trials``
    (split names, looked up in the 'split' coordinate, or lists of trial ids; disjoint): R^2 per
    true dim over the test (trial, time) points, averaged over true dims. Extra inferred dims can
    only help the fit, so a large model that contains the true state somewhere scores high here
    even when ``state_r2`` (true -> inferred) is low. At most 1; negative when the decoder
    predicts the held-out trials worse than their mean.
    """
    source_dim, target_dim = _feature_dim(latents_inferred, "latents_inferred"), _feature_dim(latents_true, "latents_true")
    x = latents_inferred.transpose("trial", "time", source_dim)
    y = latents_true.transpose("trial", "time", target_dim)
    _same_index(x, y, ("latents_inferred", "latents_true"), ("trial", "time"))
    where = y if "split" in y.coords else x
    train, test = _disjoint_trials(train_trials, test_trials, where)
    def flat(da, ids, name):
        values = da.sel(trial=ids).values.reshape(-1, da.shape[-1]).astype(float)
        _finite(values, name)
        return values
    search = _ridge_decoder(flat(x, train, "latents_inferred"), flat(y, train, "latents_true"))
    pred = search.predict(flat(x, test, "latents_inferred"))
    return float(_r2_columns(pred, flat(y, test, "latents_true"), f"latents_true '{target_dim}'",
                             _labels(y, target_dim)).mean())


# ----------------------------------------------------------------------------- spike-data score table

def spike_scores(ds: xr.Dataset, estimates: dict, *, latents: dict | None = None, train_trials="train",
                 test_trials="valid", psth_sigma: float = 0.03) -> xr.Dataset:
    """The spike-data comparison table: one row (``method``) per estimate in ``estimates``
    (name -> rates in Hz, (trial, time, neuron), on every trial and bin of ``ds``).

    Variables, scored on ``test_trials`` (a split name or trial ids):
    ``bits_per_spike`` on ``ds['spikes']`` (no truth needed); ``rate_r2`` against
    ``rates_true``; ``psth_r2`` (PSTHs of the smoothed spikes of every trial of a condition,
    ``psth_sigma`` seconds; needs the ``condition`` coordinate); ``velocity_r2``, a ridge decoder
    from the rates to ``behavior`` fit on ``train_trials``; ``latent_r2``, a ridge map from
    ``latents[name]`` (e.g. LFADS's factors; the rates themselves when the method has none) to
    ``latents_true`` fit on ``train_trials``; ``state_r2``, the affine map true -> inferred
    latents, fit on the test trials (in-sample, as Sedler et al. 2023). A score whose truth the
    data lack is NaN, and ``attrs['missing']`` names what was missing.
    """
    latents = latents or {}
    unknown = sorted(set(latents) - set(estimates))
    if unknown:
        raise ConfigError(f"latents has methods {unknown} that estimates lacks; give both the same names.")
    test = _trial_ids(test_trials, ds["spikes"], "test_trials")
    bin_width = float(ds.attrs["bin_width"])
    needs = {"rates_true": "rate_r2", "condition": "psth_r2", "behavior": "velocity_r2",
             "latents_true": "latent_r2, state_r2"}
    missing = [name for name in needs if name not in ds.variables]
    nan = float("nan")
    rows = {}
    for name, rates in estimates.items():
        mine = rates.sel(trial=test)
        rows[name] = {
            "bits_per_spike": bits_per_spike(mine, ds["spikes"].sel(trial=test), bin_width),
            "rate_r2": rate_r2(mine, ds["rates_true"].sel(trial=test)) if "rates_true" in ds else nan,
            "psth_r2": (psth_r2(mine, ds["spikes"], bin_width=bin_width, sigma=psth_sigma)
                        if "condition" in ds.coords else nan),
            "velocity_r2": (velocity_r2(rates, ds["behavior"], train_trials=train_trials, test_trials=test,
                                        bin_width=bin_width) if "behavior" in ds else nan),
            **_latent_scores(ds, latents.get(name, rates), train_trials, test),
        }
    out = xr.Dataset.from_dataframe(pd.DataFrame(rows).T.rename_axis("method"))
    out.attrs = {"test_trials": str(test_trials), "psth_sigma_s": psth_sigma,
                 "missing": ", ".join(f"{name} ({needs[name]} NaN)" for name in missing),
                 "description": "rate estimates scored on held-out trials; NaN where the data lack the truth"}
    return out


# ----------------------------------------------------------------------------- EMG

TRUTH_FIX = ("it needs the true expected EMG without noise or artifacts ('emg_mean_true', from an LFADS HDF5 "
             "file's *_truth arrays), which these data lack; score on data with known truth, e.g. data_generators.emg")
ARTIFACT_FIX = ("it needs the injected artifact amplitude per entry ('artifact_true', 0 off artifacts), which these "
                "data lack; score on data with known artifacts, e.g. data_generators.emg")
BEHAVIOR_FIX = "it needs behaviour ('behavior', (trial, time, behavior_dim)), which these data lack"


def _needed(da, score: str, fix: str):
    """``da`` unless it is None (truth the data lack): then a DataError saying what ``score`` needs."""
    if da is None:
        raise DataError(f"No truth for the {score}: {fix}.")
    return da


def smooth_emg(emg: xr.DataArray, bin_width: float, sigma: float) -> xr.DataArray:
    """The low-pass baseline for EMG: each channel smoothed in time with a Gaussian of std ``sigma``
    seconds (zero-phase; renormalised at trial edges and around NaN bins, as ``smooth_spikes``).
    A bin with no observed bin within the kernel's reach (a long run of NaN, e.g. masked
    artifacts) takes the Gaussian-weighted mean of the observed bins of its trial and channel
    (the kernel untruncated), so the gap is filled from both sides; it stays NaN only if the
    channel has no observed bin in that trial. ``emg`` (trial, time, neuron), any units; the result
    keeps them, named ``emg_mean``."""
    emg = _as_array(emg, "emg", DIMS)
    values = emg.values.astype(float)
    smoothed = _smooth(values, gaussian_kernel(bin_width, sigma).values, axis=1)
    gaps = np.isnan(smoothed) & ~np.isnan(values).all(axis=1, keepdims=True)
    if gaps.any():
        offsets = np.arange(-(values.shape[1] - 1), values.shape[1]) * bin_width
        smoothed[gaps] = _smooth(values, np.exp(-0.5 * (offsets / sigma) ** 2), axis=1)[gaps]
    out = emg.copy(data=smoothed)
    out.name = "emg_mean"
    out.attrs = {**emg.attrs, "sigma": float(sigma)}
    return out


def choose_emg_smoothing(emg: xr.DataArray, bin_width: float, sigmas: Sequence[float]) -> tuple[float, xr.DataArray]:
    """The low-pass width for ``smooth_emg`` chosen from the data alone, from candidate ``sigmas`` (s).

    Leave-one-bin-out: each bin is predicted by the Gaussian-weighted mean of its neighbours (the
    kernel's centre removed, renormalised), and the width with the smallest mean squared error
    wins. The bin's own noise cannot help predict it, so (for noise independent across bins) the
    error is the noise variance plus the smoother's error against the true envelope: the same
    ranking the truth would give. Warns when the best width is at an end of the grid (widen it).
    Pass training trials only. Returns ``(best_sigma, scores)``, scores (MSE) over ``sigma``.
    """
    bin_width = _check_bin_width(bin_width)
    sigmas = np.asarray(list(sigmas), dtype=float)
    if sigmas.size < 2:
        raise ConfigError("Give at least two candidate widths (seconds) to choose the low-pass from.")
    kernels = [_neighbour_kernel(bin_width, sigma) for sigma in sigmas]  # checks every width first
    values = _as_array(emg, "emg", DIMS).values.astype(float)
    scores = [np.nanmean((_smooth(values, kernel, axis=1) - values) ** 2) for kernel in kernels]
    scores = xr.DataArray(np.asarray(scores), dims=("sigma",), coords={"sigma": sigmas}, name="loo_mse")
    best = float(sigmas[int(np.argmin(scores.values))])
    warn_at_grid_edge(sigmas, best, "low-pass width")
    return best, scores


def artifact_free(artifact: xr.DataArray, margin: int) -> xr.DataArray:
    """True for the (trial, time) bins farther than ``margin`` bins from any artifact (any channel)
    of their trial; ``artifact`` (trial, time, neuron) the injected amplitude (0 off artifacts).
    Returns a bool DataArray over (trial, time, neuron), the same for every channel."""
    artifact = _as_array(artifact, "artifact", DIMS)
    hit = (artifact.values > 0).any(axis=-1).astype(float)
    near = convolve1d(hit, np.ones(2 * margin + 1), axis=1, mode="constant") > 0
    return artifact.copy(data=np.broadcast_to(~near[..., None], artifact.shape).copy())


def activation_r2(estimate: xr.DataArray, truth: xr.DataArray, where: xr.DataArray | None = None) -> float:
    """Activation R^2: R^2 per channel of ``estimate`` against ``truth`` (the true expected EMG, same
    units), over the (trial, time) entries where ``where`` is True (all by default), averaged over
    channels. All (trial, time, neuron) with the same coordinates."""
    estimate = _as_array(estimate, "estimate", DIMS)
    truth = _as_array(_needed(truth, "activation R^2", TRUTH_FIX), "truth", DIMS)
    _same_index(estimate, truth, ("estimate", "truth"), DIMS)
    keep = np.ones(truth.shape, bool) if where is None else _as_array(where, "where", DIMS).values.astype(bool)
    r2 = []
    for c in range(truth.sizes["neuron"]):
        pred, target = estimate.values[..., c][keep[..., c]], truth.values[..., c][keep[..., c]]
        _finite(pred, "estimate")
        _finite(target, "truth")
        r2.append(_r2_columns(pred[:, None].astype(float), target[:, None].astype(float), "channels",
                              truth["neuron"].values[[c]])[0])
    return float(np.mean(r2))


def artifact_leakage(estimate: xr.DataArray, truth: xr.DataArray, artifact: xr.DataArray) -> float:
    """The fraction of injected artifact amplitude that reappears in ``estimate``:
    sum over artifact entries of (estimate - truth) / sum of the injected amplitude ``artifact``.
    1: the estimate reproduces the artifacts; 0: it ignores them. All (trial, time, neuron)."""
    estimate = _as_array(estimate, "estimate", DIMS)
    truth = _as_array(_needed(truth, "artifact leakage", TRUTH_FIX), "truth", DIMS)
    artifact = _as_array(_needed(artifact, "artifact leakage", ARTIFACT_FIX), "artifact", DIMS)
    _same_index(estimate, truth, ("estimate", "truth"), DIMS)
    _same_index(estimate, artifact, ("estimate", "artifact"), DIMS)
    hit = artifact.values > 0
    if not hit.any():
        raise DataError("'artifact' is 0 everywhere, so there is no artifact to leak; leakage is undefined.")
    return float((estimate.values[hit] - truth.values[hit]).sum() / artifact.values[hit].sum())


def emg_scores(ds: xr.Dataset, estimates: dict, *, train_trials="train", test_trials="valid",
               margin: int = 6) -> xr.Dataset:
    """The EMG comparison table: one row (``method``) per estimate in ``estimates`` (name ->
    (trial, time, neuron) DataArray in the EMG's units, on ``ds``'s trials and bins).

    Variables, on the ``test_trials`` (a split name or trial ids): ``activation_r2`` against
    ``ds['emg_mean_true']`` on all bins; ``activation_r2_clean`` on the ``artifact_free`` bins
    (``margin`` bins from any artifact); ``artifact_leakage`` (needs ``artifact_true``);
    ``kinematics_r2``, a ridge decoder (``velocity_r2``, EMG values regressed as they are) from the
    estimate to ``ds['behavior']`` fit on ``train_trials``. A score whose truth ``ds`` lacks is NaN
    (with a warning naming it); the metric functions themselves raise instead.
    """
    test = _trial_ids(test_trials, ds["emg"], "test_trials")
    truth = ds["emg_mean_true"].sel(trial=test) if "emg_mean_true" in ds else None
    artifact = ds["artifact_true"].sel(trial=test) if "artifact_true" in ds else None
    missing = [name for name, da in (("emg_mean_true", truth), ("artifact_true", artifact)) if da is None]
    missing += [] if "behavior" in ds else ["behavior"]
    if missing:
        warnings.warn(f"The data have no {missing}: the scores that need them are NaN.", UserWarning, stacklevel=2)
    nan = float("nan")
    rows = {}
    for name, estimate in estimates.items():
        mine = estimate.sel(trial=test)
        rows[name] = {
            "activation_r2": activation_r2(mine, truth) if truth is not None else nan,
            "activation_r2_clean": (activation_r2(mine, truth, artifact_free(artifact, margin))
                                    if truth is not None and artifact is not None else nan),
            "artifact_leakage": (artifact_leakage(mine, truth, artifact)
                                 if truth is not None and artifact is not None and (artifact > 0).any() else nan),
            # bin_width 1: the decoder regresses EMG values as they are, not counts per bin
            "kinematics_r2": (velocity_r2(estimate, ds["behavior"], train_trials=train_trials, test_trials=test,
                                          bin_width=1.0) if "behavior" in ds else nan),
        }
    table = pd.DataFrame(rows).T.rename_axis("method")
    out = xr.Dataset.from_dataframe(table)
    out.attrs = {"test_trials": str(test_trials), "clean_margin_bins": margin,
                 "description": "EMG estimates against the truth on held-out trials; NaN where the data lack it"}
    return out


# ----------------------------------------------------------------------------- decoding across sessions

def _split_rows(da: xr.DataArray, label: str, session: str) -> np.ndarray:
    """(points, feature) rows of ``da``'s trials whose ``split`` coord is ``label``."""
    if "split" not in da.coords:
        raise DataError(f"Session '{session}' has no 'split' coord; the decoders are fit on 'train' trials and "
                        "scored on 'valid' ones. Pass DataArrays that keep the Dataset's coords.")
    rows = da.sel(trial=da["split"].values.astype(str) == label)
    if rows.sizes["trial"] == 0:
        raise DataError(f"Session '{session}' has no '{label}' trials to {'fit' if label == 'train' else 'score'} "
                        "the decoder on; label some of its trials so.")
    values = rows.values.reshape(-1, rows.shape[-1]).astype(float)
    _finite(values, f"session '{session}'")
    return values


def session_decoding_r2(inferred: dict, truth: dict, *, n_components: int = 10, align: bool = False) -> xr.Dataset:
    """How well one affine decoder reads a shared latent state out of each session's inferred
    latents, within a session and across sessions (lfads-torch's multisession evaluation, with
    the true state in place of behaviour).

    ``inferred`` and ``truth``: ``{session: DataArray (trial, time, <feature>)}`` with a ``split``
    coord, e.g. a stitched model's ``factors`` and the data's ``latents_true``. The target is the
    truth's top ``n_components`` principal components (fitted on every session's 'train' trials
    together, so the target is one space for all sessions). For each session s:

    - ``within_r2``: decoder fitted on s's 'train' trials, scored on s's 'valid' trials;
    - ``across_r2``: decoder fitted on every OTHER session's 'train' trials, scored on s's 'valid'
      trials (needs two or more sessions): it works only if the inferred latents of different
      sessions share one space.

    - with ``align``, ``across_aligned_r2``: as ``across_r2``, but each other session's latents first
      mapped into s's space by an affine map fitted by least squares from its condition-averaged
      'train' trials to s's (needs a ``condition`` coord; no truth used): separate models aligned
      after the fact, as a decoder is carried from day to day (Degenhart et al. 2020 align
      low-dimensional spaces in this spirit).

    R^2 per component on the 'valid' points, averaged over components. Returns a Dataset over
    ``session`` with these.
    """
    if not isinstance(inferred, dict) or set(inferred) != set(truth) or len(inferred) < 2:
        raise DataError("session_decoding_r2 needs {session: DataArray} for two or more sessions, the same sessions "
                        f"in inferred and truth; got {list(inferred)} and {list(truth)}.")
    names = list(inferred)
    for name in names:
        for what, da in (("inferred", inferred[name]), ("truth", truth[name])):
            if not isinstance(da, xr.DataArray) or da.dims[:2] != ("trial", "time") or da.ndim != 3:
                raise DataError(f"{what}['{name}'] must be a DataArray (trial, time, <feature>).")
        _same_index(inferred[name], truth[name], ("inferred", "truth"), ("trial", "time"))
    count, total, products = 0, 0.0, 0.0  # the truth's PCA from sums, one session in memory at a time
    for name in names:
        rows_truth = _split_rows(truth[name], "train", name)
        count, total, products = count + len(rows_truth), total + rows_truth.sum(0), products + rows_truth.T @ rows_truth
    if not 1 <= n_components <= min(count, len(total)):
        raise ConfigError(f"n_components must be between 1 and {min(count, len(total))}, got {n_components}.")
    centre = total / count
    eigenvalues, vectors = np.linalg.eigh(products / count - np.outer(centre, centre))
    components = vectors[:, np.argsort(eigenvalues)[::-1][:n_components]]

    def rows(name, label):
        return _split_rows(inferred[name], label, name), (_split_rows(truth[name], label, name) - centre) @ components

    def decoded_r2(sources, targets, name):
        """R^2 on session ``name``'s 'valid' rows of the decoder fitted from ``sources`` to ``targets``."""
        weights = affine_fit(np.concatenate(sources), np.concatenate(targets))
        test_source, test_target = rows(name, "valid")
        return float(_r2_columns(affine_apply(weights, test_source), test_target, "components",
                                 np.arange(n_components)).mean())

    def score(fit_on, name):
        return decoded_r2(*zip(*(rows(n, "train") for n in fit_on)), name)

    within = [score([name], name) for name in names]
    across = [score([n for n in names if n != name], name) for name in names]
    out = xr.Dataset({"within_r2": ("session", within), "across_r2": ("session", across)},
                     coords={"session": names}, attrs={"n_components": n_components})
    if align:
        means = {name: _condition_means(inferred[name], name) for name in names}
        aligned = []
        for name in names:
            sources, targets = [], []
            for other in (n for n in names if n != name):
                shared = sorted(set(means[other]) & set(means[name]), key=str)
                if not shared:
                    raise DataError(f"Sessions '{other}' and '{name}' share no condition in their 'train' trials; "
                                    "the alignment maps one session's condition means onto the other's.")
                mapping = affine_fit(np.concatenate([means[other][c] for c in shared]),
                                     np.concatenate([means[name][c] for c in shared]))
                x, y = rows(other, "train")
                sources.append(affine_apply(mapping, x))
                targets.append(y)
            aligned.append(decoded_r2(sources, targets, name))
        out["across_aligned_r2"] = ("session", aligned)
    return out


def _condition_means(da: xr.DataArray, session: str) -> dict:
    """{condition: (time, feature) mean of ``da`` over its 'train' trials of that condition}."""
    if "condition" not in da.coords:
        raise DataError(f"Session '{session}' has no 'condition' coord; aligning sessions after the fact maps "
                        "condition-averaged latents. Pass DataArrays that keep the Dataset's coords.")
    train = da.sel(trial=da["split"].values.astype(str) == "train")
    labels = train["condition"].values
    return {c: train.values[labels == c].mean(axis=0).astype(float) for c in np.unique(labels).tolist()}


# ----------------------------------------------------------------------------- one table by data kind

MODEL_LATENTS = ("factors", "latents")  # an inference Dataset's inferred latents: LFADS's, NDT's


def score(out, ds: xr.Dataset, *, train_trials="train", test_trials="valid", latents: str | None = None) -> xr.Dataset:
    """The comparison table of ``ds``'s data kind, one row (dim ``method``) per inference.

    ``out``: an inference Dataset of ``ds`` (``lfads_nb.infer``; method name ``'model'``), or
    ``{method: inference Dataset, or the kind's output as a DataArray}`` (a baseline such as
    ``smooth_spikes`` is a DataArray of rates in Hz), each on every trial and bin of ``ds``.
    Scored on ``test_trials``, decoders fit on ``train_trials`` (split names or trial ids), by kind:

    - spikes: ``spike_scores`` (``bits_per_spike``, ``rate_r2``, ``psth_r2``, ``velocity_r2``),
      plus ``co_bps`` (neurons of the ``heldout`` coordinate) and ``fp_bps`` (bins of the
      ``forward`` coordinate);
    - EMG: ``emg_scores`` (``activation_r2``, ``activation_r2_clean``, ``artifact_leakage``,
      ``kinematics_r2``);
    - calcium events: ``events_r2``, R^2 per neuron of the inferred events against
      ``events_mean_true``, averaged over neurons.

    Every kind also gets ``latent_r2`` (held-out decoding inferred -> true) and ``state_r2``
    (true -> inferred, in-sample) against ``latents_true``, from an inference's variable named by
    ``latents``; None takes its ``factors`` (LFADS) or ``latents`` (NDT), and a DataArray method
    is its own latents. ``latents="generator_states"`` scores a generator whose state is meant to
    be the system's (a low-dimensional neural ODE, as Sedler et al. 2023 do). A score whose truth
    or coordinate ``ds`` lacks is NaN.
    """
    kind = kind_of(ds)
    estimates, latents = _outputs_and_latents(out, kind.output, latents)
    if kind.name == "spikes":
        table = spike_scores(ds, estimates, latents=latents, train_trials=train_trials, test_trials=test_trials)
        return table.assign(_masked_bps(ds, estimates, test_trials)).assign_attrs(kind="spikes")
    if kind.name == "emg":
        with warnings.catch_warnings():  # a missing truth is a NaN column here, as for every kind
            warnings.simplefilter("ignore", UserWarning)
            table = emg_scores(ds, estimates, train_trials=train_trials, test_trials=test_trials)
    else:
        test = _trial_ids(test_trials, ds[kind.variable], "test_trials")
        table = xr.Dataset({"events_r2": ("method", [
            rate_r2(estimate.sel(trial=test), ds[kind.truth].sel(trial=test)) if kind.truth in ds else math.nan
            for estimate in estimates.values()])}, coords={"method": list(estimates)})
    rows = {name: _latent_scores(ds, latents.get(name, estimate), train_trials, test_trials)
            for name, estimate in estimates.items()}
    latent = xr.Dataset.from_dataframe(pd.DataFrame(rows).T.rename_axis("method"))
    return xr.merge([table, latent], combine_attrs="override").assign_attrs(kind=kind.name,
                                                                          test_trials=str(test_trials))


def _outputs_and_latents(out, output: str, latents_name: str | None) -> tuple[dict, dict]:
    """``score``'s ``out`` as {method: the kind's output} and {method: inferred latents}: each
    inference's ``latents_name``, or when None the first of ``MODEL_LATENTS`` it has."""
    inferences = {"model": out} if isinstance(out, xr.Dataset) else dict(out)
    if not inferences:
        raise ConfigError("score needs at least one inference; pass lfads_nb.infer's Dataset or {method: ...}.")
    estimates, latents = {}, {}
    for name, inference in inferences.items():
        if isinstance(inference, xr.DataArray):
            estimates[name] = inference
            continue
        if not isinstance(inference, xr.Dataset) or output not in inference:
            raise ConfigError(f"score: the inference {name!r} has no {output!r} (the data kind's output); pass "
                              f"lfads_nb.infer's Dataset, or the estimate itself as a DataArray named {output!r}.")
        estimates[name] = inference[output]
        if latents_name is not None and latents_name not in inference:
            raise ConfigError(f"score: the inference {name!r} has no {latents_name!r} to score as its latents (it has "
                              f"{sorted(inference.data_vars)}); pass latents=None to score its factors (LFADS) or "
                              f"latents (NDT), or an inference that keeps {latents_name!r}.")
        found = [latents_name] if latents_name is not None else [v for v in MODEL_LATENTS if v in inference]
        if found:
            latents[name] = inference[found[0]]
    return estimates, latents


def _latent_scores(ds: xr.Dataset, inferred: xr.DataArray, train_trials, test_trials) -> dict[str, float]:
    """``latent_r2`` and ``state_r2`` of ``inferred`` against ``ds['latents_true']`` (NaN without it)."""
    if "latents_true" not in ds:
        return {"latent_r2": math.nan, "state_r2": math.nan}
    test = _trial_ids(test_trials, ds["latents_true"], "test_trials")
    return {"latent_r2": latent_r2(inferred, ds["latents_true"], train_trials=train_trials, test_trials=test),
            "state_r2": state_r2(inferred.sel(trial=test), ds["latents_true"].sel(trial=test))}


def _masked_bps(ds: xr.Dataset, estimates: dict, test_trials) -> dict:
    """``co_bps`` and ``fp_bps`` per method on ``test_trials`` where ``ds`` marks held-out neurons
    (``heldout``) and forward-prediction bins (``forward``); NaN where it marks none."""
    test = _trial_ids(test_trials, ds["spikes"], "test_trials")
    spikes, bin_width = ds["spikes"].sel(trial=test), float(ds.attrs["bin_width"])
    columns = {}
    for name, metric, coord in (("co_bps", co_bps, "heldout"), ("fp_bps", fp_bps, "forward")):
        marked = coord in ds.coords and bool(ds[coord].values.any())
        columns[name] = ("method", [metric(rates.sel(trial=test), spikes, coord, bin_width) if marked else math.nan
                                    for rates in estimates.values()])
    return columns
