"""Population-based training: exploit / perturb rules, a tiny run end to end, export, kill and resume."""
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import lfads_nb
from data_generators import chaotic_rnn
from lfads_nb.errors import ConfigError
from lfads_nb.tune import pbt as pbt_module
from lfads_nb.tune.pbt import PBTConfig, check_population_fits, exploit, pbt, perturb
from lfads_nb.tune.search import DEFAULT_SPACE, Hyperparameter, SearchSpace

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
SIZES = dict(ic_enc_dim=6, ci_enc_dim=5, con_dim=7, ic_dim=4, gen_dim=8, fac_dim=3, co_dim=0)
TRAIN = dict(batch_size=8, kl_ramp_epochs=2, l2_ramp_epochs=2, sv_fraction=0.1)


def _data():
    return chaotic_rnn(seed=0, n_units=12, n_bins=8, n_conditions=10, trials_per_condition=3)


def _run(tmp_path=None, **pbt_kw):
    pc = PBTConfig(**{"population": 4, "generation_epochs": 2, "max_generations": 3, "seed": 1, **pbt_kw})
    return pbt(_data(), pbt_config=pc, train_config=lfads_nb.TrainConfig(**TRAIN), model_sizes=SIZES,
               checkpoint_dir=tmp_path, progress=_Quiet())


class _Quiet:
    def epoch(self, generation, epoch, metrics):
        pass

    def generation(self, history):
        pass


def test_tournament_loser_copies_winner_and_nan_is_always_replaced():
    fitness = np.array([1.0, 2.0, 0.5, np.nan, 3.0, 0.7])
    for seed in range(20):
        parent = exploit(fitness, "tournament", torch.Generator().manual_seed(seed))
        assert parent[3] != 3 and np.isfinite(fitness[parent[3]])  # the diverged member is replaced
        for i, p in enumerate(parent):
            if p != i and i != 3:
                assert fitness[p] < fitness[i]  # only ever copies a better member
                assert parent[p] == p  # a winner keeps its own weights
        copied = sum(parent[i] != i for i in range(6) if i != 3)
        assert copied == 2  # three pairs, one of which holds the NaN member: two finite losers
    with pytest.raises(lfads_nb.TrainingDiverged, match="Every member"):
        exploit(np.array([np.nan, np.inf]), "tournament", torch.Generator())


def test_truncation_bottom_copies_top():
    fitness = np.arange(10, dtype=float)  # member 0 best, 9 worst
    parent = exploit(fitness, "truncation", torch.Generator().manual_seed(0), truncation_fraction=0.2)
    assert set(np.flatnonzero(parent != np.arange(10))) == {8, 9}
    assert set(parent[[8, 9]]) <= {0, 1}


def test_exploit_none_keeps_every_member_and_its_hyperparameters():
    assert (exploit(np.array([1.0, np.nan, 0.5]), "none", torch.Generator()) == [0, 1, 2]).all()
    run = _run(max_generations=2, exploit="none")
    h = run.history
    assert (h["parent"] == h["member"]).all()  # nobody copied ...
    for name in DEFAULT_SPACE:  # ... nor explored: every member keeps its starting values
        assert (h[name] == h[name].isel(generation=0)).all(), name
    best = np.unravel_index(np.nanargmin(h["fitness"].values), h["fitness"].shape)
    assert run.best_generation == best[0]
    assert run.hparams["dropout"] == pytest.approx(float(h["dropout"].isel(generation=0, member=best[1])))


def test_perturb_is_a_bounded_multiplicative_step():
    g = torch.Generator().manual_seed(0)
    w = 0.3
    factors = np.array([perturb(1.0, 1e-3, 1e3, w, g) for _ in range(2000)])
    steps = np.abs(factors - 1)
    assert steps.min() >= 0.002 * w - 1e-12 and steps.max() <= w + 1e-12
    assert 0.4 < (factors > 1).mean() < 0.6  # up and down equally often
    near_bound = [perturb(0.99, 0.0, 1.0, 0.3, g) for _ in range(200)]
    assert max(near_bound) <= 1.0 and min(near_bound) >= 0.99 * 0.7


