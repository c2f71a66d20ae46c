"""Data kinds: what a Dataset's observed variable holds, and what follows from it.

A :class:`DataKind` ties together everything that depends on the kind of data recorded:

==================  ============  ==========================  ==============  =========================
kind                variable      values                      observation     ``infer`` output
==================  ============  ==========================  ==============  =========================
``spikes``          ``spikes``    integer counts per bin      ``poisson``     ``rates`` (Hz)
``emg``             ``emg``       rectified, filtered EMG     ``gamma``       ``emg_mean`` (data units)
                                  envelope, >= 0 (floats)
``calcium_events``  ``events``    deconvolved events, 0 or    ``zig`` with    ``events_mean``
                                  >= s_min (floats)           ``s_min``       (data units)
==================  ============  ==========================  ==============  =========================

NaN marks a bin that was not observed, for every kind. A Dataset names its kind in
``ds.attrs['kind']`` (``make_dataset`` and ``load`` set it); without that attribute the kind is the
one whose variable the Dataset holds (see :func:`kind_of`). The output of ``infer`` holds the
kind's output variable in place of its observed variable; its ground truth, when known, is
``<output>_true`` (``rates_true`` in Hz, ``emg_mean_true``, ``events_mean_true``).

A new kind is one more :class:`DataKind` in ``KINDS``: a checker, a default observation model
and its output.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable

import numpy as np
import xarray as xr

from ..errors import DataError

# The ZIG s_min estimated from the data is the smallest event times this factor, just below 1: the
# smallest events then lie 1 % of their size above s_min, inside the Gamma part's support
# (x - s_min > 0), rather than on its edge, where the ZIG clamps x - s_min to its eps.
S_MIN_FACTOR = 0.99


@dataclass(frozen=True)
class DataKind:
    """One kind of recorded data.

    ``name``: the kind (``ds.attrs['kind']``). ``variable``: the observed variable, dims
    (trial, time, neuron). ``check(values, name)``: raises :class:`DataError` naming the problem
    and the fix when ``values`` (the variable's ndarray, (trial, time, neuron)) are not data of
    this kind.
    ``observation``: the default observation model (a name in ``observations.OBSERVATIONS``);
    ``observation_options(ds)``: its default options, which may come from the data (ZIG
    ``s_min``) and raise :class:`DataError` when they cannot. ``output``: the name ``infer``
    gives the observation mean; ``to_output(mean, bin_width)``: the observation mean per bin
    (ndarray or tensor, any shape) as the output's values, with the bin width in seconds: a unit
    conversion, linear in the mean (so it commutes with averaging posterior samples, and LFADS
    HDF5 truth converts through it); ``output_attrs(ds)``: the output's attrs, with its ``units``.
    """

    name: str
    variable: str
    check: Callable[[np.ndarray, str], None]
    observation: str
    observation_options: Callable[[xr.Dataset], dict]
    output: str
    to_output: Callable[[object, float], object]
    output_attrs: Callable[[xr.Dataset], dict]

    @property
    def truth(self) -> str:
        """The name of the output's ground truth, in the output's units (e.g. ``rates_true``)."""
        return f"{self.output}_true"

    def default_observation(self, ds: xr.Dataset) -> str | dict:
        """The observation spec to model ``ds`` with: the default name, plus its options if any."""
        if self.variable not in ds.data_vars:
            raise DataError(
                f"The dataset has no '{self.variable}' variable, so there are no recorded {self.name} data "
                "to choose the observation model for (is it an infer output?). Pass the recorded data."
            )
        options = self.observation_options(ds)
        return {"name": self.observation, **options} if options else self.observation


# ----------------------------------------------------------------------------- checkers

def _observed(values: np.ndarray, name: str, what: str) -> np.ndarray:
    """The observed (non-NaN) entries of a numeric array, which must be finite."""
    if values.dtype.kind not in "iuf":
        raise DataError(f"'{name}' has dtype {values.dtype}; {what} must be numbers (NaN = not observed).")
    observed = values[~np.isnan(values)] if values.dtype.kind == "f" else values
    if np.isinf(observed).any():
        raise DataError(
            f"'{name}' contains infinite values; {what} must be finite (use NaN to mark bins that were not observed)."
        )
    return observed


def _check_counts(values: np.ndarray, name: str) -> None:
    """Spike counts: finite, non-negative integers; NaN marks a bin that was not observed."""
    if values.dtype.kind in "iu":
        if values.size and values.min() < 0:
            raise DataError(f"'{name}' has negative counts (min {values.min()}); spike counts must be >= 0.")
        return
    if values.dtype.kind != "f":
        raise DataError(
            f"'{name}' has dtype {values.dtype}; spike counts must be integers "
            "(or floats holding integers, with NaN for bins that were not observed)."
        )
    observed = _observed(values, name, "counts")
    if observed.size and observed.min() < 0:
        raise DataError(f"'{name}' has negative counts (min {observed.min()}); spike counts must be >= 0.")
    if not np.array_equal(observed, np.round(observed)):
        raise DataError(
            f"'{name}' holds non-integer values; spike counts must be whole numbers. "
            "If these are rates, convert them to counts per bin (rate x bin_width) and sample, "
            "or store them as 'rates_true'. If they are EMG or calcium events, say so: "
            "make_dataset(values, bin_width, kind='emg') or kind='calcium_events'."
        )


def _check_emg(values: np.ndarray, name: str) -> None:
    """EMG envelopes: finite, >= 0, and every channel has some positive value (Gamma likelihood)."""
    observed = _observed(values, name, "EMG values")
    if observed.size and observed.min() < 0:
        raise DataError(
            f"'{name}' has negative values (min {observed.min():g}); EMG must be rectified (absolute value) "
            "and low-pass filtered before LFADS: take np.abs(...) of the raw EMG, then smooth and bin it."
        )
    silent = ~(np.nan_to_num(values.reshape(-1, values.shape[-1]).astype(float)) > 0).any(axis=0)
    if silent.any():
        raise DataError(
            f"EMG channels at positions {np.flatnonzero(silent).tolist()} of '{name}' are all zero (or not "
            "observed); a Gamma likelihood needs positive data. Add a small positive floor, e.g. "
            f"ds['{name}'] = ds['{name}'] + 1e-3 * ds['{name}'].max(), or drop those channels with "
            "ds.isel(neuron=...)."
        )


def _check_events(values: np.ndarray, name: str) -> None:
    """Deconvolved calcium events: finite and >= 0 (most exactly 0); NaN where not sampled."""
    observed = _observed(values, name, "events")
    if observed.size and observed.min() < 0:
        raise DataError(
            f"'{name}' has negative values (min {observed.min():g}); deconvolved events are 0 or a positive "
            "event size. Deconvolve with a non-negativity constraint (OASIS does), or set the negative "
            f"ones to 0: ds['{name}'] = ds['{name}'].clip(min=0)."
        )


# ----------------------------------------------------------------------------- data-derived options

def _zig_options(ds: xr.Dataset) -> dict:
    """ZIG ``s_min`` from the data: ``ds.attrs['s_min']`` if set (it must not exceed the smallest
    event), else the smallest positive event times ``S_MIN_FACTOR``."""
    events = ds["events"].values.astype(float)
    positive = events[events > 0]  # NaN compares False
    smallest = positive.min() if positive.size else None
    if "s_min" in ds.attrs:
        s_min = ds.attrs["s_min"]
        if isinstance(s_min, (bool, np.bool_)) or not isinstance(s_min, numbers.Real) or not s_min >= 0:
            raise DataError(
                f"ds.attrs['s_min'] is {s_min!r}; it must be the smallest event size the deconvolution "
                "returns, a number >= 0 (e.g. 0.1)."
            )
        if smallest is not None and s_min > smallest:
            raise DataError(
                f"ds.attrs['s_min'] is {s_min:g} but the smallest event in 'events' is {smallest:g}; the ZIG "
                "likelihood needs every event >= s_min. Set ds.attrs['s_min'] to at most the smallest event "
                "(or delete it to have it estimated), or set the events below it to 0: "
                f"ds['events'] = ds['events'].where((ds['events'] >= {s_min:g}) | ds['events'].isnull(), 0)."
            )
        return {"s_min": float(s_min)}
    if smallest is None:
        raise DataError(
            "'events' has no positive event, so the ZIG s_min (smallest event size) cannot be estimated "
            "from it; set it: ds.attrs['s_min'] = 0.1 (the deconvolution's minimum event size)."
        )
    return {"s_min": float(smallest) * S_MIN_FACTOR}


def _no_options(ds: xr.Dataset) -> dict:
    return {}


def _same(mean, bin_width: float):
    """The observation mean per bin is the output, in the data's units."""
    return mean


def _data_units(variable: str) -> Callable[[xr.Dataset], dict]:
    """Output attrs in the units of the data variable (its ``units`` attr, else 'a.u.')."""
    return lambda ds: {"units": str(ds[variable].attrs.get("units", "a.u."))}


KINDS = {
    kind.name: kind
    for kind in (
        DataKind(
            "spikes", "spikes", _check_counts, "poisson", _no_options,
            output="rates", to_output=lambda mean, bin_width: mean / bin_width,
            output_attrs=lambda ds: {"units": "Hz"},
        ),
        DataKind(
            "emg", "emg", _check_emg, "gamma", _no_options,
            output="emg_mean", to_output=_same, output_attrs=_data_units("emg"),
        ),
        DataKind(
            "calcium_events", "events", _check_events, "zig", _zig_options,
            output="events_mean", to_output=_same, output_attrs=_data_units("events"),
        ),
    )
}


def get_kind(name) -> DataKind:
    """The DataKind called ``name``; an unknown name raises :class:`DataError` listing the kinds."""
    if not isinstance(name, str) or name not in KINDS:
        raise DataError(f"Unknown data kind {name!r}; choose one of {sorted(KINDS)}.")
    return KINDS[name]


def kind_of(ds: xr.Dataset) -> DataKind:
    """The kind of ``ds``: ``ds.attrs['kind']`` if set, else the kind whose observed variable
    (``spikes``, ``emg``, ``events``) ``ds`` holds, else the kind whose ``infer`` output
    (``rates``, ``emg_mean``, ``events_mean``) it holds. Raises :class:`DataError` naming what
    it found when that is not exactly one."""
    if "kind" in ds.attrs:
        try:
            return get_kind(ds.attrs["kind"])
        except DataError as error:
            raise DataError(f"ds.attrs['kind']: {error}") from error
    for role, field in (("observed", "variable"), ("inference output", "output")):
        present = [k for k in KINDS.values() if getattr(k, field) in ds.data_vars]
        if len(present) == 1:
            return present[0]
        if present:
            names = [getattr(k, field) for k in present]
            raise DataError(
                f"The dataset holds several {role} variables {names}, so its kind is ambiguous; keep one "
                f"(ds.drop_vars(...)) or name the kind: ds.attrs['kind'] = one of {sorted(KINDS)}."
            )
    raise DataError(
        f"The dataset has no observed variable; expected one of {sorted(k.variable for k in KINDS.values())} "
        f"with dims (trial, time, neuron). Found variables {sorted(ds.data_vars)}; rename yours with "
        "ds.rename({'old': 'spikes'}) (or 'emg', 'events')."
    )
