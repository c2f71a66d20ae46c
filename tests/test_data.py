"""lfads_nb.validate: a well-formed dataset passes unchanged; every bad input raises DataError
whose message names the problem and the fix (asserted through a key phrase)."""
import numpy as np
import pytest
import xarray as xr

from lfads_nb import DataError, make_dataset, validate

SPLIT_LABELS = ["train", "train", "valid", "test"]


def good(spikes=None, **truth) -> xr.Dataset:
    """4 trials x 5 bins x 3 neurons of 10 ms Poisson counts, built inline (no generators);
    ``spikes`` replaces the counts afterwards, unchecked, so bad counts reach ``validate``."""
    counts = np.random.default_rng(0).poisson(2.0, size=(4, 5, 3))
    ds = make_dataset(counts, 0.01, split_labels=SPLIT_LABELS, condition=["a", "b", "a", "b"], **truth)
    if spikes is not None:
        ds["spikes"] = (("trial", "time", "neuron"), spikes)
    return ds


def raises(ds, phrase: str, **kwargs) -> str:
    with pytest.raises(DataError, match=phrase) as info:
        validate(ds, **kwargs)
    return str(info.value)


def test_a_good_dataset_passes_and_is_returned_unchanged():
    ds = good(rates_true=np.full((4, 5, 3), 20.0), latents_true=np.zeros((4, 5, 2)))
    assert validate(ds, require_train=True) is ds


def test_nan_marks_unobserved_bins_and_passes():
    spikes = np.random.default_rng(1).poisson(2.0, size=(4, 5, 3)).astype(float)
    spikes[0, 1, 2] = np.nan
    spikes[3] = np.nan
    assert validate(good(spikes)) is not None


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


@pytest.mark.parametrize("thing", [np.zeros((4, 5, 3)), {"spikes": np.zeros((4, 5, 3))}, None])
def test_not_a_dataset(thing):
    raises(thing, "Expected an xarray.Dataset, got")


def test_a_data_array_is_not_a_dataset():
    raises(good()["spikes"], "got DataArray.*lfads_nb.load")


def test_no_observed_variable_suggests_renaming():
    ds = good().rename({"spikes": "counts"})
    message = raises(ds, "no observed variable")
    assert "ds.rename({'old': 'spikes'})" in message and "counts" in message


def test_misnamed_dim_names_the_missing_dim_and_the_rename():
    ds = good().rename({"neuron": "unit"})
    message = raises(ds, r"Missing dims \['neuron'\]")
    assert "rename" in message


def test_missing_dim():
    ds = good().isel(neuron=0)  # spikes now (trial, time)
    raises(ds, r"Missing dims \['neuron'\]")


def test_wrong_dim_order_suggests_transpose():
    ds = good().transpose("time", "trial", "neuron")
    message = raises(ds, r"expected \('trial', 'time', 'neuron'\)")
    assert "ds.transpose" in message


@pytest.mark.parametrize("dtype", [int, float])
def test_negative_counts(dtype):
    spikes = np.ones((4, 5, 3), dtype)
    spikes[1, 2, 0] = -1
    raises(good(spikes), "negative counts.*must be >= 0")


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_infinite_counts(bad):
    spikes = np.ones((4, 5, 3))
    spikes[0, 0, 0] = bad
    raises(good(spikes), "infinite values.*use NaN")


def test_non_integer_counts_point_to_rates_true():
    spikes = np.ones((4, 5, 3))
    spikes[2, 3, 1] = 0.5
    message = raises(good(spikes), "non-integer values")
    assert "rates_true" in message and "rate x bin_width" in message


@pytest.mark.parametrize("values", [np.full((4, 5, 3), "1"), np.ones((4, 5, 3), bool)])
def test_non_numeric_counts(values):
    ds = good()
    ds["spikes"] = (("trial", "time", "neuron"), values)
    raises(ds, "spike counts must be integers")


def test_truth_with_a_different_neuron_count_than_the_data():
    # Truth of another shape cannot share the 'neuron' dim, so it arrives under another dim name.
    ds = good().assign(rates_true=(("trial", "time", "unit"), np.ones((4, 5, 7))))
    raises(ds, r"'rates_true' has dims \('trial', 'time', 'unit'\); expected \('trial', 'time', 'neuron'\)")


def test_truth_in_the_wrong_dim_order():
    ds = good().assign(rates_true=(("trial", "neuron", "time"), np.ones((4, 3, 5))))
    raises(ds, "'rates_true' has dims")


def test_latents_with_wrong_dims():
    ds = good().assign(latents_true=(("trial", "latent", "time"), np.ones((4, 2, 5))))
    raises(ds, r"'latents_true' has dims.*expected \('trial', 'time', 'latent'\)")