def test_pbt_runs_records_history_and_exports_best_member(tmp_path):
    result = _run(tmp_path)
    h = result.history
    assert h.sizes == {"generation": 4, "member": 4}  # burn-in + 3 generations
    assert result.stop_reason == "max_generations"
    for name in DEFAULT_SPACE:
        assert h[name].dims == ("generation", "member")
        lo, hi = DEFAULT_SPACE[name].low, DEFAULT_SPACE[name].high
        assert (h[name].values >= lo).all() and (h[name].values <= hi).all()
    assert (h["end_epoch"].values == [2, 4, 6, 8]).all()
    # a member that copied started the generation with its parent's smoothed lineage and new HPs
    parent = h["parent"].values
    assert (parent[0] == np.arange(4)).all()
    for g in range(1, 4):
        for i in np.flatnonzero(parent[g] != np.arange(4)):
            assert h["fitness"].values[g - 1, parent[g, i]] < h["fitness"].values[g - 1, i] or \
                not np.isfinite(h["fitness"].values[g - 1, i])
            assert h["lr"].values[g, i] != h["lr"].values[g - 1, parent[g, i]]  # perturbed
    best = float(np.nanmin(h["fitness"].values))
    assert best == pytest.approx(float(np.nanmin(h["fitness"].values[result.best_generation])))
    # the best member is an ordinary LFADS: its state dict loads into a fresh one and infer works
    config = lfads_nb.LFADSConfig(**{**result.model.config.__dict__})
    fresh = lfads_nb.LFADS(config)
    fresh.load_state_dict(result.model.state_dict())
    assert config.dropout == pytest.approx(result.hparams["dropout"])
    out = lfads_nb.infer(fresh, _data())
    assert np.isfinite(out["rates"].values).all()
    loaded = lfads_nb.load_model(tmp_path / "best.pt")  # training's checkpoint format
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, result.model.state_dict()[k])
    torch.load(tmp_path / "pbt.pt", weights_only=True)


def test_plateau_stops_the_run():
    result = _run(stop_improvement=1.0, stop_patience=1, max_generations=10)
    assert result.stop_reason == "plateau" and result.history.sizes["generation"] == 3


KILL = textwrap.dedent("""
    import os, sys, torch
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    import test_pbt

    class Killer(test_pbt._Quiet):
        def epoch(self, generation, epoch, metrics):
            if generation == 2 and epoch == 5:  # mid-generation 2 (epochs 5-6)
                os._exit(3)

    test_pbt._Quiet = Killer
    test_pbt._run({ckpt!r})
""")


def test_killed_run_resumes_and_equals_uninterrupted(tmp_path):
    script = KILL.format(root=str(ROOT), tests=str(ROOT / "tests"), ckpt=str(tmp_path / "killed"))
    proc = subprocess.run([sys.executable, "-c", script], env={"OMP_NUM_THREADS": "1", "PATH": ""},
                          capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    saved = torch.load(tmp_path / "killed" / "pbt.pt", weights_only=True)
    assert saved["run_state"]["generation"] == 2  # generations 0 and 1 survived; 2 is lost
    resumed = _run(tmp_path / "killed")
    whole = _run(tmp_path / "whole")
    assert resumed.stop_reason == whole.stop_reason
    for name in whole.history.data_vars:
        if name != "seconds":
            np.testing.assert_array_equal(resumed.history[name].values, whole.history[name].values, err_msg=name)
    for k, v in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v)


def test_bad_settings_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot differ"):
        pbt(_data(), space=SearchSpace([Hyperparameter("lr_decay", 0.5, 0.99, log=False)]))
    with pytest.raises(ConfigError, match="at least 2"):
        PBTConfig(population=1)
    member = lfads_nb.LFADS(lfads_nb.LFADSConfig(n_neurons=50))
    with pytest.raises(ConfigError, match=r"at most \d+ members fit"):
        check_population_fits(member, 64, 32, 100, "cpu", available_bytes=2**30)
    check_population_fits(member, 2, 32, 100, "cpu", available_bytes=2**30)
    _run(tmp_path, max_generations=1)
    with pytest.raises(lfads_nb.CheckpointError, match="different settings"):
        _run(tmp_path, max_generations=1, exploit="truncation")


