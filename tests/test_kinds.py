"""lfads_nb.data.kinds: each data kind's checker and its messages (problem and fix), the kind of a
Dataset, data-derived observation options (ZIG s_min) and the output each kind's infer gives."""
import numpy as np
import pytest
import torch
import xarray as xr

from lfads_nb import KINDS, DataError, make_dataset, validate
from lfads_nb.data.kinds import S_MIN_FACTOR, kind_of
from lfads_nb.models.observations import Gamma, Gaussian, ZeroInflatedGamma
from lfads_nb import TrainConfig, build_model, infer, load_model, train

SPLIT_LABELS = ["train", "train", "valid", "test"]
RNG = np.random.default_rng(0)


def emg(values=None) -> xr.Dataset:
    values = RNG.gamma(2.0, 0.5, size=(4, 5, 3)) if values is None else values
    return make_dataset(values, 0.01, "emg", split_labels=SPLIT_LABELS)


def events(values=None, **attrs) -> xr.Dataset:
    """Deconvolved-like events: mostly exact zeros, events >= 0.2, a few NaN (not sampled); an
    xarray.Dataset built directly, so bad values reach validate."""
    if values is None:
        values = np.where(RNG.random((4, 5, 3)) < 0.3, 0.2 + RNG.exponential(1.0, (4, 5, 3)), 0.0)
        values[0, 0, :] = np.nan
        values[1, 1, 1] = 0.25  # the smallest event, so s_min = 0.5 is above it
    ds = xr.Dataset(
        {"events": (("trial", "time", "neuron"), values)},
        coords={"time": (np.arange(5) + 0.5) * 0.01, "split": ("trial", SPLIT_LABELS),
                "trial": np.arange(4), "neuron": np.arange(3)},
        attrs={"bin_width": 0.01, "kind": "calcium_events", **attrs},
    )
    return ds


def raises(ds_or_call, phrase):
    with pytest.raises(DataError, match=phrase) as info:
        validate(ds_or_call) if isinstance(ds_or_call, xr.Dataset) else ds_or_call()
    return str(info.value)


# ----------------------------------------------------------------------------- make_dataset by kind

@pytest.mark.parametrize("kind, variable", [("spikes", "spikes"), ("emg", "emg"), ("calcium_events", "events")])
def test_make_dataset_builds_the_kinds_variable_and_records_the_kind(kind, variable):
    values = RNG.poisson(2.0, size=(4, 5, 3)).astype(float) * (1.0 if kind == "spikes" else 0.37)
    ds = make_dataset(values, 0.01, kind, split_labels=SPLIT_LABELS)
    assert ds.attrs["kind"] == kind and list(ds.data_vars) == [variable]
    np.testing.assert_array_equal(ds[variable].values, values)  # floats kept, not rounded
    assert kind_of(ds) is KINDS[kind]


def test_spikes_stay_the_positional_default_and_refuse_non_integers():
    counts = RNG.poisson(2.0, size=(4, 5, 3))
    assert make_dataset(counts, 0.01, split_labels=SPLIT_LABELS).attrs["kind"] == "spikes"
    raises(lambda: make_dataset(counts + 0.5, 0.01, split_labels=SPLIT_LABELS),
           r"non-integer values; spike counts must be whole numbers.*kind='emg'")


def test_unknown_kind_lists_the_kinds():
    counts = RNG.poisson(2.0, size=(4, 5, 3))
    raises(lambda: make_dataset(counts, 0.01, "eeg", split_labels=SPLIT_LABELS),
           r"Unknown data kind 'eeg'; choose one of \['calcium_events', 'emg', 'spikes'\]")
    ds = emg()
    ds.attrs["kind"] = "eeg"
    raises(ds, r"ds.attrs\['kind'\]: Unknown data kind 'eeg'; choose one of \['calcium_events', 'emg', 'spikes'\]")


