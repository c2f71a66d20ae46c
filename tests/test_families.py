"""Every model family through the same run: a process killed with SIGKILL (kill -9) in the middle
of an epoch resumes from its last checkpoint and ends bit for bit where an uninterrupted run ends
(weights and history). The reference is the uninterrupted run of the same settings in this process."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
import xarray as xr

import lfads_nb
from data_generators import chaotic_rnn, chaotic_rnn_multisession
from lfads_nb.dashboard import Progress

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {  # family -> (data, build_model keywords, TrainConfig keywords)
    "lfads": (lambda: chaotic_rnn(seed=0, n_units=10, n_bins=12, n_conditions=4, trials_per_condition=6),
              dict(ic_enc_dim=6, ci_enc_dim=5, con_dim=5, co_dim=2, ic_dim=4, gen_dim=8, fac_dim=3),
              dict(cd_rate=0.3)),
    "ndt": (lambda: chaotic_rnn(seed=0, n_units=10, n_bins=12, n_conditions=4, trials_per_condition=6),
            dict(model="ndt", d_model=8, n_layers=1, n_heads=2, ff_dim=16, context_backward=2, context_forward=2),
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
    model = lfads_nb.build_model(ds, config, seed=0, **sizes)
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