def test_a_gpu_config_is_refused_when_the_run_starts(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = lfads_nb.TrainConfig(**TRAIN, device="cuda")  # constructs: nothing is probed yet
    with pytest.raises(ConfigError, match="no CUDA GPU is available; use device='cpu'"):
        pbt(_data(), train_config=config, model_sizes=SIZES, progress=_Quiet())



def _hide_free_memory(monkeypatch, tmp_path):
    """A platform whose free memory no source gives: no psutil, no /proc/meminfo, no os.sysconf."""
    monkeypatch.setitem(sys.modules, "psutil", None)  # `import psutil` raises ImportError
    monkeypatch.setattr(pbt_module, "_MEMINFO", str(tmp_path / "no_meminfo"))
    monkeypatch.delattr(os, "sysconf", raising=False)


@pytest.mark.parametrize("platform", ["windows", "macos"])
def test_memory_check_is_skipped_where_free_memory_is_unknown(monkeypatch, tmp_path, platform):
    _hide_free_memory(monkeypatch, tmp_path)
    if platform == "macos":  # sysconf exists but has no free page count
        def sysconf(name):
            if name == "SC_AVPHYS_PAGES":
                raise ValueError("unrecognized configuration name")
            return 4096
        monkeypatch.setattr(os, "sysconf", sysconf, raising=False)
    assert pbt_module._available_bytes("cpu") is None
    check_population_fits(lfads_nb.LFADS(lfads_nb.LFADSConfig(n_neurons=50)), 10**6, 32, 100, "cpu")  # not checked


@pytest.mark.parametrize("source", ["psutil", "meminfo", "sysconf"])
def test_known_free_memory_still_limits_the_population(monkeypatch, tmp_path, source):
    _hide_free_memory(monkeypatch, tmp_path)
    if source == "psutil":
        fake = types.SimpleNamespace(virtual_memory=lambda: types.SimpleNamespace(available=2**30))
        monkeypatch.setitem(sys.modules, "psutil", fake)
    elif source == "meminfo":
        (tmp_path / "meminfo").write_text("MemTotal:  4194304 kB\nMemFree:  10 kB\nMemAvailable:  1048576 kB\n")
        monkeypatch.setattr(pbt_module, "_MEMINFO", str(tmp_path / "meminfo"))
    else:
        monkeypatch.setattr(os, "sysconf", {"SC_PAGE_SIZE": 4096, "SC_AVPHYS_PAGES": 2**18}.get, raising=False)
    assert pbt_module._available_bytes("cpu") == 2**30
    member = lfads_nb.LFADS(lfads_nb.LFADSConfig(n_neurons=50))
    with pytest.raises(ConfigError, match=r"about 1.0 GiB is free: at most \d+ members fit"):
        check_population_fits(member, 64, 32, 100, "cpu")
    check_population_fits(member, 2, 32, 100, "cpu")

def test_data_without_usable_validation_trials_is_refused():
    ds = _data()
    config = lfads_nb.TrainConfig(**TRAIN)
    with pytest.raises(lfads_nb.DataError, match="no validation trials.*PBT judges members"):
        pbt(ds.assign_coords(split=("trial", ["train"] * ds.sizes["trial"])), train_config=config)
    blind = ds.assign(spikes=ds["spikes"].astype(float).where(ds["split"] == "train"))
    with pytest.raises(lfads_nb.DataError, match="Every entry of the validation trials is NaN"):
        pbt(blind, train_config=config)


def test_members_start_from_the_data_like_build_model(monkeypatch):
    # Reference: build_model's data-dependent start (Poisson readout bias = log mean count per bin
    # of each neuron on the training trials, sample-validation entries left out). At e3f4447 PBT
    # built its members fresh, so every member started at bias 0 (one spike per bin).
    started = []

    class Spy(pbt_module.Population):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            started.append(self.model.weights.observation.readout.bias.detach().clone())

    monkeypatch.setattr(pbt_module, "Population", Spy)
    _run(max_generations=1)
    ds = _data()
    spikes = ds["spikes"].values.astype(float)
    keep = lfads_nb.data.sample_validation_mask(ds, TRAIN["sv_fraction"], 0)
    spikes[~keep] = np.nan
    train = spikes[ds["split"].values == "train"]
    want = torch.log(torch.as_tensor(np.nanmean(train, axis=(0, 1))).clamp_min(1e-4)).float()
    (bias,) = started
    assert bias.shape == (4, ds.sizes["neuron"])
    for member in bias:
        torch.testing.assert_close(member, want)