def test_kind_truth_takes_the_outputs_units():
    ds = make_dataset(RNG.gamma(2.0, size=(4, 5, 3)), 0.01, "emg", split_labels=SPLIT_LABELS,
                      emg_mean_true=np.ones((4, 5, 3)))
    assert ds["emg_mean_true"].attrs["units"] == "a.u."
    raises(lambda: make_dataset(RNG.gamma(2.0, size=(4, 5, 3)), 0.01, "emg", split_labels=SPLIT_LABELS,
                                emg_mean_true=np.ones((4, 5, 2))),
           r"emg_mean_true has shape \(4, 5, 2\); expected \(4, 5, 3\) to match emg")


# ----------------------------------------------------------------------------- EMG

def test_negative_emg_asks_for_rectification():
    values = RNG.gamma(2.0, size=(4, 5, 3))
    values[1, 2, 0] = -0.3
    raises(lambda: emg(values), r"'emg' has negative values \(min -0.3\); EMG must be rectified \(absolute value\) "
                                r"and low-pass filtered before LFADS: take np.abs")


@pytest.mark.parametrize("fill", ["zeros", "zeros and NaN"])
def test_emg_channel_without_positive_values_names_floor_and_drop(fill):
    values = RNG.gamma(2.0, size=(4, 5, 3))
    values[..., 1] = 0.0
    if fill == "zeros and NaN":
        values[:2, :, 1] = np.nan
    message = raises(lambda: emg(values), r"channels at positions \[1\] of 'emg' are all zero.*Gamma likelihood "
                                          r"needs positive data")
    assert "small positive floor" in message and "drop those channels" in message


def test_emg_with_some_zeros_and_nan_is_valid():
    values = RNG.gamma(2.0, size=(4, 5, 3))
    values[0, :2, 0] = 0.0
    values[3, 4, :] = np.nan
    assert validate(emg(values)).attrs["kind"] == "emg"


def test_infinite_emg():
    values = RNG.gamma(2.0, size=(4, 5, 3))
    values[0, 0, 0] = np.inf
    raises(lambda: emg(values), "'emg' contains infinite values; EMG values must be finite")


# ----------------------------------------------------------------------------- calcium events

def test_negative_events_name_the_clip():
    ds = events()
    ds["events"][1, 1, 1] = -0.01
    raises(ds, r"'events' has negative values \(min -0.01\).*clip\(min=0\)")


def test_s_min_comes_from_the_data():
    ds = events()
    smallest = np.nanmin(np.where(ds["events"].values > 0, ds["events"].values, np.nan))
    spec = KINDS["calcium_events"].default_observation(ds)
    assert spec == {"name": "zig", "s_min": pytest.approx(smallest * S_MIN_FACTOR, rel=1e-12)}
    assert spec["s_min"] < smallest
    ds.attrs["s_min"] = 0.1
    assert KINDS["calcium_events"].default_observation(validate(ds)) == {"name": "zig", "s_min": 0.1}


def test_s_min_above_the_smallest_event_is_refused():
    ds = events(s_min=0.5)
    smallest = float(np.nanmin(np.where(ds["events"].values > 0, ds["events"].values, np.nan)))
    assert smallest < 0.5
    raises(ds, rf"s_min'\] is 0.5 but the smallest event in 'events' is {smallest:g}.*at most the smallest event")
    raises(events(s_min="0.1"), r"s_min'\] is '0.1'; it must be .* a number >= 0")


def test_events_without_any_event_need_s_min():
    raises(events(np.zeros((4, 5, 3))), r"no positive event.*ds.attrs\['s_min'\] = 0.1")
    assert validate(events(np.zeros((4, 5, 3)), s_min=0.1)) is not None


# ----------------------------------------------------------------------------- the kind of a Dataset

def test_kind_is_read_off_the_variable_without_the_attribute():
    ds = emg()
    del ds.attrs["kind"]
    assert kind_of(ds) is KINDS["emg"] and validate(ds) is ds
    inferred = ds.rename({"emg": "emg_mean"})
    assert kind_of(inferred) is KINDS["emg"]


def test_several_or_no_observed_variables_are_named():
    ds = emg()
    del ds.attrs["kind"]
    both = ds.assign(spikes=ds["emg"].round())
    raises(lambda: kind_of(both), r"several observed variables \['spikes', 'emg'\].*ds.attrs\['kind'\]")
    message = raises(lambda: kind_of(ds.rename({"emg": "signal"})), "no observed variable")
    assert "['emg', 'events', 'spikes']" in message and "signal" in message


