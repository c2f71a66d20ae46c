"""Ray Tune backend: a tiny population on a local Ray instance (2 CPUs), end to end."""
import contextlib
import dataclasses
import types

import numpy as np
import pytest
import ray  # the test extra installs it: CI runs this file, never skips it
import torch

import lfads_nb
from data_generators import chaotic_rnn
from lfads_nb import plots
from lfads_nb.errors import ConfigError
from lfads_nb.training.checkpoint import save_checkpoint
from lfads_nb.tune.pbt import PBTConfig
from lfads_nb.tune.population import Population
from lfads_nb.tune.ray_backend import CHECKPOINT_FILE, _best_member, _Explore, _trial, ray_pbt
from lfads_nb.tune.search import DEFAULT_SPACE

torch.set_num_threads(1)
SIZES = dict(ic_enc_dim=6, ci_enc_dim=5, con_dim=7, ic_dim=4, gen_dim=8, fac_dim=3, co_dim=0)
TRAIN = dict(batch_size=8, kl_ramp_epochs=1, l2_ramp_epochs=1)


@pytest.fixture(scope="module")
def local_ray():
    # Ray waits a fixed 30 s for its raylet to register, which a machine busy with other work can
    # exceed ("The current node timed out during startup"): a few tries before giving up.
    for attempt in range(3):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
            break
        except Exception as error:  # ray raises a bare Exception for this
            ray.shutdown()
            if "timed out during startup" not in str(error) or attempt == 2:
                raise
    yield
    ray.shutdown()


def data():
    return chaotic_rnn(seed=0, n_units=12, n_bins=8, n_conditions=10, trials_per_condition=3)


def test_tiny_population_as_two_trials_of_two_members(local_ray, tmp_path):
    pc = PBTConfig(population=4, generation_epochs=1, burn_in_epochs=1, max_generations=2, seed=3)
    result = ray_pbt(data(), pbt_config=pc, train_config=lfads_nb.TrainConfig(**TRAIN), model_sizes=SIZES,
                     members_per_trial=2, storage_path=tmp_path, verbose=0)
    h = result.history
    assert h.sizes == {"generation": 3, "member": 4}  # burn-in + 2 generations; 2 trials x 2 members
    assert h["end_epoch"].values.tolist() == [1, 2, 3]
    for name, hp in DEFAULT_SPACE.items():
        assert ((h[name].values >= hp.low) & (h[name].values <= hp.high)).all(), name
    # generation 0 starts from the members' own weights; after it, Tune's truncation (1 of 2 trials)
    # makes the worse trial restart from the better one's checkpoint with explored hyperparameters
    assert (h["parent"].values[0] == np.arange(4)).all()
    for g in (1, 2):
        trial_best = np.nanmin(h["fitness"].values[g - 1].reshape(2, 2), axis=1)
        loser, winner = int(np.argmax(trial_best)), int(np.argmin(trial_best))
        assert h["parent"].values[g].tolist()[2 * loser:2 * loser + 2] == [2 * winner, 2 * winner + 1]
        assert h["parent"].values[g].tolist()[2 * winner:2 * winner + 2] == [2 * winner, 2 * winner + 1]
        for j in range(2):
            assert h["lr"].values[g, 2 * loser + j] != h["lr"].values[g - 1, 2 * winner + j]  # explored
            assert h["lr"].values[g, 2 * winner + j] == h["lr"].values[g - 1, 2 * winner + j]  # kept
    # the best member: an ordinary LFADS with the hyperparameters recorded for it
    g, m = np.unravel_index(np.nanargmin(h["fitness"].values), h["fitness"].shape)
    assert result.best_generation == g
    assert result.hparams["lr"] == pytest.approx(float(h["lr"].values[g, m]), rel=1e-6)
    assert isinstance(result.model, lfads_nb.LFADS)
    assert result.model.config.dropout == pytest.approx(result.hparams["dropout"])
    assert np.isfinite(lfads_nb.infer(result.model, data())["rates"].values).all()
    plots.pbt_lineage(h)  # the history plots like a local run's
    plots.pbt_hyperparameters(h)


def test_explore_keeps_every_member_in_bounds_and_moves_it():
    explore = _Explore(DEFAULT_SPACE, seed=0)
    config = {"index": 0, "members": {"0": {n: hp.high for n, hp in DEFAULT_SPACE.items()},
                                      "1": {n: (hp.low + hp.high) / 2 for n, hp in DEFAULT_SPACE.items()}}}
    before = {j: dict(m) for j, m in config["members"].items()}
    out = explore(config)
    for j, member in out["members"].items():
        for name, hp in DEFAULT_SPACE.items():
            assert hp.low <= member[name] <= hp.high
            step = abs(member[name] / before[j][name] - 1)
            assert 0.002 * hp.explore_width - 1e-9 <= step <= hp.explore_width + 1e-9


def test_bad_sub_population_sizes():
    with pytest.raises(ConfigError, match="dividing"):
        ray_pbt(data(), pbt_config=PBTConfig(population=4), members_per_trial=3)
    with pytest.raises(ConfigError, match="at least 2 trials"):
        ray_pbt(data(), pbt_config=PBTConfig(population=4), members_per_trial=4)
    with pytest.raises(ConfigError, match="exploit='none'"):  # Tune would truncate: a silently different run
        ray_pbt(data(), pbt_config=PBTConfig(population=4, exploit="none"), members_per_trial=2)


def test_a_trial_refuses_a_device_its_worker_lacks(monkeypatch):
    # Checked in the trial, on the worker: the driver may run on a head without the workers' GPUs.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    settings = {"threads": 1, "train_config": dataclasses.asdict(lfads_nb.TrainConfig(**TRAIN, device="cuda"))}
    with pytest.raises(ConfigError, match="no CUDA GPU is available; use device='cpu'"):
        _trial({"index": 0, "members": {}}, ds=data(), settings=settings)


def test_best_member_of_a_gpu_run_loads_on_a_cpu_only_head(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    members = [lfads_nb.build_model(data(), seed=s, **SIZES) for s in (0, 1)]
    model_config = members[0].config
    population = Population(members, lfads_nb.TrainConfig(**TRAIN), {})
    save_checkpoint({"population": population.state_dict()}, tmp_path / CHECKPOINT_FILE)

    class Checkpoint:
        @contextlib.contextmanager
        def as_directory(self):
            yield str(tmp_path)

    metrics = {"fitness": 0.5, "fitness_0": 0.9, "fitness_1": 0.5, "generation": 2}
    results = [types.SimpleNamespace(best_checkpoints=[(Checkpoint(), metrics)])]
    settings = {"train_config": dataclasses.asdict(lfads_nb.TrainConfig(**TRAIN, device="cuda")),
                "model_config": dataclasses.asdict(model_config)}
    model, _, generation = _best_member(results, DEFAULT_SPACE, 2, settings)
    assert generation == 2
    for name, value in population.member_model(1).state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