def test_zero_trials():
    raises(good().isel(trial=[]), "zero trials")


def test_zero_neurons():
    raises(good().isel(neuron=[]), "zero neurons")


def test_zero_time_bins():
    raises(good().isel(time=[]), "zero time bins")


def test_unknown_split_labels():
    ds = good().assign_coords(split=("trial", ["train", "training", "valid", "val"]))
    message = raises(ds, "Unknown split labels")
    assert "training" in message and "val'" in message and "'train', 'valid', 'test'" in message


def test_no_training_trials_only_when_required():
    ds = good().assign_coords(split=("trial", ["valid", "valid", "test", "test"]))
    assert validate(ds) is ds
    raises(ds, "no training trials.*assign_coords", require_train=True)


def test_missing_bin_width():
    ds = good()
    del ds.attrs["bin_width"]
    raises(ds, r"no 'bin_width' attribute.*ds.attrs\['bin_width'\] = 0.01")


@pytest.mark.parametrize("bin_width", [0.0, -0.01, np.nan, np.inf])
def test_bin_width_must_be_a_positive_number(bin_width):
    ds = good()
    ds.attrs["bin_width"] = bin_width
    raises(ds, "bin_width must be a positive number of seconds")


@pytest.mark.parametrize("bin_width", ["0.01", [0.01], np.array([0.01, 0.02]), True])
def test_bin_width_that_is_not_a_number(bin_width):
    ds = good()
    ds.attrs["bin_width"] = bin_width
    raises(ds, "bin_width must be a number of seconds")


def test_missing_time_coordinate():
    ds = good().drop_vars("time")
    raises(ds, r"no 'time' coordinate.*assign_coords\(time=")


def test_missing_split_coordinate():
    ds = good().drop_vars("split")
    raises(ds, r"no 'split' coordinate.*assign_coords\(split=")


def test_split_on_the_wrong_dim():
    ds = good().drop_vars("split").assign_coords(split=("neuron", ["train", "valid", "test"]))
    raises(ds, r"'split' must have dims \('trial',\)")


def test_condition_on_the_wrong_dim():
    ds = good().drop_vars("condition").assign_coords(condition=("time", np.arange(5)))
    raises(ds, r"'condition' must have dims \('trial',\)")


def test_ext_input_with_wrong_dims():
    ds = good()
    ds["ext_input"] = (("trial", "ext_input_dim", "time"), np.zeros((4, 2, 5)))
    with pytest.raises(DataError, match="'ext_input' has dims"):
        validate(ds)


def test_rates_dataset_is_valid_but_cannot_be_trained_on():
    """An inference output holds 'rates' (Hz) instead of 'spikes': valid to save and plot, not to train."""
    ds = good()
    rates = ds.drop_vars("spikes").assign(rates=ds["spikes"].astype(float) * 10.0)
    validate(rates)
    with pytest.raises(DataError, match="holds 'rates', the output of lfads_nb.infer.*Train on"):
        validate(rates, require_train=True)
    negative = rates.assign(rates=-rates["rates"] - 1)
    with pytest.raises(DataError, match="'rates' has negative values"):
        validate(negative)
    del rates.attrs["kind"]  # as older files store it: the kind is read off 'rates'
    validate(rates)


