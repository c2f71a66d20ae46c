"""The search space and the random search (lfads_nb.tune.search)."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from scipy.stats import kstest

import lfads_nb
from data_generators import chaotic_rnn
from lfads_nb.metrics import rate_r2, spike_echo
from lfads_nb import TrainConfig, infer
from lfads_nb.tune.hyperparameters import HYPERPARAMETERS, PER_MEMBER
from lfads_nb.tune.search import (
    DEFAULT_SPACE,
    Hyperparameter,
    SearchSpace,
    apply_point,
    random_search,
    run_scores,
)

torch.set_num_threads(1)

TINY = dict(ic_enc_dim=6, ci_enc_dim=4, con_dim=4, co_dim=1, ic_dim=4, gen_dim=8, fac_dim=3)
FAST = TrainConfig(max_epochs=2, batch_size=8, kl_ramp_epochs=1, l2_ramp_epochs=1, sv_fraction=0.2)


@pytest.fixture(scope="module")
def ds():
    return chaotic_rnn(0, input_pulses=True, n_units=8, n_conditions=4, trials_per_condition=5, n_bins=12)


@pytest.fixture(scope="module")
def search(ds):
    return random_search(ds, 3, space=DEFAULT_SPACE, model_sizes=TINY, train_config=FAST, seed=5, verbose=False)


# ---------------------------------------------------------------------------------------------
# The space
# ---------------------------------------------------------------------------------------------

def test_default_space_is_the_autolfads_space():
    # Reference section 5: (range; explore width), log scale for the L2 and KL scales only.
    expected = {
        "lr": (1e-5, 5e-3, 0.3), "dropout": (0.0, 0.6, 0.3), "cd_rate": (0.01, 0.7, 0.3),
        "l2_gen_scale": (1e-4, 1.0, 0.8), "l2_con_scale": (1e-4, 1.0, 0.8),
        "kl_co_scale": (1e-6, 1e-4, 0.8), "kl_ic_scale": (1e-6, 1e-3, 0.8),
    }
    assert {n: (hp.low, hp.high, hp.explore_width) for n, hp in DEFAULT_SPACE.items()} == expected
    assert not any(DEFAULT_SPACE[n].log for n in ("lr", "dropout", "cd_rate"))
    assert all(DEFAULT_SPACE[n].log for n in ("l2_gen_scale", "l2_con_scale", "kl_co_scale", "kl_ic_scale"))
    assert DEFAULT_SPACE["lr"].init == 4e-3 and DEFAULT_SPACE["cd_rate"].init == 0.5


def test_sampling_is_seeded_in_range_and_uniform_on_its_scale():
    points = DEFAULT_SPACE.sample(2000, seed=1)
    assert points == DEFAULT_SPACE.sample(2000, seed=1)
    assert points != DEFAULT_SPACE.sample(2000, seed=2)
    assert DEFAULT_SPACE.sample(5, seed=1) == points[:5]  # point i does not depend on n
    for name, hp in DEFAULT_SPACE.items():
        values = np.array([p[name] for p in points])
        assert values.min() >= hp.low and values.max() <= hp.high
        # Kolmogorov-Smirnov against U(0, 1) after mapping the range (in log space when log) to [0, 1].
        f = np.log if hp.log else (lambda v: v)
        unit = (f(values) - f(hp.low)) / (f(hp.high) - f(hp.low))
        assert kstest(unit, "uniform").pvalue > 1e-3, name


def test_a_value_depends_only_on_seed_model_and_name():
    # Paired searches: dropping cd_rate leaves every other sampled value as it was.
    full = DEFAULT_SPACE.sample(4, seed=3)
    without = DEFAULT_SPACE.without("cd_rate").sample(4, seed=3)
    assert without == [{k: v for k, v in p.items() if k != "cd_rate"} for p in full]
    reordered = SearchSpace(reversed(list(DEFAULT_SPACE.values()))).sample(4, seed=3)
    assert reordered == full


def test_without_drops_names():
    space = DEFAULT_SPACE.without("cd_rate", "lr")
    assert list(space) == ["dropout", "l2_gen_scale", "l2_con_scale", "kl_co_scale", "kl_ic_scale"]
    with pytest.raises(lfads_nb.ConfigError, match="not in the search space"):
        DEFAULT_SPACE.without("gen_dim")


def test_every_tunable_is_a_real_field_of_its_owner_config():
    fields = {"train": {f.name: f.type for f in dataclasses.fields(TrainConfig)},
              "model": {f.name: f.type for f in dataclasses.fields(lfads_nb.LFADSConfig)}}
    for name, tunable in HYPERPARAMETERS.items():
        assert fields[tunable.owner].get(name) == "float", name
    assert "sv_fraction" not in HYPERPARAMETERS  # it defines the metric models are compared by
    assert set(PER_MEMBER) == {"lr", "grad_clip", "dropout", "cd_rate", "kl_ic_scale", "kl_co_scale",
                               "l2_gen_scale", "l2_con_scale", "shift_std"}


def test_apply_point_sends_each_value_to_its_config():
    base = TrainConfig(max_epochs=7)
    config, sizes = apply_point({"lr": 1e-3, "dropout": 0.25, "cd_rate": 0.4}, base, {"gen_dim": 16})
    assert (config.lr, config.cd_rate, config.max_epochs) == (1e-3, 0.4, 7)
    assert sizes == {"gen_dim": 16, "dropout": 0.25}
    assert base.lr == TrainConfig().lr  # the template is not changed


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Hyperparameter("gen_dim", 8, 64), "not tunable"),
        (lambda: Hyperparameter("sv_fraction", 0.1, 0.2, log=False), "not tunable"),
        (lambda: Hyperparameter("lr", 1e-2, 1e-3), "below high"),
        (lambda: Hyperparameter("dropout", 0.0, 0.5, log=True), "log-scale"),
        (lambda: Hyperparameter("lr", 1e-4, math.inf), "finite"),
        (lambda: Hyperparameter("cd_rate", 0.1, 1.0, log=False), "cd_rate must be in"),
        (lambda: Hyperparameter("dropout", -0.1, 0.5, log=False), "dropout"),
        (lambda: Hyperparameter("lr", 1e-4, 1e-3, init=1e-2), "outside"),
        (lambda: Hyperparameter("lr", 1e-4, 1e-3, explore_width=1.5), "explore_width"),
        (lambda: SearchSpace([Hyperparameter("lr", 1e-4, 1e-3)] * 2), "twice"),
        (lambda: SearchSpace([]), "empty"),
        (lambda: SearchSpace([("lr", 1e-4, 1e-3)]), "Hyperparameter objects"),
        (lambda: DEFAULT_SPACE.sample(0), "positive integer"),
        (lambda: DEFAULT_SPACE.sample(3, seed=-1), "non-negative integer"),
        (lambda: apply_point({"gen_dim": 3}), "not tunable"),
        (lambda: apply_point({"lr": 1e-3}, TrainConfig(), {"gen_dims": 3}), "not an LFADSConfig field"),
        (lambda: apply_point({"dropout": 1.2}), "dropout"),
    ],
)
def test_bad_space_is_a_config_error(make, match):
    with pytest.raises(lfads_nb.ConfigError, match=match):
        make()


def test_bad_search_arguments_fail_before_training(ds):
    with pytest.raises(lfads_nb.ConfigError, match="SearchSpace"):
        random_search(ds, 2, space={"lr": (1e-4, 1e-3)}, verbose=False)
    with pytest.raises(lfads_nb.ConfigError, match="not an LFADSConfig field"):
        random_search(ds, 2, model_sizes={"hidden": 3}, verbose=False)
    with pytest.raises(lfads_nb.DataError, match="no training trials"):
        random_search(ds.assign_coords(split=("trial", ["valid"] * ds.sizes["trial"])), 2, verbose=False)


# ---------------------------------------------------------------------------------------------
# The random search
# ---------------------------------------------------------------------------------------------

def test_search_returns_the_documented_table(ds, search):
    table = search.table
    assert dict(table.sizes) == {"model": 3} and list(table["model"].values) == [0, 1, 2]
    variables = set(DEFAULT_SPACE) | {"valid_nll", "sv_nll", "rate_r2", "spike_echo", "best_epoch", "epochs",
                                      "stop_reason", "train_seconds", "model_seed"}
    assert set(table.data_vars) == variables
    points = DEFAULT_SPACE.sample(3, seed=5)
    for i, (point, run) in enumerate(zip(points, search.runs)):
        for name, value in point.items():
            assert table[name].values[i] == value
        # The model was built and trained at this point.
        assert run.model.config.dropout == pytest.approx(point["dropout"])
        assert run.model.config.gen_dim == TINY["gen_dim"]
        h = run.history
        assert table["epochs"].values[i] == len(h) == FAST.max_epochs
        assert table["stop_reason"].values[i] == run.stop_reason == "max_epochs"
        best = int(table["best_epoch"].values[i])
        assert best == run.best_epoch == int(h["valid_recon"].idxmin())
        assert table["valid_nll"].values[i] == h["valid_recon"][best]
        assert table["sv_nll"].values[i] == h["valid_sv_nll"][best]
    assert np.isfinite(table["rate_r2"]).all() and (table["train_seconds"] > 0).all()
    assert json.loads(table.attrs["model_sizes"]) == TINY
    assert json.loads(table.attrs["train_config"]) == dataclasses.asdict(FAST)
    assert set(json.loads(table.attrs["space"])) == set(DEFAULT_SPACE)


def test_rate_r2_is_that_of_the_validation_trials(ds, search):
    # Reference: lfads_nb.metrics.rate_r2 of the posterior-mean rates of the 'valid' trials.
    valid = lfads_nb.split(ds, "valid")
    for i, run in enumerate(search.runs):
        assert search.table["rate_r2"].values[i] == pytest.approx(rate_r2(infer(run.model, valid)["rates"], valid["rates_true"]))
        rates = infer(run.model, valid)["rates"]
        assert search.table["spike_echo"].values[i] == pytest.approx(float(spike_echo(rates, valid, lags=[0])[0]))
    no_truth = run_scores(search.runs[0], ds.drop_vars("rates_true"))
    assert math.isnan(no_truth["rate_r2"]) and math.isnan(no_truth["spike_echo"])


def test_spike_echo_recovers_a_planted_copy(ds):
    # Closed form: rates = truth + c * (spikes - truth) shifted by `lag` bins has echo(lag) = c
    # exactly (the slope of a noiseless linear relation), and echo elsewhere ~ 0 (independent noise).
    dt, c = ds.attrs["bin_width"], 0.3
    truth = ds["rates_true"]
    noise = ds["spikes"] - truth * dt
    for lag in (0, 2):
        copied = truth + c * noise.shift(time=lag).fillna(0.0) / dt
        echo = spike_echo(copied, ds, lags=range(-3, 4))
        assert echo.sel(lag=lag).item() == pytest.approx(c, rel=1e-9)
        assert np.abs(echo.drop_sel(lag=lag)).max() < 0.05
    assert spike_echo(truth, ds, lags=[0]).item() == 0.0
    # Trials are matched by id, not position.
    shuffled = truth.isel(trial=np.random.default_rng(0).permutation(ds.sizes["trial"]))
    xr.testing.assert_equal(spike_echo(shuffled, ds), spike_echo(truth, ds))
    with pytest.raises(lfads_nb.DataError, match="rates_true"):
        spike_echo(truth, ds.drop_vars("rates_true"))
    with pytest.raises(lfads_nb.ConfigError, match="lags"):
        spike_echo(truth, ds, lags=[ds.sizes["time"]])


def test_same_seed_reproduces_the_table_and_another_seed_does_not(ds, search):
    again = random_search(ds, 3, space=DEFAULT_SPACE, model_sizes=TINY, train_config=FAST, seed=5, verbose=False)
    xr.testing.assert_identical(search.table.drop_vars("train_seconds"), again.table.drop_vars("train_seconds"))
    other = random_search(ds, 1, space=DEFAULT_SPACE, model_sizes=TINY, train_config=FAST, seed=6, verbose=False)
    assert other.table["lr"].values[0] != search.table["lr"].values[0]
    assert other.table["valid_nll"].values[0] != search.table["valid_nll"].values[0]


def test_table_round_trips_through_netcdf(search, tmp_path):
    path = tmp_path / "search.nc"
    search.table.to_netcdf(path)
    xr.testing.assert_identical(xr.load_dataset(path), search.table)


def test_progress_prints_one_line_per_model(ds, capsys):
    space = SearchSpace([Hyperparameter("lr", 1e-3, 5e-3)])
    result = random_search(ds, 2, space=space, model_sizes=TINY, train_config=FAST, seed=0)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("model 0 (1 of 2): lr ") and "R2" in lines[1]
    assert list(result.table.data_vars)[0] == "lr"


def test_a_diverged_model_keeps_its_best_epoch_and_the_search_goes_on(ds, monkeypatch):
    # Model 0 diverges after one good epoch (NaN weights from then on), model 1 in its first
    # epoch; model 2 trains normally.
    from lfads_nb.tune import search as search_module
    real_train, calls = search_module.train, []

    def flaky_train(model, data, config, **kw):
        calls.append(config.seed)
        if len(calls) == 3:
            return real_train(model, data, config, **kw)
        good = real_train(model, data, dataclasses.replace(config, max_epochs=1), **kw) if len(calls) == 1 else None
        err = lfads_nb.TrainingDiverged("loss became NaN")
        err.result = good or lfads_nb.TrainResult(model.eval(), pd.DataFrame(), -1, "diverged")
        if good:
            err.result.stop_reason = "diverged"
        raise err

    monkeypatch.setattr(search_module, "train", flaky_train)
    result = random_search(ds, 3, model_sizes=TINY, train_config=FAST, seed=5, verbose=True)
    table = result.table
    assert list(table["stop_reason"].values) == ["diverged", "diverged", "max_epochs"]
    assert table["best_epoch"].values[0] == 0 and np.isfinite(table["rate_r2"].values[0])
    assert table["best_epoch"].values[1] == -1 and np.isnan(table[["valid_nll", "rate_r2"]].to_array()[:, 1]).all()
    assert np.isfinite(table["valid_nll"].values[2])
