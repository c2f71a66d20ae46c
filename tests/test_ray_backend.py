"""Ray backend: pbt's own loop with the population split over Ray workers, on a local Ray instance (2 CPUs).

Reference: ``lfads_nb.tune.pbt.pbt`` itself. One worker holding every member draws the same random
numbers as one population, so its run must equal pbt's bit for bit; several workers differ only in
their noise streams and must still exploit across workers."""
import dataclasses

import numpy as np
import pytest
import ray  # the test extra installs it: CI runs this file, never skips it
import torch

import lfads_nb
from data_generators import chaotic_rnn, emg
from lfads_nb import plots
from lfads_nb.errors import ConfigError
from lfads_nb.tune.pbt import PBTConfig, pbt
from lfads_nb.tune.ray_backend import _Worker, ray_pbt
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


class Quiet:
    def epoch(self, *args):
        pass

    def generation(self, history):
        pass


def data():
    return chaotic_rnn(seed=0, n_units=12, n_bins=8, n_conditions=10, trials_per_condition=3)


def run(runner, tmp_path, ds=None, fitness_skips_artifacts=False, **options):
    pc = PBTConfig(population=4, generation_epochs=1, burn_in_epochs=1, max_generations=2, seed=3,
                   fitness_skips_artifacts=fitness_skips_artifacts)
    return runner(data() if ds is None else ds, pbt_config=pc, train_config=lfads_nb.TrainConfig(**TRAIN),
                  model_sizes=SIZES, checkpoint_dir=tmp_path, progress=Quiet(), **options)


@pytest.mark.parametrize("artifacts", [False, True], ids=["spikes", "emg-artifact-free-fitness"])
def test_one_worker_of_every_member_is_pbt_exactly(local_ray, tmp_path, artifacts):
    options = dict(ds=emg(0, n_trials=30, n_bins=12, n_channels=4, artifact_rate=4.0), fitness_skips_artifacts=True) \
        if artifacts else {}
    local = run(pbt, tmp_path / "local", **options)
    remote = run(ray_pbt, tmp_path / "ray", members_per_worker=4, **options)
    assert ("valid_recon_artifact_free" in local.history) == artifacts
    for name in local.history.data_vars:
        if name != "seconds":
            np.testing.assert_array_equal(remote.history[name].values, local.history[name].values, err_msg=name)
    assert (remote.best_generation, remote.stop_reason, remote.hparams) == \
        (local.best_generation, local.stop_reason, local.hparams)
    for name, value in local.model.state_dict().items():
        assert torch.equal(remote.model.state_dict()[name], value), name


def test_two_workers_exploit_across_workers_and_export_the_best_member(local_ray, tmp_path):
    result = run(ray_pbt, tmp_path, members_per_worker=2)
    h = result.history
    assert h.sizes == {"generation": 3, "member": 4}  # burn-in + 2 generations
    assert h["end_epoch"].values.tolist() == [1, 2, 3]
    for name, hp in DEFAULT_SPACE.items():
        assert ((h[name].values >= hp.low) & (h[name].values <= hp.high)).all(), name
    parent = h["parent"].values
    assert (parent[0] == np.arange(4)).all()
    for g in range(1, 3):  # pbt's tournament: a member copies only a better one, from any worker
        for i in np.flatnonzero(parent[g] != np.arange(4)):
            assert h["fitness"].values[g - 1, parent[g, i]] < h["fitness"].values[g - 1, i] or \
                not np.isfinite(h["fitness"].values[g - 1, i])
            assert h["lr"].values[g, i] != h["lr"].values[g - 1, parent[g, i]]  # perturbed
    g, m = np.unravel_index(np.nanargmin(h["fitness"].values), h["fitness"].shape)
    assert result.best_generation == g
    assert result.hparams["lr"] == pytest.approx(float(h["lr"].values[g, m]), rel=1e-6)
    assert isinstance(result.model, lfads_nb.LFADS)
    assert result.model.config.dropout == pytest.approx(result.hparams["dropout"])
    loaded = lfads_nb.load_model(tmp_path / "best.pt")
    for name, value in result.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert np.isfinite(lfads_nb.infer(result.model, data())["rates"].values).all()
    plots.pbt_lineage(h)  # the history plots like a local run's
    plots.pbt_hyperparameters(h)
    with pytest.raises(lfads_nb.CheckpointError, match="ray.members_per_worker"):  # pbt.pt holds one population per worker
        run(ray_pbt, tmp_path, members_per_worker=1)


def test_bad_worker_sizes():
    with pytest.raises(ConfigError, match="dividing"):
        ray_pbt(data(), pbt_config=PBTConfig(population=4), members_per_worker=3)
    with pytest.raises(ConfigError, match="dividing"):
        ray_pbt(data(), pbt_config=PBTConfig(population=4), members_per_worker=0)


def test_a_worker_refuses_a_device_it_lacks(monkeypatch):
    # Checked in the worker: the driver may run on a head without the workers' GPUs.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = dataclasses.asdict(lfads_nb.TrainConfig(**TRAIN, device="cuda"))
    with pytest.raises(ConfigError, match="no CUDA GPU is available; use device='cpu'"):
        _Worker(data(), config, [], {}, 0, 1, 2)
