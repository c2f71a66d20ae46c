"""Every registered model family (``lfads_nb.models.registry.FAMILIES``) through the same code: train,
resume, infer, score and PBT.

References: resuming is checked against the uninterrupted run of the same settings in this process
(a process killed with SIGKILL (kill -9) in the middle of an epoch resumes from its last checkpoint
and ends bit for bit where the uninterrupted run ends); inference against the data it was run on
(same trials, bins and channels); PBT's best member against its own checkpoint."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import lfads_nb
from data_generators import chaotic_rnn, chaotic_rnn_multisession
from lfads_nb.dashboard import Progress
from lfads_nb.models.registry import FAMILIES as REGISTERED
from lfads_nb.tune.pbt import pbt

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {  # family -> (data, build_model keywords, TrainConfig keywords)
    "lfads": (lambda: chaotic_rnn(seed=0, n_units=10, n_bins=12, n_conditions=4, trials_per_condition=6),
              dict(ic_enc_dim=6, ci_enc_dim=5, con_dim=5, co_dim=2, ic_dim=4, gen_dim=8, fac_dim=3),
              dict(cd_rate=0.3)),
    "ndt": (lambda: chaotic_rnn(seed=0, n_units=10, n_bins=12, n_conditions=4, trials_per_condition=6),
            dict(d_model=8, n_layers=1, n_heads=2, ff_dim=16, context_backward=2, context_forward=2),
            dict(cd_rate=0.0)),
    "stitched": (lambda: chaotic_rnn_multisession(0, n_sessions=2, units_per_session=[6, 8], shared_units=2,
                                                  n_conditions=4, trials_per_condition=[5, 4], n_bins=10),
                 dict(gen_dim=8, ic_enc_dim=6, ic_dim=4, fac_dim=3, co_dim=0),
                 dict(cd_rate=0.3)),
}
EPOCHS = 4
BATCH = 8


class Killer(Progress):
    """Silent; with ``kill_at`` it kills its own process (SIGKILL: no cleanup, no exception) at the
    ``kill_at``-th poll of ``stop_requested``, i.e. after that many training steps."""

    def __init__(self, kill_at: int | None = None):
        super().__init__()
        self.kill_at, self.polls = kill_at, 0

    @property
    def stop_requested(self) -> bool:
        self.polls += 1
        if self.polls == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return False


def run(family: str, checkpoint_dir, kill_at: int | None = None):
    data, sizes, train = FAMILIES[family]
    ds = data()
    config = lfads_nb.TrainConfig(max_epochs=EPOCHS, batch_size=BATCH, kl_ramp_epochs=2, l2_ramp_epochs=2, seed=1, **train)
    model = lfads_nb.build_model(ds, config, seed=0, model=family, **sizes)
    return lfads_nb.train(model, ds, config, checkpoint_dir=checkpoint_dir, progress=Killer(kill_at))


KILL = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    import test_families
    test_families.run({family!r}, {ckpt!r}, kill_at={kill_at})
""")


def steps_per_epoch(ds) -> int:
    """Training steps in an epoch of batch 8: every 'train' trial once, of every session."""
    sessions = [ds[name].to_dataset() for name in ds.children] if isinstance(ds, xr.DataTree) else [ds]
    return math.ceil(sum(int((s["split"] == "train").sum()) for s in sessions) / BATCH)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_killed_mid_epoch_resumes_bit_for_bit(family, tmp_path):
    whole = run(family, tmp_path / "whole")
    steps = steps_per_epoch(FAMILIES[family][0]())
    kill_at = 2 * steps + steps // 2 + 1  # in the middle of the third epoch
    script = KILL.format(root=str(ROOT), tests=str(ROOT / "tests"), family=family, ckpt=str(tmp_path / "killed"),
                         kill_at=kill_at)
    proc = subprocess.run([sys.executable, "-c", script], env={"OMP_NUM_THREADS": "1", "PATH": ""},
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    saved = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert saved["run_state"]["epoch"] == 2  # two whole epochs saved; the third was lost mid-way
    resumed = run(family, tmp_path / "killed")
    pd.testing.assert_frame_equal(resumed.history.drop(columns="epoch_seconds"),
                                  whole.history.drop(columns="epoch_seconds"))
    for name, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name


def test_every_registered_family_is_covered():
    assert set(FAMILIES) == set(REGISTERED)  # a new family adds its small case above


def scores_trials(ds):
    """The trials ``lfads_nb.score`` scores by default: the 'valid' ones."""
    return ds["trial"].values[ds["split"].values == "valid"]


def _sessions(data) -> dict:
    return {name: data[name].to_dataset() for name in data.children} if isinstance(data, xr.DataTree) else {None: data}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_trains_infers_scores_and_is_tuned_by_pbt(family, tmp_path):
    data_of, sizes, train = FAMILIES[family]
    data = data_of()
    result = run(family, tmp_path / "train")
    assert type(result.model) is REGISTERED[family].model
    loaded = lfads_nb.load_model(tmp_path / "train" / "best.pt")
    out, again = lfads_nb.infer(result.model, data), lfads_nb.infer(loaded, data)
    for name, ds in _sessions(data).items():
        inferred = out if name is None else out[name].to_dataset()
        assert inferred["rates"].shape == ds["spikes"].shape
        assert (inferred["trial"].values == ds["trial"].values).all()
        xr.testing.assert_allclose(inferred, again if name is None else again[name].to_dataset())
        scores = lfads_nb.score(inferred, ds)  # the spikes table, latents from the family's own output
        assert scores.rate_r2.item() == pytest.approx(lfads_nb.metrics.rate_r2(
            inferred["rates"].sel(trial=scores_trials(ds)), ds["rates_true"].sel(trial=scores_trials(ds))))
        assert np.isfinite(scores.rate_r2.item()) and scores.rate_r2.item() < 1
        assert np.isfinite([scores[v].item() for v in ("bits_per_spike", "latent_r2", "state_r2")]).all()
    config = lfads_nb.TrainConfig(batch_size=BATCH, kl_ramp_epochs=1, l2_ramp_epochs=1, **train)
    tuned = pbt(data, model=family, pbt_config=lfads_nb.PBTConfig(population=2, generation_epochs=1, burn_in_epochs=1,
                                                                  max_generations=1),
                train_config=config, model_sizes=sizes,
                checkpoint_dir=tmp_path / "pbt", live=False)
    assert type(tuned.model) is REGISTERED[family].model
    assert np.isfinite(tuned.history["fitness"].values).all()
    best = lfads_nb.load_model(tmp_path / "pbt" / "best.pt")
    for name, value in tuned.model.state_dict().items():
        assert torch.equal(best.state_dict()[name], value), name