COUNTS = np.random.default_rng(2).poisson(2.0, size=(4, 5, 3))
BAD_MAKE_DATASET = {
    "ragged trials": (dict(spikes=[[[1, 2]], [[1]]], split_labels=["train", "valid"]), "not a rectangular array.*pad"),
    "bin_width None": (dict(bin_width=None), r"bin_width must be a number of seconds, got None"),
    "bin_width string": (dict(bin_width="0.01"), "bin_width must be a number of seconds"),
    "bin_width zero": (dict(bin_width=0), "bin_width must be a positive number"),
    "one split label for all": (dict(split_labels="train"), r"split_labels needs one value per trial, i.e. shape \(4,\)"),
    "too few split labels": (dict(split_labels=["train"] * 3), r"split_labels .* got shape \(3,\)"),
    "condition length": (dict(condition=[1, 2]), r"condition needs one value per trial"),
    "trial_ids length": (dict(trial_ids=[1, 2]), r"trial_ids needs one value per trial"),
    "neuron_ids length": (dict(neuron_ids=[1]), r"neuron_ids needs one value per neuron, i.e. shape \(3,\)"),
    "rates_true neurons": (dict(rates_true=np.ones((4, 5, 2))), r"rates_true has shape \(4, 5, 2\); expected \(4, 5, 3\)"),
    "behavior time": (dict(behavior=np.ones((4, 6, 2))), r"behavior has shape \(4, 6, 2\); expected \(4, 5, behavior_dim\)"),
    "ext_input 2-D": (dict(ext_input=np.ones((4, 5))), r"ext_input has shape \(4, 5\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_MAKE_DATASET))
def test_make_dataset_names_bad_arguments(case):
    overrides, phrase = BAD_MAKE_DATASET[case]
    kwargs = {"spikes": COUNTS, "bin_width": 0.01, "split_labels": SPLIT_LABELS, **overrides}
    with pytest.raises(DataError, match=phrase):
        make_dataset(kwargs.pop("spikes"), kwargs.pop("bin_width"), **kwargs)


def test_make_dataset_masked_entries_are_not_observed():
    ds = make_dataset(np.ma.masked_equal(COUNTS, 0), 0.01, split_labels=SPLIT_LABELS)
    np.testing.assert_array_equal(np.isnan(ds["spikes"].values), COUNTS == 0)
    np.testing.assert_array_equal(ds["spikes"].fillna(0).values, COUNTS)


def test_make_dataset_reorders_a_data_array_by_its_dim_names():
    da = xr.DataArray(COUNTS, dims=("trial", "time", "neuron")).transpose("neuron", "trial", "time")
    ds = make_dataset(da, 0.01, split_labels=SPLIT_LABELS)
    np.testing.assert_array_equal(ds["spikes"].values, COUNTS)


def test_ext_input_must_be_finite_numbers():
    """NaN inputs made training diverge with advice about learning rates; strings failed in torch."""
    def with_(var, dim, values):
        return good().assign({var: (("trial", "time", dim), values)})

    raises(with_("ext_input", "ext_input_dim", np.full((4, 5, 1), np.nan)), r"'ext_input' has NaN.*fillna\(0\)")
    raises(with_("ext_input", "ext_input_dim", np.full((4, 5, 1), "on")), "'ext_input' has dtype <U2; it must hold numbers")
    raises(with_("behavior", "behavior_dim", np.full((4, 5, 1), None)), "'behavior' has dtype object")


@pytest.mark.parametrize("name, dim, values", [
    ("split", "trial", SPLIT_LABELS), ("condition", "trial", list("abab")), ("heldout", "neuron", [False, False, True]),
    ("forward", "time", [False] * 4 + [True]),
])
def test_coordinates_stored_as_data_variables_are_refused(name, dim, values):
    """A 'heldout' data variable was silently ignored (the encoder saw every neuron)."""
    ds = good().drop_vars(name, errors="ignore")
    ds[name] = (dim, np.asarray(values))
    raises(ds, rf"'{name}' is a data variable.*ds.set_coords\('{name}'\)")


def test_forward_bins_are_the_last_bins():
    ds = good().assign_coords(forward=("time", [False, False, False, True, True]))
    assert validate(ds) is ds
    raises(good().assign_coords(forward=("time", [True, False, False, False, True])),
           r"marks bins \[0, 4\] but forward-prediction bins are the last ones")
    raises(good().assign_coords(forward=("time", [True] * 5)), "Every time bin is marked forward")
    raises(good().assign_coords(forward=("time", [0, 0, 0, 1, 1])), r"'forward' must be a boolean per time bin.*int64")


@pytest.mark.parametrize("time, bin_width, phrase", [
    ((np.arange(5) + 0.5) * 0.01, 10, r"'time' steps by 0.01 to 0.01 but bin_width is 10 s.*in ms"),
    ((np.arange(5) + 0.5) * 10.0, 0.01, "'time' steps by 10 to 10"),
    (np.array([0.005, 0.015, 0.035, 0.045, 0.055]), 0.01, r"steps by 0.01 to 0.02.*bins missing"),
    (np.array(list("abcde")), 0.01, r"'time' has dtype <U1; it must hold numbers.*assign_coords\(time="),
])
def test_time_must_step_by_bin_width(time, bin_width, phrase):
    """bin_width in ms (10 for 10 ms bins) silently gave rates 1000 times too small."""
    ds = good().assign_coords(time=time)
    ds.attrs["bin_width"] = bin_width
    raises(ds, phrase)


def test_time_may_be_offset_and_float32():
    ds = good()
    assert validate(ds.assign_coords(time=(ds["time"] - 0.02).astype(np.float32))) is not None


def test_neuron_ids_must_not_repeat():
    raises(good().assign_coords(neuron=[7, 7, 8]), r"Neuron ids repeat.*assign_coords\(neuron=")


def test_ids_of_mixed_types_are_checked_without_sorting():
    assert validate(good().assign_coords(neuron=np.array([1, "a", None], dtype=object))) is not None
    raises(good().assign_coords(trial=np.array([1, "a", 1, None], dtype=object)), "Trial ids repeat")
