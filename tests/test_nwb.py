"""lfads_nb.load of NWB files (lfads_nb.io.nwb), on small files written here with pynwb (no network).

The files are shaped like DANDI's NLB sets (extensions.md section 7): a trials table with
start/stop times, an alignment column, a condition column and optionally NLB's split column; a
units table with spike times and a heldout flag; a 'behavior' processing module with a
TimeSeries hand_vel (with NLB's 'columns=[x,y]' comment) and a SpatialSeries inside Position.
References: spike counts by a per-trial, per-bin loop over np.histogram's half-open bins, and
behaviour means by the closed form of a linear signal's mean over the samples in a bin.
"""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

import lfads_nb
from lfads_nb import ConfigError, DataError

pynwb = pytest.importorskip("pynwb")
from pynwb.behavior import Position, SpatialSeries  # noqa: E402

BIN = 0.01
WINDOW = (-0.1, 0.2)
RATE = 1000.0  # behaviour samples per second
TRIAL_LENGTH = 1.0  # s; trial i runs [i, i + 1) and moves at i + 0.4 + jitter


def write_nwb(path, *, n_trials=12, n_units=5, split=True, units=True, spike_times=True, trials=True,
              nan_onset=(), obs_intervals=False, seed=0):
    """An NLB-like NWB file; returns what was written (spike times, trial events, behaviour signals)."""
    rng = np.random.default_rng(seed)
    nwb = pynwb.NWBFile(session_description="test", identifier="lfads-nb-test",
                        session_start_time=datetime(2026, 1, 1, tzinfo=timezone.utc))
    onsets = np.arange(n_trials) + 0.4 + rng.uniform(0, 0.05, n_trials)
    onsets[list(nan_onset)] = np.nan
    conditions = np.array(["left", "right", "up"])[np.arange(n_trials) % 3]
    if trials:
        nwb.add_trial_column("move_onset_time", "movement onset (s)")
        nwb.add_trial_column("condition", "reach direction")
        if split:
            nwb.add_trial_column("split", "NLB split")
        for i in range(n_trials):
            row = dict(start_time=float(i), stop_time=i + TRIAL_LENGTH, move_onset_time=onsets[i],
                       condition=conditions[i])
            if split:
                row["split"] = ["train", "train", "val", "test", "none"][i % 5]
            nwb.add_trial(**row)
    times = [np.sort(rng.uniform(0, n_trials, rng.integers(50, 400))) for _ in range(n_units)]
    if units:
        if spike_times:
            nwb.add_unit_column("heldout", "held out in NLB")
            for i, t in enumerate(times):
                interval = [0.0, 5.5] if i == 1 else [0.0, float(n_trials)]
                observed = {"obs_intervals": [interval]} if obs_intervals else {}
                nwb.add_unit(spike_times=t, heldout=i >= n_units - 2, **observed)
        else:
            nwb.add_unit_column("depth", "depth (um)")
            for i in range(n_units):
                nwb.add_unit(depth=float(i))
    module = nwb.create_processing_module("behavior", "behaviour")
    stamps = np.arange(0, n_trials, 1 / RATE)
    vel = np.stack([np.sin(2 * np.pi * stamps), 2.0 * stamps], axis=1)  # x: a sine, y: linear
    module.add(pynwb.TimeSeries(name="hand_vel", data=vel, unit="m/s", timestamps=stamps, comments="columns=[x,y]"))
    pos = stamps[:, None] * np.array([[1.0, -1.0]])
    module.add(Position(spatial_series=SpatialSeries(name="hand_pos", data=pos, reference_frame="screen",
                                                     starting_time=0.0, rate=RATE)))
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return dict(spikes=times, onsets=onsets, conditions=conditions, stamps=stamps, vel=vel, pos=pos)


def load_nwb(path, **kw):
    options = dict(bin_width=BIN, align_to="move_onset_time", window=WINDOW, condition="condition")
    options.update(kw)
    return lfads_nb.load(path, **options)


