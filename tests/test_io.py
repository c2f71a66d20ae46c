"""lfads_nb.io: netCDF round trips, atomic writes, the LFADS HDF5 layout (read, export, round
trip) and a DataError naming problem and fix for every bad file.

LFADS files are written here with plain h5py in the key layout of lfads-torch's datamodule
({split}_encod_data / _recon_data / _truth / _inds / _ext_input, conversion_factor), so the
reader is checked against that layout, not against our own exporter."""
import os

import h5py
import numpy as np
import pytest
import xarray as xr

import lfads_nb
import lfads_nb.io as lfads_io
from lfads_nb.dashboard import Progress
from lfads_nb import DataError, make_dataset, split
from lfads_nb.io import export_lfads_h5, load, save

RNG = np.random.default_rng(0)
SPLIT_LABELS = ["train", "valid", "train", "test", "train", "valid"]


def dataset(dtype=np.int64, bin_width=0.01, **extra) -> xr.Dataset:
    """6 trials x 5 bins x 4 neurons with interleaved splits, built inline."""
    spikes = RNG.poisson(2.0, size=(6, 5, 4)).astype(dtype)
    return make_dataset(spikes, bin_width, split_labels=SPLIT_LABELS, **extra)


def rich_dataset() -> xr.Dataset:
    """Float spikes with NaN, string coords, a bool coord, truth variables and attrs of many kinds."""
    spikes = RNG.poisson(2.0, size=(6, 5, 4)).astype(float)
    spikes[1, 2, 3] = np.nan
    spikes[4, :, 0] = np.nan
    ds = make_dataset(
        spikes,
        0.02,
        split_labels=SPLIT_LABELS,
        condition=np.array(["left", "right", "left", "up", "ü-down", "right"]),
        neuron_ids=np.array(["n01", "n02", "n03", "n04"]),
        trial_ids=np.array([3, 5, 8, 13, 21, 34]),
        rates_true=RNG.uniform(1, 50, size=(6, 5, 4)).astype(np.float32),
        latents_true=RNG.normal(size=(6, 5, 3)),
        behavior=RNG.normal(size=(6, 5, 2)),
    )
    ds = ds.assign_coords(heldout=("neuron", np.array([False, True, False, True])))
    ds.attrs.update(name="rich", seed=7, gain=1.5, channels=[1, 2, 3], note="é")
    ds["spikes"].attrs["description"] = "spike counts per bin"
    return ds


def assert_same(a: xr.Dataset, b: xr.Dataset) -> None:
    """Identical (values, coords, attrs), and every variable keeps its dtype."""
    xr.testing.assert_identical(a, b)
    for name in b.variables:
        assert a[name].dtype == b[name].dtype, name


def write_h5(path, attrs=None, **arrays):
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
        f.attrs.update(attrs or {})
    return path


def counts(n_trials, n_time=5, n_neurons=4):
    return RNG.poisson(2.0, size=(n_trials, n_time, n_neurons))


def lfads_file(path, attrs=None, **overrides):
    """A valid train/valid LFADS file (3 + 2 trials), with keys replaced or removed (None)."""
    train, valid = counts(3), counts(2)
    arrays = dict(
        train_encod_data=train, train_recon_data=train, valid_encod_data=valid, valid_recon_data=valid
    )
    arrays.update(overrides)
    return write_h5(path, attrs=attrs, **{k: v for k, v in arrays.items() if v is not None})


def load_quiet(path, **kwargs):
    """load() of a file that stores no bin width warns that 10 ms is assumed."""
    with pytest.warns(UserWarning, match="stores no bin width"):
        return load(path, **kwargs)


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ----------------------------------------------------------------------------- netCDF


def test_netcdf_round_trip_is_identical(tmp_path):
    ds = rich_dataset()
    assert save(ds, tmp_path / "rich.nc") == tmp_path / "rich.nc"
    loaded = load(tmp_path / "rich.nc")
    assert_same(loaded, ds)
    assert np.isnan(loaded["spikes"].values[4, :, 0]).all()
    assert loaded["heldout"].dtype == bool and loaded["split"].dtype.kind == "U"
    assert not loaded["spikes"].encoding  # in memory, detached from the file
    assert leftovers(tmp_path) == []


def test_netcdf_round_trip_of_integer_counts_and_ext_input(tmp_path):
    ds = dataset(np.int32, ext_input=RNG.normal(size=(6, 5, 2)), inputs_true=RNG.normal(size=(6, 5, 1)))
    save(ds, tmp_path / "ints.nc")
    assert_same(load(tmp_path / "ints.nc"), ds)


def test_netcdf_object_strings_come_back_as_unicode(tmp_path):
    ds = dataset().assign_coords(condition=("trial", np.array(list("abcabc"), dtype=object)))
    save(ds, tmp_path / "obj.nc")
    loaded = load(tmp_path / "obj.nc")
    xr.testing.assert_identical(loaded, ds)
    assert loaded["condition"].dtype.kind == "U"