def test_kind_attribute_and_variable_must_agree():
    ds = emg()
    ds.attrs["kind"] = "spikes"
    raises(ds, r"its kind is 'spikes', so expected 'spikes'.*Found variables \['emg'\].*fix ds.attrs\['kind'\]")


@pytest.mark.parametrize("kind, output", [("emg", "emg_mean"), ("calcium_events", "events_mean")])
def test_an_inference_dataset_of_each_kind_validates_but_cannot_be_trained_on(kind, output):
    ds = emg() if kind == "emg" else events()
    inferred = ds.rename({KINDS[kind].variable: output})
    assert validate(inferred) is inferred
    raises(lambda: validate(inferred, require_train=True), f"holds '{output}', the output of lfads_nb.infer")
    raises(inferred.assign({output: -inferred[output]}), f"'{output}' has negative values")


def test_outputs_per_kind():
    """rates = mean per bin / bin_width (Hz); EMG and events keep the data's units."""
    mean = np.array([0.1, 0.3])
    np.testing.assert_allclose(KINDS["spikes"].to_output(mean, 0.02), [5.0, 15.0], rtol=1e-12)
    np.testing.assert_array_equal(KINDS["emg"].to_output(mean, 0.02), mean)
    ds = emg()
    assert KINDS["emg"].output_attrs(ds) == {"units": "a.u."}
    ds["emg"].attrs["units"] = "mV"
    assert KINDS["emg"].output_attrs(ds) == {"units": "mV"}
    assert KINDS["spikes"].output_attrs(ds) == {"units": "Hz"}
    assert KINDS["emg"].default_observation(ds) == "gamma"
    raises(lambda: KINDS["emg"].default_observation(ds.rename({"emg": "emg_mean"})),
           "no 'emg' variable.*infer output")


# ----------------------------------------------------------------------------- training and inference

TINY = dict(ic_enc_dim=4, co_dim=0, ic_dim=4, gen_dim=8, fac_dim=3)


@pytest.mark.parametrize("kind, units", [("emg", "mV"), ("calcium_events", "a.u.")])
def test_train_and_infer_by_kind(tmp_path, kind, units):
    """build_model picks the kind's observation (ZIG s_min from the data), one epoch trains, and infer
    names the observation mean by kind, in the data's units, without dividing by the bin width."""
    rng = np.random.default_rng(1)
    shape = (12, 6, 4)
    if kind == "emg":
        values = rng.gamma(2.0, 0.5, size=shape)
    else:
        values = np.where(rng.random(shape) < 0.3, 0.1 + rng.exponential(1.0, shape), 0.0)
        values[rng.random(shape) < 0.1] = np.nan
    ds = make_dataset(values, 0.02, kind, split_labels=np.where(np.arange(12) % 4 == 0, "valid", "train"))
    if kind == "emg":
        ds["emg"].attrs["units"] = "mV"
    torch.manual_seed(0)
    model = build_model(ds, **TINY)
    if kind == "emg":
        assert type(model.observation) is Gamma
    else:
        assert type(model.observation) is ZeroInflatedGamma
        assert model.observation.s_min == pytest.approx(np.nanmin(values[values > 0]) * S_MIN_FACTOR, rel=1e-6)
    assert type(build_model(ds, observation="gaussian", **TINY).observation) is Gaussian  # the caller's choice wins

    result = train(model, ds, TrainConfig(max_epochs=1, batch_size=4), checkpoint_dir=tmp_path, live=False)
    assert load_model(tmp_path / "best.pt").config == result.model.config  # the data's s_min survives a checkpoint
    out = infer(result.model, ds)
    output = KINDS[kind].output
    assert output in out and "rates" not in out
    assert out[output].attrs == {"units": units}
    with torch.no_grad():
        params = result.model(torch.as_tensor(np.nan_to_num(values), dtype=torch.float32), sample=False).obs_params
        expected = result.model.observation.mean(params).numpy()
    np.testing.assert_allclose(out[output].values, expected, rtol=1e-5)  # the mean per bin, not divided
    assert validate(out) is out