def test_spikes_are_binned_as_a_histogram_per_trial(tmp_path):
    truth = write_nwb(tmp_path / "x.nwb")
    ds = load_nwb(tmp_path / "x.nwb")
    lfads_nb.validate(ds)
    # NLB splits: 'val' read as 'valid', 'none' trials (4, 9) left out.
    kept = [i for i in range(12) if i % 5 != 4]
    np.testing.assert_array_equal(ds["trial"].values, kept)
    assert list(ds["split"].values) == [["train", "train", "valid", "test"][i % 5] for i in kept]
    assert list(ds["condition"].values) == list(truth["conditions"][kept])
    n_bins = 30
    assert ds.sizes == {"trial": 10, "time": n_bins, "neuron": 5, "behavior_dim": 4}
    np.testing.assert_allclose(ds["time"].values, WINDOW[0] + (np.arange(n_bins) + 0.5) * BIN)
    expected = np.zeros((10, n_bins, 5), int)
    for t, trial in enumerate(kept):
        for k in range(n_bins):
            lo = truth["onsets"][trial] + WINDOW[0] + k * BIN
            for u, spikes in enumerate(truth["spikes"]):
                expected[t, k, u] = np.histogram(spikes, bins=[lo, lo + BIN])[0][0]
    np.testing.assert_array_equal(ds["spikes"].values, expected)
    assert expected.sum() > 100
    assert list(ds["heldout"].values) == [False, False, False, True, True]
    assert ds.attrs["align_to"] == "move_onset_time" and list(ds.attrs["window"]) == list(WINDOW)


def test_behaviour_is_the_mean_of_the_samples_in_each_bin(tmp_path):
    truth = write_nwb(tmp_path / "x.nwb")
    ds = load_nwb(tmp_path / "x.nwb")
    assert list(ds["behavior_dim"].values) == ["hand_pos_0", "hand_pos_1", "hand_vel_x", "hand_vel_y"]
    stamps = truth["stamps"]
    for t, trial in enumerate(ds["trial"].values):
        lo = truth["onsets"][trial] + WINDOW[0] + np.arange(30) * BIN
        for k in (0, 7, 29):
            inside = (stamps >= lo[k]) & (stamps < lo[k] + BIN)
            # hand_vel_y = 2 t and hand_pos = (t, -t) are linear: the bin mean is the mean sample time's.
            mean_time = stamps[inside].mean()
            assert ds["behavior"].sel(behavior_dim="hand_vel_y").values[t, k] == pytest.approx(2 * mean_time)
            assert ds["behavior"].sel(behavior_dim="hand_pos_1").values[t, k] == pytest.approx(-mean_time)
            assert ds["behavior"].sel(behavior_dim="hand_vel_x").values[t, k] == pytest.approx(
                truth["vel"][inside, 0].mean())
            assert inside.sum() == 10  # 1 kHz samples in a 10 ms bin


def test_behavior_option_picks_series_in_order(tmp_path):
    write_nwb(tmp_path / "x.nwb")
    ds = load_nwb(tmp_path / "x.nwb", behavior=["hand_vel"])
    assert list(ds["behavior_dim"].values) == ["hand_vel_x", "hand_vel_y"]
    with pytest.raises(DataError, match=r"No behaviour series \['eye_pos'\].*has \['hand_pos', 'hand_vel'\]"):
        load_nwb(tmp_path / "x.nwb", behavior=["eye_pos"])


def test_without_a_split_column_the_split_is_stratified_and_seeded(tmp_path):
    write_nwb(tmp_path / "x.nwb", n_trials=60, split=False)
    ds = load_nwb(tmp_path / "x.nwb", seed=3)
    for condition in ("left", "right", "up"):  # 20 trials each: 4 valid
        labels = ds["split"].values[ds["condition"].values == condition]
        assert (labels == "valid").sum() == 4 and (labels == "train").sum() == 16
    again = load_nwb(tmp_path / "x.nwb", seed=3)
    np.testing.assert_array_equal(again["split"].values, ds["split"].values)
    other = load_nwb(tmp_path / "x.nwb", seed=4)
    assert not np.array_equal(other["split"].values, ds["split"].values)
    no_condition = load_nwb(tmp_path / "x.nwb", condition=None)
    assert "condition" not in no_condition.coords and (no_condition["split"].values == "valid").sum() == 12


def test_bins_outside_a_units_observation_intervals_are_nan(tmp_path):
    truth = write_nwb(tmp_path / "x.nwb", obs_intervals=True)
    ds = load_nwb(tmp_path / "x.nwb")
    spikes = ds["spikes"].values
    # Unit 1 was observed in [0, 5.5) s only: trials 0-4 fully, trial 5 up to 5.5 s, none later.
    onsets = truth["onsets"][ds["trial"].values]
    starts = onsets[:, None] + WINDOW[0] + np.arange(30) * BIN
    inside = starts + BIN <= 5.5
    assert inside.any() and (~inside).any()
    assert np.isnan(spikes[..., 1][~inside]).all() and not np.isnan(spikes[..., 1][inside]).any()
    assert not np.isnan(np.delete(spikes, 1, axis=2)).any()
    write_nwb(tmp_path / "plain.nwb")  # the same spikes without intervals: the observed counts agree
    plain = load_nwb(tmp_path / "plain.nwb")["spikes"].values
    np.testing.assert_array_equal(spikes[..., 1][inside], plain[..., 1][inside])
    np.testing.assert_array_equal(np.delete(spikes, 1, axis=2), np.delete(plain, 1, axis=2))


