"""Several sessions as an xarray.DataTree (lfads_nb.data.sessions): validation, and saving and
loading as netCDF groups, atomically."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import lfads_nb
from lfads_nb import DataError
from lfads_nb.data import make_sessions, session_names, validate_sessions

RNG = np.random.default_rng(0)


def session(n_neurons, n_trials=6, n_time=5, bin_width=0.01, first_neuron=0, kind="spikes"):
    """A session of n_trials (train, train, valid, ...) with neuron ids from first_neuron."""
    shape = (n_trials, n_time, n_neurons)
    truth = {"rates_true": RNG.uniform(1, 40, size=shape)} if kind == "spikes" else {}
    values = RNG.poisson(2.0, size=shape) if kind == "spikes" else RNG.gamma(2.0, 0.3, size=shape)
    return lfads_nb.make_dataset(
        values, bin_width, kind, split_labels=["train", "train", "valid"] * (n_trials // 3),
        condition=np.array(["a", "b", "c"] * (n_trials // 3)), neuron_ids=first_neuron + np.arange(n_neurons),
        **truth,
    )


def three_sessions():
    return make_sessions({"s0": session(4), "s1": session(7, n_trials=9, first_neuron=2), "poor": session(3, 3)},
                         generator="test")


def test_sessions_keep_their_own_neurons_and_trials():
    tree = three_sessions()
    assert session_names(tree) == ["s0", "s1", "poor"]
    assert tree["s1"].to_dataset().sizes == {"trial": 9, "time": 5, "neuron": 7}
    assert list(tree["s1"]["neuron"].values) == list(range(2, 9))
    assert tree.attrs["generator"] == "test"
    assert validate_sessions(tree) is tree


def test_save_and_load_round_trip_as_netcdf_groups(tmp_path):
    tree = three_sessions()
    tree["s0"].to_dataset()["spikes"].attrs["description"] = "counts"
    lfads_nb.save(tree, tmp_path / "sessions.nc")
    loaded = lfads_nb.load(tmp_path / "sessions.nc")
    assert isinstance(loaded, xr.DataTree) and session_names(loaded) == ["s0", "s1", "poor"]
    for name in session_names(tree):
        xr.testing.assert_identical(loaded[name].to_dataset(), tree[name].to_dataset())
        assert loaded[name]["split"].dtype.kind == "U"
    assert loaded.attrs["generator"] == "test"
    import h5py

    with h5py.File(tmp_path / "sessions.nc", "r") as f:
        assert sorted(f) == ["poor", "s0", "s1"]


def test_an_interrupted_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "sessions.nc"
    lfads_nb.save(three_sessions(), path)
    before = path.read_bytes()

    def fail(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(xr.DataTree, "to_netcdf", fail)
    with pytest.raises(KeyboardInterrupt):
        lfads_nb.save(make_sessions({"only": session(2)}), path)
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_each_session_is_validated_and_named():
    bad = session(4)
    bad.attrs["bin_width"] = -1.0
    with pytest.raises(DataError, match="Session 'b': bin_width must be a positive number"):
        make_sessions({"a": session(4), "b": bad})
    with pytest.raises(DataError, match="Session 'b' has bin width \\(s\\) 0.02 but session 'a' has 0.01"):
        make_sessions({"a": session(4), "b": session(4, bin_width=0.02)})
    with pytest.raises(DataError, match="Session 'b' has number of time bins 6 but session 'a' has 5"):
        make_sessions({"a": session(4), "b": session(4, n_time=6)})
    with pytest.raises(DataError, match="Session 'b' has kind 'emg' but session 'a' has 'spikes'"):
        make_sessions({"a": session(4), "b": session(4, kind="emg")})
    with pytest.raises(DataError, match="Session name 'a/b' must be a non-empty string without '/'"):
        make_sessions({"a/b": session(4)})
    with pytest.raises(DataError, match="Session 'a' is a DataArray"):
        make_sessions({"a": session(4)["spikes"]})
    with pytest.raises(DataError, match="non-empty mapping"):
        make_sessions({})


def test_bad_trees_are_refused():
    with pytest.raises(DataError, match="Expected an xarray.DataTree of sessions, got Dataset"):
        validate_sessions(session(3))
    with pytest.raises(DataError, match="root holds variables \\['x'\\]"):
        validate_sessions(xr.DataTree.from_dict({"/": xr.Dataset({"x": 1}), "a": session(3)}))
    with pytest.raises(DataError, match="has no sessions"):
        validate_sessions(xr.DataTree())
    with pytest.raises(DataError, match="Session 'a' has groups of its own"):
        validate_sessions(xr.DataTree.from_dict({"a": session(3), "a/b": session(3)}))


def test_load_checks_a_bin_width_against_every_session(tmp_path):
    lfads_nb.save(three_sessions(), tmp_path / "sessions.nc")
    with pytest.raises(DataError, match="stores bin_width=0.01 s but bin_width=0.02 was passed"):
        lfads_nb.load(tmp_path / "sessions.nc", bin_width=0.02)