def test_netcdf_byte_strings_come_back_as_unicode(tmp_path):
    """Fixed-width strings (as other tools write them) decode to unicode, so split == 'valid' works."""
    ds = dataset().assign_coords(condition=("trial", np.array(["ü", "b", "ü", "b", "ü", "b"])))
    plain = ds.assign_coords(split=ds["split"].astype("S5"), condition=("trial", np.char.encode(ds["condition"].values)))
    plain.to_netcdf(tmp_path / "bytes.nc", engine="h5netcdf")
    loaded = load(tmp_path / "bytes.nc")
    assert loaded["split"].dtype.kind == "U" and loaded["condition"].dtype.kind == "U"
    assert (loaded["split"].values == "valid").sum() == 2
    xr.testing.assert_identical(loaded, ds)


def test_format_is_detected_by_content_not_extension(tmp_path):
    ds = dataset()
    save(ds, tmp_path / "really_netcdf.h5")
    assert_same(load(tmp_path / "really_netcdf.h5"), ds)
    export_lfads_h5(ds, tmp_path / "really_lfads.nc")
    assert "heldout" not in load(tmp_path / "really_lfads.nc").coords and len(leftovers(tmp_path)) == 0


def test_save_overwrites_an_existing_file(tmp_path):
    save(dataset(), tmp_path / "d.nc")
    new = dataset(np.int16)
    save(new, tmp_path / "d.nc")
    assert_same(load(tmp_path / "d.nc"), new)


@pytest.mark.parametrize("failure", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_interrupted_save_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch, failure):
    old = dataset()
    save(old, tmp_path / "d.nc")
    seen = []

    def half_write(self, path, *args, **kwargs):
        seen.append(path)
        with open(path, "wb") as f:  # the writer got as far as creating part of the file
            f.write(b"\x89HDF\r\n\x1a\n half a file")
        raise failure

    monkeypatch.setattr(xr.Dataset, "to_netcdf", half_write)
    with pytest.raises(type(failure)):
        save(dataset(), tmp_path / "d.nc")
    monkeypatch.undo()
    assert seen and seen[0].parent == tmp_path and seen[0].name != "d.nc"  # it wrote elsewhere
    assert leftovers(tmp_path) == [] and sorted(os.listdir(tmp_path)) == ["d.nc"]
    assert_same(load(tmp_path / "d.nc"), old)


def test_interrupted_save_of_a_new_file_leaves_nothing(tmp_path, monkeypatch):
    def failing(self, path, *args, **kwargs):
        open(path, "wb").close()
        raise RuntimeError("boom")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", failing)
    with pytest.raises(RuntimeError):
        save(dataset(), tmp_path / "new.nc")
    assert os.listdir(tmp_path) == []