def test_align_to_start_time_by_default(tmp_path):
    truth = write_nwb(tmp_path / "x.nwb")
    ds = lfads_nb.load(tmp_path / "x.nwb", bin_width=0.05, window=(0.0, 1.0))
    assert ds.sizes["time"] == 20 and ds.attrs["align_to"] == "start_time"
    first = ds["trial"].values[0]
    expected = [np.histogram(s, bins=first + np.arange(21) * 0.05)[0] for s in truth["spikes"]]
    np.testing.assert_array_equal(ds["spikes"].values[0], np.stack(expected, axis=1))


def test_nan_events_are_left_out_with_a_warning(tmp_path):
    write_nwb(tmp_path / "x.nwb", nan_onset=(0, 1))
    with pytest.warns(UserWarning, match="2 trials of x.nwb have no move_onset_time"):
        ds = load_nwb(tmp_path / "x.nwb")
    assert 0 not in ds["trial"].values and 1 not in ds["trial"].values


def test_a_model_trains_on_an_nwb_import(tmp_path):
    write_nwb(tmp_path / "x.nwb", split=False, n_trials=15)
    ds = load_nwb(tmp_path / "x.nwb")
    model = lfads_nb.build_model(ds, seed=0, ic_enc_dim=4, ci_enc_dim=4, con_dim=4, co_dim=1, ic_dim=2,
                                 gen_dim=6, fac_dim=2)
    from lfads_nb.dashboard import Progress
    result = lfads_nb.train(model, ds, lfads_nb.TrainConfig(max_epochs=1, batch_size=4), progress=Progress())
    assert np.isfinite(lfads_nb.infer(result.model, ds)["rates"].values).all()
    lfads_nb.save(ds, tmp_path / "x.nc")
    assert lfads_nb.load(tmp_path / "x.nc")["behavior"].equals(ds["behavior"])


@pytest.mark.parametrize("options, error, phrase", [
    (dict(align_to="go_cue_time"), DataError,
     r"no column 'go_cue_time' \(align_to='go_cue_time'\); its columns are \['start_time', 'stop_time', "
     r"'move_onset_time', 'condition', 'split'\]"),
    (dict(condition="direction"), DataError, r"no column 'direction' \(condition='direction'\); its columns are"),
    (dict(window=(-0.5, 0.2)), DataError,
     r"window \(-0.5, 0.2\) s around move_onset_time runs outside trials \[0, 1, 2, .*before start_time or "
     r"after stop_time\). Every trial covers \(-0.4\d*, 0.5\d*\) s"),
    (dict(window=(-0.1, 0.205)), ConfigError, "not a positive whole number of 0.01 s bins"),
    (dict(bin_width=None), ConfigError, "pass bin_width in seconds"),
    (dict(window=None), ConfigError, r"Pass window=\(start, end\)"),
    (dict(kind="emg"), ConfigError, "NWB units hold spike times"),
    (dict(sigma=2), ConfigError, r"load\(\) got \['sigma'\] for .*x.nwb, a NWB file, which takes only \['align_to'"),
])
def test_bad_options_are_clear_errors(tmp_path, options, error, phrase):
    write_nwb(tmp_path / "x.nwb")
    with pytest.raises(error, match=phrase):
        load_nwb(tmp_path / "x.nwb", **options)


@pytest.mark.parametrize("written, phrase", [
    (dict(units=False), "has no units table"),
    (dict(spike_times=False), r"units table has no 'spike_times' column \(columns \['depth'\]\)"),
    (dict(trials=False), "has no trials table"),
])
def test_bad_files_are_clear_errors(tmp_path, written, phrase):
    write_nwb(tmp_path / "x.nwb", **written)
    with pytest.raises(DataError, match=phrase):
        load_nwb(tmp_path / "x.nwb")


def test_options_of_other_formats_are_refused(tmp_path):
    ds = lfads_nb.make_dataset(np.ones((4, 3, 2), int), BIN, split_labels=["train", "train", "valid", "valid"])
    lfads_nb.save(ds, tmp_path / "x.nc")
    with pytest.raises(ConfigError, match=r"got \['align_to'\] for .*, a lfads_nb netCDF-4 file, which takes no "
                                          "options besides kind and bin_width"):
        lfads_nb.load(tmp_path / "x.nc", align_to="start_time")
