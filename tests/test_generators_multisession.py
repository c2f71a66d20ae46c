"""data_generators.chaotic_rnn_multisession: one chaotic RNN, several sessions seeing different units.

References: the Euler recurrence recovered by least squares (as for ``chaotic_rnn``), the
min-max tanh rate map recomputed from the returned network state, and the spec of the original
multisession set (extensions.md section 4.3: 5 sessions x 20 disjoint units of a 100-unit network,
40 conditions x 10 trials, mean rate about 15 Hz).
"""
from __future__ import annotations


import numpy as np
import pytest

import lfads_nb
from data_generators import chaotic_rnn_multisession
from lfads_nb import ConfigError
from lfads_nb.data import session_names

SMALL = dict(n_conditions=6, n_bins=30)


def sessions(tree):
    return {name: tree[name].to_dataset() for name in session_names(tree)}


def test_defaults_are_the_original_multisession_set():
    tree = chaotic_rnn_multisession(seed=0)  # its generation time: benchmarks/generator_speed.py
    data = sessions(tree)
    assert list(data) == [f"session{s}" for s in range(5)]
    units = [set(ds["neuron"].values.tolist()) for ds in data.values()]
    assert all(len(u) == 20 for u in units) and set().union(*units) == set(range(100))  # disjoint, all units
    for ds in data.values():
        lfads_nb.validate(ds, require_train=True)
        assert ds["spikes"].shape == (400, 100, 20) and ds["latents_true"].shape == (400, 100, 100)
        split = ds["split"].to_series().groupby(ds["condition"].values).value_counts().unstack()
        assert (split["train"] == 8).all() and (split["valid"] == 2).all()
    # Min-max tanh rates average about half of 30 Hz (spec: 15 Hz; 100 units x 40 conditions).
    mean_rate = np.mean([ds["rates_true"].values.mean() for ds in data.values()])
    assert abs(mean_rate - 15) < 1


def test_one_network_and_the_same_conditions_in_every_session():
    data = sessions(chaotic_rnn_multisession(seed=2, n_sessions=3, units_per_session=10, n_units=40, **SMALL))
    first = data["session0"]
    x = first["latents_true"].values.astype(np.float64)
    # The Euler update with dt/tau = 0.4 and gain 1.5 holds exactly for a least-squares W.
    previous = np.tanh(x[:, :-1]).reshape(-1, 40)
    target = ((x[:, 1:] - 0.6 * x[:, :-1]) / (0.4 * 1.5)).reshape(-1, 40)
    w_t, *_ = np.linalg.lstsq(previous, target, rcond=None)
    assert np.abs(previous @ w_t - target).max() < 1e-4
    for ds in data.values():
        np.testing.assert_array_equal(ds["condition"].values, first["condition"].values)
        np.testing.assert_array_equal(ds["latents_true"].values, first["latents_true"].values)
        # Each session's rates: the min-max map of tanh of its own units' states.
        activity = np.tanh(ds["latents_true"].values.astype(np.float64)[..., ds["neuron"].values])
        lo, hi = activity.min(axis=1, keepdims=True), activity.max(axis=1, keepdims=True)
        np.testing.assert_allclose(ds["rates_true"].values, 30 * (activity - lo) / (hi - lo), atol=1e-3)


def test_unequal_overlapping_sessions_and_a_data_poor_one():
    tree = chaotic_rnn_multisession(seed=1, n_sessions=3, units_per_session=[15, 20, 30], shared_units=5,
                                    trials_per_condition=[10, 10, 3], **SMALL)
    data = sessions(tree)
    units = [set(ds["neuron"].values.tolist()) for ds in data.values()]
    assert [len(u) for u in units] == [15, 20, 30]
    shared = units[0] & units[1] & units[2]
    assert len(shared) == 5
    assert all(not ((a & b) - shared) for i, a in enumerate(units) for b in units[i + 1:])  # the rest disjoint
    assert [ds.sizes["trial"] for ds in data.values()] == [60, 60, 18]
    s0, s1 = data["session0"].sel(neuron=sorted(shared)), data["session1"].sel(neuron=sorted(shared))
    np.testing.assert_array_equal(s0["rates_true"].values, s1["rates_true"].values)  # same units, same rates
    assert not np.array_equal(s0["spikes"].values, s1["spikes"].values)  # but their own spike draws
    # A session's spikes and split do not depend on another session's size.
    smaller = sessions(chaotic_rnn_multisession(seed=1, n_sessions=3, units_per_session=[15, 20, 30], shared_units=5,
                                                trials_per_condition=[10, 10, 5], **SMALL))
    for name in ("session0", "session1"):
        np.testing.assert_array_equal(smaller[name]["spikes"].values, data[name]["spikes"].values)
        np.testing.assert_array_equal(smaller[name]["split"].values, data[name]["split"].values)


def test_seeded_and_saved_as_one_file(tmp_path):
    a = chaotic_rnn_multisession(seed=4, n_sessions=2, **SMALL)
    b = chaotic_rnn_multisession(seed=4, n_sessions=2, **SMALL)
    c = chaotic_rnn_multisession(seed=5, n_sessions=2, **SMALL)
    for name in session_names(a):
        assert a[name].to_dataset().identical(b[name].to_dataset())
        assert not np.array_equal(a[name]["spikes"].values, c[name]["spikes"].values)
    lfads_nb.save(a, tmp_path / "sessions.nc")
    loaded = lfads_nb.load(tmp_path / "sessions.nc")
    for name in session_names(a):
        assert loaded[name].to_dataset().identical(a[name].to_dataset())
    assert loaded.attrs["generator"] == "chaotic_rnn_multisession" and loaded.attrs["seed"] == 4


@pytest.mark.parametrize("options, phrase", [
    (dict(n_sessions=6, units_per_session=20), r"need 120 distinct units .* n_units=100"),
    (dict(units_per_session=[20, 20]), "units_per_session has 2 entries but n_sessions is 5"),
    (dict(units_per_session=4, shared_units=5), r"units_per_session must be >= 5"),
    (dict(trials_per_condition=[10, 10, 10, 10, 0]), r"trials_per_condition\[4\] must be >= 1"),
    (dict(units_per_session=2.5), "units_per_session must be a whole number or a list"),
    (dict(bin_width=0.05), "bin_width .* exceeds tau"),
])
def test_bad_options_raise_config_error(options, phrase):
    with pytest.raises(ConfigError, match=phrase):
        chaotic_rnn_multisession(**options)