def test_interrupted_export_keeps_the_old_file(tmp_path, monkeypatch):
    old = dataset()
    export_lfads_h5(old, tmp_path / "d.h5")
    before = (tmp_path / "d.h5").read_bytes()
    calls = []
    original = h5py.Group.create_dataset

    def fail_on_second(self, *args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", fail_on_second)
    with pytest.raises(RuntimeError, match="interrupted"):
        export_lfads_h5(dataset(), tmp_path / "d.h5")
    assert (tmp_path / "d.h5").read_bytes() == before
    assert os.listdir(tmp_path) == ["d.h5"]


def test_a_write_error_becomes_a_data_error_and_cleans_up(tmp_path, monkeypatch):
    def no_space(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(DataError, match="Could not write.*No space left.*free space"):
        save(dataset(), tmp_path / "d.nc")
    assert os.listdir(tmp_path) == []


def test_save_into_a_missing_folder(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*mkdir\(parents=True\)"):
        save(dataset(), tmp_path / "no" / "such" / "d.nc")
    assert os.listdir(tmp_path) == []


def test_save_onto_a_folder(tmp_path):
    with pytest.raises(DataError, match="is a folder"):
        save(dataset(), tmp_path)


def test_save_validates_its_input(tmp_path):
    bad = dataset()
    del bad.attrs["bin_width"]
    with pytest.raises(DataError, match="bin_width"):
        save(bad, tmp_path / "d.nc")
    with pytest.raises(DataError, match="Expected an xarray.Dataset"):
        save(bad["spikes"], tmp_path / "d.nc")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("value", [True, np.bool_(False), {"a": 1}, None])
def test_save_refuses_attributes_netcdf_cannot_hold(tmp_path, value):
    ds = dataset()
    ds["spikes"].attrs["flag"] = value
    with pytest.raises(DataError, match="Attribute 'flag' of variable 'spikes'.*0/1.*json.dumps"):
        save(ds, tmp_path / "d.nc")
    assert os.listdir(tmp_path) == []


def test_save_refuses_object_arrays_with_non_strings(tmp_path):
    ds = dataset().assign_coords(condition=("trial", np.array(["a", None, "b", "a", "b", "a"], dtype=object)))
    with pytest.raises(DataError, match=r"'condition' is an object array.*astype\(str\)"):
        save(ds, tmp_path / "d.nc")


def test_load_netcdf_with_the_stored_bin_width(tmp_path):
    ds = dataset(bin_width=0.025)
    save(ds, tmp_path / "d.nc")
    assert_same(load(tmp_path / "d.nc", bin_width=0.025), ds)
    with pytest.raises(DataError, match="stores bin_width=0.025 s but bin_width=0.01 was passed; omit"):
        load(tmp_path / "d.nc", bin_width=0.01)


def test_netcdf_without_a_bin_width_takes_the_argument(tmp_path):
    ds = dataset()
    ds.attrs = {}
    ds.to_netcdf(tmp_path / "nobin.nc", engine="h5netcdf")  # written outside lfads_nb
    with pytest.raises(DataError, match="no 'bin_width' attribute"):
        load(tmp_path / "nobin.nc")
    assert load(tmp_path / "nobin.nc", bin_width=0.01).attrs == {"bin_width": 0.01}


def test_load_validates_netcdf_content(tmp_path):
    ds = dataset().drop_vars("split")  # written by xarray directly, bypassing save's validation
    ds.to_netcdf(tmp_path / "nosplit.nc", engine="h5netcdf")
    with pytest.raises(DataError, match=r"nosplit.nc: The dataset has no 'split' coordinate"):
        load(tmp_path / "nosplit.nc")


# ----------------------------------------------------------------------------- bad files


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="No file at .*nothing.nc.*check the path"):
        load(tmp_path / "nothing.nc")


def test_load_a_folder(tmp_path):
    with pytest.raises(DataError, match="is a folder"):
        load(tmp_path)


@pytest.mark.parametrize("content", [b"trial,time,neuron\n1,2,3\n", b"CDF\x01" + bytes(60), b""])
def test_a_file_that_is_not_hdf5(tmp_path, content):
    (tmp_path / "x.nc").write_bytes(content)
    with pytest.raises(DataError, match="none of the formats lfads_nb reads.*It is not HDF5.*to_netcdf"):
        load(tmp_path / "x.nc")


def test_hdf5_that_is_neither_layout_lists_its_keys(tmp_path):
    write_h5(tmp_path / "other.h5", rates=np.zeros((2, 3)), train_truth=np.zeros((2, 5, 4)))
    phrase = r"none of the formats.*train_encod_data and train_recon_data.*HDF5 with keys \['rates', 'train_truth'\]"
    with pytest.raises(DataError, match=phrase):
        load(tmp_path / "other.h5")


def test_empty_hdf5(tmp_path):
    write_h5(tmp_path / "empty.h5")
    with pytest.raises(DataError, match=r"none of the formats.*HDF5 with keys \[\]"):
        load(tmp_path / "empty.h5")


def test_unknown_format_lists_the_readers_and_a_new_reader_is_one_entry(tmp_path, monkeypatch):
    """load tries READERS in order; appending one (as the NWB reader is) makes load read its files."""
    path = tmp_path / "x.csv"
    path.write_text("trial,time,neuron\n")
    message = (r"x.csv is in none of the formats lfads_nb reads; tried LFADS HDF5 \(.*\); lfads_nb netCDF-4 \(.*\); "
               r"NWB \(HDF5 with the root attribute 'nwb_version'\)\.")
    with pytest.raises(DataError, match=message):
        load(path)
    csv = lfads_io.Reader("CSV", lambda p: p.suffix == ".csv", lambda p, **options: dataset(), "a .csv name")
    monkeypatch.setattr(lfads_io.registry, "READERS", [*lfads_io.READERS, csv])
    assert load(path).sizes["trial"] == 6
    (tmp_path / "x.txt").write_text("?")
    with pytest.raises(DataError, match=r"tried LFADS HDF5 .*; lfads_nb netCDF-4 .*; NWB .*; CSV \(a .csv name\)\."):
        load(tmp_path / "x.txt")


@pytest.mark.parametrize("kind", ["netcdf", "lfads"])
def test_truncated_file(tmp_path, kind):
    path = tmp_path / "d"
    (save if kind == "netcdf" else export_lfads_h5)(dataset(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="corrupt or truncated"):
        load(path)


def test_garbage_after_the_hdf5_signature(tmp_path):
    (tmp_path / "bad.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + RNG.bytes(4000))
    with pytest.raises(DataError, match="corrupt or truncated"):
        load(tmp_path / "bad.h5")


# ----------------------------------------------------------------------------- LFADS HDF5 read


def test_lfads_without_inds_numbers_train_then_valid_then_test(tmp_path):
    train, valid, test = counts(3), counts(2), counts(1)
    path = write_h5(
        tmp_path / "l.h5",
        train_encod_data=train, train_recon_data=train,
        valid_encod_data=valid, valid_recon_data=valid,
        test_encod_data=test, test_recon_data=test,
    )
    ds = load_quiet(path)
    np.testing.assert_array_equal(ds["spikes"].values, np.concatenate([train, valid, test]))
    assert ds["spikes"].dtype == train.dtype
    assert list(ds["trial"].values) == [0, 1, 2, 3, 4, 5]
    assert list(ds["split"].values) == ["train"] * 3 + ["valid"] * 2 + ["test"]
    assert ds.attrs["bin_width"] == 0.01
    np.testing.assert_allclose(ds["time"].values, [0.005, 0.015, 0.025, 0.035, 0.045])
    assert "heldout" not in ds.coords and "rates_true" not in ds and "ext_input" not in ds.variables
    assert list(ds["neuron"].values) == [0, 1, 2, 3]


def test_lfads_inds_become_sorted_trial_ids(tmp_path):
    train, valid = counts(3), counts(2)
    path = lfads_file(
        tmp_path / "l.h5",
        train_encod_data=train, train_recon_data=train, valid_encod_data=valid, valid_recon_data=valid,
        train_inds=np.array([4, 0, 2]), valid_inds=np.array([1, 3]),
    )
    ds = load(path, bin_width=0.005)
    assert list(ds["trial"].values) == [0, 1, 2, 3, 4]
    assert list(ds["split"].values) == ["train", "valid", "train", "valid", "train"]
    np.testing.assert_array_equal(ds["spikes"].sel(trial=4).values, train[0])
    np.testing.assert_array_equal(ds["spikes"].sel(trial=3).values, valid[1])
    assert ds.attrs["bin_width"] == 0.005


def test_lfads_single_array_layout_of_the_original_lfads(tmp_path):
    train, valid = counts(3), counts(2)
    ds = load(write_h5(tmp_path / "l.h5", train_data=train, valid_data=valid), bin_width=0.01)
    np.testing.assert_array_equal(split(ds, "valid")["spikes"].values, valid)
    assert "heldout" not in ds.coords


@pytest.mark.parametrize("where", ["dataset", "attribute", "absent"])
def test_lfads_truth_becomes_rates_in_hz(tmp_path, where):
    # Reference: truth / conversion_factor = expected counts per bin; / bin_width (0.02 s) = Hz.
    train_truth = np.full((3, 5, 4), 6.0)
    valid_truth = np.full((2, 5, 4), 3.0)
    extra = {"conversion_factor": 3.0} if where == "dataset" else {}
    attrs = {"conversion_factor": 3.0} if where == "attribute" else {}
    path = lfads_file(tmp_path / "l.h5", attrs, train_truth=train_truth, valid_truth=valid_truth, **extra)
    ds = load(path, bin_width=0.02)
    factor = 1.0 if where == "absent" else 3.0
    np.testing.assert_allclose(split(ds, "train")["rates_true"].values, 6.0 / factor / 0.02, rtol=1e-12)
    np.testing.assert_allclose(split(ds, "valid")["rates_true"].values, 3.0 / factor / 0.02, rtol=1e-12)
    assert ds["rates_true"].attrs["units"] == "Hz"


def test_lfads_ext_input(tmp_path):
    train_ext, valid_ext = RNG.normal(size=(3, 5, 2)), RNG.normal(size=(2, 5, 2))
    path = lfads_file(tmp_path / "l.h5", train_ext_input=train_ext, valid_ext_input=valid_ext)
    ds = load(path, bin_width=0.01)
    assert ds["ext_input"].dims == ("trial", "time", ds["ext_input"].dims[2])
    np.testing.assert_array_equal(ds["ext_input"].values, np.concatenate([train_ext, valid_ext]))


def test_lfads_held_out_neurons(tmp_path):
    train, valid = counts(3, n_neurons=6), counts(2, n_neurons=6)
    path = lfads_file(
        tmp_path / "l.h5",
        train_encod_data=train[..., :4], train_recon_data=train,
        valid_encod_data=valid[..., :4], valid_recon_data=valid,
    )
    ds = load(path, bin_width=0.01)
    assert ds.sizes["neuron"] == 6
    assert list(ds["heldout"].values) == [False] * 4 + [True] * 2
    np.testing.assert_array_equal(ds["spikes"].values, np.concatenate([train, valid]))


def test_lfads_stored_bin_width(tmp_path):
    path = lfads_file(tmp_path / "l.h5", attrs={"bin_width": 0.004})
    assert load(path).attrs["bin_width"] == 0.004
    assert load(path, bin_width=0.004).attrs["bin_width"] == 0.004
    with pytest.raises(DataError, match="stores bin_width=0.004 s but bin_width=0.01 was passed"):
        load(path, bin_width=0.01)


@pytest.mark.parametrize("bin_width", [0, -0.01, np.nan, "10ms", True])
def test_lfads_bad_bin_width_argument(tmp_path, bin_width):
    with pytest.raises(DataError, match="must be a positive number of seconds"):
        load(lfads_file(tmp_path / "l.h5"), bin_width=bin_width)


def test_lfads_bin_width_stored_as_a_one_element_array(tmp_path):
    path = lfads_file(tmp_path / "l.h5", attrs={"bin_width": np.array([0.004])})
    assert load(path).attrs["bin_width"] == 0.004


def test_lfads_bad_stored_bin_width(tmp_path):
    with pytest.raises(DataError, match="bin_width stored in .* must be a positive number"):
        load(lfads_file(tmp_path / "l.h5", attrs={"bin_width": -1.0}))


def nlb_like_file(path):
    """A file shaped like lfads-torch's NLB data (nlb_tools' tensors, test phase): encod data is the
    held-in neurons over the encoder's bins (4 of 6 neurons, 5 of 7 bins); recon data adds the
    held-out neurons and the forward-prediction bins; behaviour covers the encoder's bins; the test
    split has only 'test_encod_data'."""
    train, valid = counts(3, n_time=7, n_neurons=6), counts(2, n_time=7, n_neurons=6)
    test = counts(2, n_time=5, n_neurons=4)
    behavior = {s: RNG.normal(size=(n, 5, 2)) for s, n in (("train", 3), ("valid", 2))}
    write_h5(
        path, attrs={"bin_width": 0.005},
        train_encod_data=train[:, :5, :4], train_recon_data=train, train_behavior=behavior["train"],
        valid_encod_data=valid[:, :5, :4], valid_recon_data=valid, valid_behavior=behavior["valid"],
        test_encod_data=test,
    )
    return train, valid, test, behavior


def test_lfads_forward_bins_test_encod_only_and_behavior(tmp_path):
    train, valid, test, behavior = nlb_like_file(tmp_path / "nlb.h5")
    ds = load(tmp_path / "nlb.h5")
    assert list(ds["split"].values) == ["train"] * 3 + ["valid"] * 2 + ["test"] * 2
    assert list(ds["forward"].values) == [False] * 5 + [True] * 2
    assert list(ds["heldout"].values) == [False] * 4 + [True] * 2
    spikes = ds["spikes"].values
    np.testing.assert_array_equal(spikes[:5], np.concatenate([train, valid]))
    # The test trials: their encod data, and NaN (not observed) where lfads-torch pads with NaN.
    np.testing.assert_array_equal(spikes[5:, :5, :4], test)
    assert np.isnan(spikes[5:, 5:]).all() and np.isnan(spikes[5:, :, 4:]).all()
    np.testing.assert_array_equal(ds["behavior"].values[:5, :5], np.concatenate([behavior["train"], behavior["valid"]]))
    assert np.isnan(ds["behavior"].values[:5, 5:]).all() and np.isnan(ds["behavior"].values[5:]).all()
    assert ds["behavior"].dims == ("trial", "time", "behavior_dim")


def test_a_model_trains_on_an_nlb_like_file_and_predicts_the_forward_bins(tmp_path):
    nlb_like_file(tmp_path / "nlb.h5")
    ds = load(tmp_path / "nlb.h5")
    config = lfads_nb.TrainConfig(max_epochs=2, batch_size=2, cd_rate=0.3)
    model = lfads_nb.build_model(ds, seed=0, ic_enc_dim=4, ci_enc_dim=4, con_dim=4, co_dim=1, ic_dim=2,
                                 gen_dim=6, fac_dim=2)
    result = lfads_nb.train(model, ds, config, progress=Progress())
    rates = lfads_nb.infer(result.model, ds)["rates"]
    assert rates.sizes == ds["spikes"].sizes and np.isfinite(rates.values).all()
    valid = split(ds, "valid")
    score = lfads_nb.metrics.fp_bps(rates.sel(trial=valid["trial"]), valid["spikes"], "forward", 0.005)
    assert np.isfinite(score)


def test_export_then_load_round_trip_with_forward_bins_and_behavior(tmp_path):
    ds = dataset(behavior=RNG.normal(size=(6, 5, 2)))
    ds = ds.assign_coords(heldout=("neuron", np.array([False, False, False, True])),
                          forward=("time", np.array([False, False, False, True, True])))
    export_lfads_h5(ds, tmp_path / "l.h5")
    with h5py.File(tmp_path / "l.h5", "r") as f:
        train = split(ds, "train")
        np.testing.assert_array_equal(f["train_encod_data"][()], train["spikes"].values[:, :3, :3])
        np.testing.assert_array_equal(f["train_recon_data"][()], train["spikes"].values)
        np.testing.assert_array_equal(f["train_behavior"][()], train["behavior"].values)
    loaded = load(tmp_path / "l.h5")
    expected = ds.copy()
    expected.attrs = {"bin_width": 0.01, "kind": "spikes"}
    assert_same(loaded, expected)


# ----------------------------------------------------------------------------- LFADS HDF5 read errors

T, V = counts(3), counts(2)
BAD_FILES = {
    "encod without recon": (dict(train_recon_data=None), "has 'train_encod_data' but no 'train_recon_data'"),
    "recon without encod": (dict(valid_encod_data=None), "has 'valid_recon_data' but no 'valid_encod_data'"),
    "empty split": (
        dict(valid_encod_data=np.zeros((0, 5, 4)), valid_recon_data=np.zeros((0, 5, 4))),
        "valid split .* has zero trials; delete its keys or add trials",
    ),
    "not 3-D": (
        dict(train_encod_data=T[:, :, 0], train_recon_data=T[:, :, 0]),
        r"shape \(3, 5\); expected \(trial, time, neuron\)",
    ),
    "encod and recon trials differ": (dict(train_encod_data=T[:2]), "need the same trials"),
    "encod longer than recon": (
        dict(train_encod_data=counts(3, n_time=6)), r"encod data the first time bins of the recon data"
    ),
    "encod is not the first bins of recon": (
        dict(train_encod_data=T[:, 1:]),
        "differs from the first 4 neurons and 4 bins of 'train_recon_data'.*forward-prediction bins as the last",
    ),
    "encod bins differ between splits": (
        dict(valid_encod_data=V[:, :4]), "valid split .* has 4 encoder time bins but the train split has 5",
    ),
    "test encod data only, no other split": (
        dict(train_encod_data=None, train_recon_data=None, valid_encod_data=None, valid_recon_data=None,
             test_encod_data=T), "has 'test_encod_data' but no recon data of any split",
    ),
    "valid encod data only": (dict(valid_recon_data=None), "has 'valid_encod_data' but no 'valid_recon_data'"),
    "encod-only test truth without the forward bins": (
        dict(train_encod_data=T[:, :4], valid_encod_data=V[:, :4], test_encod_data=counts(2, n_time=4),
             train_truth=np.ones((3, 5, 4)), valid_truth=np.ones((2, 5, 4)), test_truth=np.ones((2, 4, 4))),
        r"'test_truth' has shape \(2, 4, 4\); expected \(2, 5, 4\)",
    ),
    "behavior time matches neither": (
        dict(train_encod_data=T[:, :4], valid_encod_data=V[:, :4],
             train_behavior=np.ones((3, 3, 2)), valid_behavior=np.ones((2, 5, 2))),
        r"'train_behavior' has 3 time bins; expected 5 \(the recon data's\) or 4 \(the encod data's",
    ),
    "behavior dims differ between splits": (
        dict(train_behavior=np.ones((3, 5, 2)), valid_behavior=np.ones((2, 5, 3))),
        "'valid_behavior' has 3 dims but 'train_behavior' has 2",
    ),
    "behavior trials differ": (
        dict(train_behavior=np.ones((2, 5, 2))), r"'train_behavior' has shape \(2, 5, 2\); expected \(3, n_time",
    ),
    "time differs between splits": (
        dict(valid_encod_data=V[:, :4], valid_recon_data=V[:, :4]),
        "valid split .* has 4 time bins but the train split has 5; all splits need the same",
    ),
    "neurons differ between splits": (
        dict(valid_encod_data=V[..., :3], valid_recon_data=V[..., :3]),
        "has 3 recon neurons but the train split has 4",
    ),
    "encod neurons differ between splits": (
        dict(valid_encod_data=V[..., :3]),
        "has 3 encod neurons but the train split has 4",
    ),
    "encod is not the start of recon": (
        dict(train_encod_data=T[..., 1:]),
        "differs from the first 3 neurons and 5 bins of 'train_recon_data'.*must start with the encod data",
    ),
    "no encod neurons": (
        dict(train_encod_data=T[..., :0], valid_encod_data=V[..., :0]), "needs between 1 and all"
    ),
    "truth shape differs from data": (
        dict(train_truth=np.ones((3, 5, 3)), valid_truth=np.ones((2, 5, 4))),
        r"'train_truth' has shape \(3, 5, 3\) but 'train_recon_data' has \(3, 5, 4\)",
    ),
    "truth in one split only": (
        dict(train_truth=np.ones((3, 5, 4))), r"Only the \['train'\] splits .* have '\*_truth'; give every split"
    ),
    "inds length differs from trials": (
        dict(train_inds=np.arange(4), valid_inds=np.arange(2)),
        r"'train_inds' has shape \(4,\).*shape \(3,\)",
    ),
    "float inds": (dict(train_inds=np.arange(3.0), valid_inds=np.arange(2.0)), "integer trial id"),
    "repeated inds": (dict(train_inds=np.arange(3), valid_inds=np.arange(2)), "repeat trial ids"),
    "ext_input time differs": (
        dict(train_ext_input=np.ones((3, 4, 1)), valid_ext_input=np.ones((2, 5, 1))),
        "'train_ext_input' has 4 time bins but 'train_recon_data' has 5; the generator needs an external input",
    ),
    "ext_input width differs between splits": (
        dict(train_ext_input=np.ones((3, 5, 1)), valid_ext_input=np.ones((2, 5, 2))),
        "'valid_ext_input' has 2 inputs but 'train_ext_input' has 1",
    ),
    "conversion factor not positive": (
        dict(train_truth=np.ones((3, 5, 4)), valid_truth=np.ones((2, 5, 4)), conversion_factor=0.0),
        "conversion_factor .* must be one positive number",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_lfads_file(tmp_path, case):
    overrides, phrase = BAD_FILES[case]
    arrays = dict(train_encod_data=T, train_recon_data=T, valid_encod_data=V, valid_recon_data=V)
    path = lfads_file(tmp_path / "bad.h5", attrs={"bin_width": 0.01}, **{**arrays, **overrides})
    with pytest.raises(DataError, match=phrase):
        load(path)


def test_bad_single_array_layout_names_its_own_key(tmp_path):
    path = write_h5(tmp_path / "l.h5", train_data=T[..., 0], valid_data=V[..., 0])
    with pytest.raises(DataError, match=r"^'train_data' .* shape \(3, 5\).*data\[\.\.\., np.newaxis\]"):
        load(path, bin_width=0.01)


def test_lfads_key_that_is_a_group(tmp_path):
    path = lfads_file(tmp_path / "g.h5", attrs={"bin_width": 0.01})
    with h5py.File(path, "a") as f:
        f.create_group("test_encod_data")
        f.create_dataset("test_recon_data", data=counts(1))
    with pytest.raises(DataError, match="'test_encod_data' .* is an HDF5 group"):
        load(path)


# ----------------------------------------------------------------------------- LFADS HDF5 export


def test_export_writes_the_lfads_torch_layout(tmp_path):
    ds = rich_dataset().fillna(0)  # trial ids 3, 5, 8, ...; held out neurons 1 and 3; no NaN
    export_lfads_h5(ds, tmp_path / "l.h5")
    with h5py.File(tmp_path / "l.h5", "r") as f:
        assert sorted(f.keys()) == sorted(
            [
                f"{s}_{k}" for s in ("train", "valid", "test")
                for k in ("encod_data", "recon_data", "inds", "truth", "behavior")
            ]
            + ["conversion_factor"]
        )
        train = split(ds, "train")
        np.testing.assert_array_equal(f["train_encod_data"][()], train["spikes"].values[..., [0, 2]])
        np.testing.assert_array_equal(f["train_recon_data"][()], train["spikes"].values[..., [0, 2, 1, 3]])
        np.testing.assert_array_equal(f["train_inds"][()], [3, 8, 21])
        assert f["train_inds"].dtype.kind == "i"
        np.testing.assert_array_equal(f["test_inds"][()], [13])
        np.testing.assert_array_equal(f["train_behavior"][()], train["behavior"].values)
        # Reference: lfads-torch computes truth / conversion_factor and compares it with counts per bin.
        counts_per_bin = f["valid_truth"][()] / f["conversion_factor"][()]
        expected = split(ds, "valid")["rates_true"].values[..., [0, 2, 1, 3]] * 0.02
        np.testing.assert_allclose(counts_per_bin, expected, rtol=1e-6)
        assert f.attrs["bin_width"] == 0.02


def test_export_omits_a_split_without_trials(tmp_path):
    ds = dataset().assign_coords(split=("trial", ["train", "valid", "train", "train", "valid", "train"]))
    export_lfads_h5(ds, tmp_path / "l.h5")
    with h5py.File(tmp_path / "l.h5", "r") as f:
        assert not any(k.startswith("test_") for k in f) and "conversion_factor" not in f
        assert "train_ext_input" not in f


@pytest.mark.parametrize("bin_width", [0.01, 0.013, 0.02])
def test_export_then_load_round_trip(tmp_path, bin_width):
    """Equal to the original up to what the layout cannot hold: condition labels, neuron ids,
    other truth variables and attrs are dropped; held-out neurons move after the observed ones."""
    spikes = RNG.poisson(2.0, size=(6, 5, 4)).astype(float)
    ds = make_dataset(
        spikes,
        bin_width,
        split_labels=SPLIT_LABELS,
        condition=list("abcabc"),
        trial_ids=[3, 5, 8, 13, 21, 34],
        neuron_ids=["a", "b", "c", "d"],
        rates_true=RNG.uniform(1, 50, size=(6, 5, 4)),
        latents_true=RNG.normal(size=(6, 5, 2)),
        ext_input=RNG.normal(size=(6, 5, 2)),
    )
    ds = ds.assign_coords(heldout=("neuron", np.array([True, False, False, True])))
    ds.attrs["name"] = "dropped"
    export_lfads_h5(ds, tmp_path / "l.h5")
    loaded = load(tmp_path / "l.h5")

    expected = (
        ds.isel(neuron=[1, 2, 0, 3])
        .drop_vars(["condition", "latents_true"])
        .assign_coords(neuron=np.arange(4))
    )
    expected.attrs = {"bin_width": bin_width, "kind": "spikes"}
    assert_same(loaded, expected)


@pytest.mark.parametrize("kind", ["emg", "calcium_events"])
def test_export_then_load_round_trip_of_float_kinds(tmp_path, kind):
    """EMG and calcium events are floats: exported and loaded as they are (not rounded, not refused),
    with their kind, truth (conversion_factor 1) and s_min in the file attributes."""
    shape = (6, 5, 4)
    if kind == "emg":
        values = RNG.gamma(2.0, 0.3, size=shape)
    else:
        values = np.where(RNG.random(shape) < 0.3, 0.1 + RNG.exponential(0.7, shape), 0.0)
        values[0, 0, :] = 0.1  # the smallest events, equal to s_min
    truth_name = {"emg": "emg_mean_true", "calcium_events": "events_mean_true"}[kind]
    ds = make_dataset(values, 0.02, kind, split_labels=SPLIT_LABELS, **{truth_name: RNG.uniform(0.1, 2, shape)})
    if kind == "calcium_events":
        ds.attrs["s_min"] = 0.1
    ds = ds.assign_coords(heldout=("neuron", np.array([False, False, True, False])))
    export_lfads_h5(ds, tmp_path / "l.h5")
    with h5py.File(tmp_path / "l.h5", "r") as f:
        assert f.attrs["kind"] == kind and f["conversion_factor"][()] == 1.0
        np.testing.assert_array_equal(f["train_truth"][()], split(ds, "train")[truth_name].values[..., [0, 1, 3, 2]])
    loaded = load(tmp_path / "l.h5")
    assert_same(loaded, ds.isel(neuron=[0, 1, 3, 2]).assign_coords(neuron=np.arange(4)))
    with pytest.raises(DataError, match=f"stores kind='{kind}' but kind='spikes' was passed; omit kind"):
        load(tmp_path / "l.h5", kind="spikes")


def test_lfads_file_of_floats_read_as_the_kind_given(tmp_path):
    """A plain lfads-torch file (no kind attribute): its arrays are spike counts unless kind says otherwise;
    its truth is then the EMG mean, truth / conversion_factor, in the data's units."""
    train, valid = RNG.gamma(2.0, size=(3, 5, 4)), RNG.gamma(2.0, size=(2, 5, 4))
    path = lfads_file(tmp_path / "l.h5", attrs={"bin_width": 0.01}, train_encod_data=train, train_recon_data=train,
                      valid_encod_data=valid, valid_recon_data=valid, train_truth=np.full((3, 5, 4), 3.0),
                      valid_truth=np.full((2, 5, 4), 3.0), conversion_factor=2.0)
    with pytest.raises(DataError, match="non-integer values.*kind='emg'"):
        load(path)
    ds = load(path, kind="emg")
    assert ds.attrs["kind"] == "emg" and "spikes" not in ds and "rates_true" not in ds
    np.testing.assert_array_equal(ds["emg"].values, np.concatenate([train, valid]))
    np.testing.assert_allclose(ds["emg_mean_true"].values, 1.5, rtol=1e-12)
    assert ds["emg_mean_true"].attrs["units"] == "a.u."
    with pytest.raises(DataError, match=r"^kind: Unknown data kind 'eeg'; choose one of"):
        load(path, kind="eeg")


def test_kind_round_trips_through_netcdf(tmp_path):
    ds = make_dataset(RNG.gamma(2.0, size=(6, 5, 4)), 0.01, "emg", split_labels=SPLIT_LABELS)
    ds["emg"].attrs["units"] = "mV"
    save(ds, tmp_path / "emg.nc")
    assert_same(load(tmp_path / "emg.nc"), ds)
    assert load(tmp_path / "emg.nc", kind="emg").attrs["kind"] == "emg"
    with pytest.raises(DataError, match="stores kind='emg' but kind='calcium_events' was passed"):
        load(tmp_path / "emg.nc", kind="calcium_events")
    plain = ds.copy()
    del plain.attrs["kind"]  # written by another tool: the kind comes from the argument, else the variable
    plain.to_netcdf(tmp_path / "plain.nc", engine="h5netcdf")
    assert "kind" not in load(tmp_path / "plain.nc").attrs
    assert load(tmp_path / "plain.nc", kind="emg").attrs["kind"] == "emg"
    with pytest.raises(DataError, match="its kind is 'spikes', so expected 'spikes'"):
        load(tmp_path / "plain.nc", kind="spikes")


def test_export_then_load_without_held_out_neurons_or_truth(tmp_path):
    ds = dataset(trial_ids=np.arange(6) * 2)
    export_lfads_h5(ds, tmp_path / "l.h5")
    assert_same(load(tmp_path / "l.h5"), ds)


def test_export_refuses_nan_with_the_fix(tmp_path):
    ds = rich_dataset()
    with pytest.raises(DataError, match=r"6 unobserved \(NaN\) bins.*lfads-torch.*fillna\(0\)"):
        export_lfads_h5(ds, tmp_path / "l.h5")
    assert os.listdir(tmp_path) == []


def test_export_refuses_non_integer_trial_ids(tmp_path):
    ds = dataset(trial_ids=[f"t{i}" for i in range(6)])
    with pytest.raises(DataError, match=r"integer ids.*assign_coords\(trial=np.arange"):
        export_lfads_h5(ds, tmp_path / "l.h5")


def test_export_needs_train_and_valid_trials(tmp_path):
    no_valid = dataset().assign_coords(split=("trial", ["train", "test"] * 3))
    with pytest.raises(DataError, match="no validation trials.*lfads-torch needs some"):
        export_lfads_h5(no_valid, tmp_path / "l.h5")
    no_train = dataset().assign_coords(split=("trial", ["valid", "test"] * 3))
    with pytest.raises(DataError, match="no training trials"):
        export_lfads_h5(no_train, tmp_path / "l.h5")


def test_export_held_out_mask_checks(tmp_path):
    all_held = dataset().assign_coords(heldout=("neuron", np.ones(4, bool)))
    with pytest.raises(DataError, match="Every neuron is marked heldout"):
        export_lfads_h5(all_held, tmp_path / "l.h5")
    not_bool = dataset().assign_coords(heldout=("neuron", np.array([0, 1, 0, 1])))
    with pytest.raises(DataError, match="must be a boolean per neuron"):
        export_lfads_h5(not_bool, tmp_path / "l.h5")


def test_export_validates_and_needs_a_folder(tmp_path):
    with pytest.raises(DataError, match="Expected an xarray.Dataset"):
        export_lfads_h5(np.zeros((2, 3, 4)), tmp_path / "l.h5")
    with pytest.raises(DataError, match="does not exist"):
        export_lfads_h5(dataset(), tmp_path / "missing" / "l.h5")
