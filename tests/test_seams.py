"""The seams the extensions plug into: the model protocol and its registry (a non-LFADS model,
registered as one more family, trains, resumes, infers and is tuned by PBT with the same loop,
checkpoints and inference), the dynamics seam (a generator with a step runs on the
decoder's loop), the session seam (read-in of the held-in channels) and the public transforms."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import lfads_nb
from lfads_nb import transforms
from lfads_nb.dashboard import Progress
from lfads_nb.errors import DataError
from lfads_nb.models.lfads import LFADS, LFADSConfig
from lfads_nb import TrainConfig, build_model, infer, train
from lfads_nb.models import registry
from lfads_nb.tune.search import Hyperparameter, SearchSpace

torch.set_num_threads(1)
SMALL = dict(ic_enc_dim=6, ci_enc_dim=5, con_dim=7, ic_dim=4, gen_dim=8, fac_dim=3)


def dataset(n_trials=16, n_bins=50, n_neurons=5, seed=0):
    rng = np.random.default_rng(seed)
    rates = rng.uniform(20, 100, (n_trials, 1, n_neurons)) * np.ones((1, n_bins, 1))  # Hz, constant per trial
    labels = np.where(np.arange(n_trials) % 4 == 0, "valid", "train")
    return lfads_nb.make_dataset(rng.poisson(rates * 0.01), 0.01, split_labels=labels, rates_true=rates)


# ---- the model protocol ------------------------------------------------------------------------


@dataclasses.dataclass
class TrialGainConfig:
    n_neurons: int


class TrialGain(nn.Module):
    """Not LFADS: log rate = bias + gain * (the trial's mean encoder input), per neuron."""

    output_dims = {"log_rate": ("trial", "time", "neuron")}

    def __init__(self, config: TrialGainConfig):
        super().__init__()
        self.config = config
        self.bias = nn.Parameter(torch.full((config.n_neurons,), -2.0))
        self.gain = nn.Parameter(torch.zeros(config.n_neurons))

    def _log_rate(self, batch):
        x = transforms.encoder_input(batch)
        return (self.bias + self.gain * x.mean(-2, keepdim=True)).expand(x.shape)

    def _nll(self, batch):
        log_rate = self._log_rate(batch)
        return torch.exp(log_rate) - batch.target * log_rate + torch.lgamma(batch.target + 1)

    def loss(self, batch, weights, **_):
        recon = transforms.masked_mean(self._nll(batch), batch.loss_mask)
        return recon, {"train_recon": recon}

    def entry_nll(self, batch):
        return self._nll(batch)

    def infer_batch(self, batch, *, sample):
        log_rate = self._log_rate(batch)
        return {"mean": torch.exp(log_rate), "log_rate": log_rate}

    def check_data(self, ds):
        if ds.sizes["neuron"] != self.config.n_neurons:
            raise DataError("wrong number of neurons")

    def check_training(self, train_config):
        pass


@pytest.fixture
def trial_gain(monkeypatch):
    """TrialGain registered as a family: one entry, nothing else changed."""
    family = registry.Family(
        "trial_gain", "trial_gain", TrialGain, TrialGainConfig, None, {}, (),
        draw_noise=lambda config, B, T, **options: None, memory_floats=lambda config: 4 * config.n_neurons,
        build=lambda ds, train_config, seed=None: TrialGain(TrialGainConfig(ds.sizes["neuron"])))
    monkeypatch.setitem(registry.FAMILIES, "trial_gain", family)
    return family


def test_a_non_lfads_model_trains_resumes_and_infers_through_the_protocol(tmp_path, trial_gain):
    ds = dataset()
    config = TrainConfig(max_epochs=3, batch_size=4, lr=0.05, cd_rate=0.0, kl_ramp_epochs=0, l2_ramp_epochs=0)
    torch.manual_seed(0)
    model = build_model(ds, model="trial_gain")
    assert isinstance(model, TrialGain)
    first = train(model, ds, config, checkpoint_dir=tmp_path, progress=Progress())
    assert len(first.history) == 3 and first.history["train_loss"].is_monotonic_decreasing
    more = train(TrialGain(TrialGainConfig(5)), ds, dataclasses.replace(config, max_epochs=30), checkpoint_dir=tmp_path,
                 progress=Progress())
    assert more.history["epoch"].tolist() == list(range(30))  # resumed from the checkpoint, not restarted
    pd.testing.assert_frame_equal(more.history.iloc[:3].drop(columns="epoch_seconds"),
                                  first.history.drop(columns="epoch_seconds"))
    out = infer(more.model, ds)
    assert out["rates"].attrs["units"] == "Hz" and out["log_rate"].dims == ("trial", "time", "neuron")
    np.testing.assert_allclose(out["rates"].values, np.exp(out["log_rate"].values) / 0.01, rtol=1e-5)
    # it learned the trial-by-trial rate from the encoder input, which a constant rate cannot
    r2 = lfads_nb.metrics.rate_r2(out["rates"], ds["rates_true"])
    assert float(r2) > 0.5
    assert isinstance(lfads_nb.load_model(tmp_path / "best.pt"), TrialGain)  # the checkpoint names its family


def test_a_registered_family_is_tuned_by_pbt_with_its_table(trial_gain):
    class Quiet:
        def epoch(self, *args):
            pass

        def generation(self, history):
            pass

    space = SearchSpace([Hyperparameter("lr", 1e-3, 0.1, init=0.05, log=True)])
    result = lfads_nb.tune.pbt.pbt(dataset(), model="trial_gain", space=space, progress=Quiet(),
                                   pbt_config=lfads_nb.PBTConfig(population=2, generation_epochs=1, burn_in_epochs=1,
                                                                 max_generations=1),
                                   train_config=TrainConfig(batch_size=4, cd_rate=0.0))
    assert isinstance(result.model, TrialGain) and result.history.sizes == {"generation": 2, "member": 2}
    assert np.isfinite(result.history["fitness"].values).all()


# ---- the dynamics seam -------------------------------------------------------------------------


class LeakyLinear(nn.Module):
    """A generator that is not a GRU: g_t = 0.9 g_{t-1} + W inputs_t (not fusable)."""

    fusable = False

    def __init__(self, inputs, gen_dim):
        super().__init__()
        self.w = nn.Linear(inputs, gen_dim)
        self.weight_hh = nn.Parameter(torch.eye(gen_dim))  # for the L2 penalty

    def step(self, g, inputs):
        return 0.9 * (g @ self.weight_hh.T) + self.w(inputs)


@pytest.mark.parametrize("co_dim", [0, 2])
def test_a_generator_with_a_step_runs_on_the_loop_even_when_fused(co_dim):
    torch.manual_seed(0)
    model = LFADS(LFADSConfig(n_neurons=5, co_dim=co_dim, ext_input_dim=1, **SMALL)).eval()
    assert model.fused
    model.generator = LeakyLinear(co_dim + 1, SMALL["gen_dim"])
    x, ext = torch.rand(3, 6, 5), torch.randn(3, 6, 1)
    out = model(x, ext, sample=False)
    g = model.ic_to_g0(out.ic_mean)  # the recurrence by hand from the model's own outputs
    for t in range(6):
        g = model.generator.step(g, torch.cat([out.inputs[:, t], ext[:, t]], dim=-1))
        torch.testing.assert_close(out.gen_states[:, t], g)


# ---- the session seam --------------------------------------------------------------------------


def test_the_read_in_is_the_sessions_held_in_neurons():
    ds = dataset().assign_coords(heldout=("neuron", [False, True, False, False, True]))
    model = build_model(ds, co_dim=0, **SMALL)
    assert model.config.encod_dim == 3 and model.session.read_in.index.tolist() == [0, 2, 3]
    x = torch.arange(5.0).expand(1, 1, 5)
    assert model.session.read_in(x).tolist() == [[[0.0, 2.0, 3.0]]]
    other = ds.assign_coords(heldout=("neuron", [True, False, False, False, True]))  # same count, other neurons
    with pytest.raises(DataError, match="held in"):
        infer(model, other)


def test_log1p_encoder_input_changes_what_the_encoders_read_not_what_the_loss_scores():
    """With ``log1p_encoder_input`` the model on counts x is the plain model (same weights) with
    log(1 + x) at its encoders and x still as the likelihood's target."""
    torch.manual_seed(0)
    logged = LFADS(LFADSConfig(n_neurons=5, co_dim=0, log1p_encoder_input=True, **SMALL)).eval()
    plain = LFADS(LFADSConfig(n_neurons=5, co_dim=0, **SMALL)).eval()
    plain.load_state_dict(logged.state_dict())
    counts = torch.poisson(torch.full((3, 6, 5), 40.0))
    heldin = torch.ones(5, dtype=torch.bool)
    batch = transforms.make_batch(counts, heldin)
    seen_as_log = transforms.make_batch(torch.log1p(counts), heldin)._replace(target=counts)
    torch.testing.assert_close(logged.entry_nll(batch), plain.entry_nll(seen_as_log))
    assert not torch.allclose(logged.entry_nll(batch), plain.entry_nll(batch))
    with pytest.raises(lfads_nb.ConfigError, match="log1p_encoder_input"):
        LFADSConfig(n_neurons=5, log1p_encoder_input="yes")


# ---- the transforms ----------------------------------------------------------------------------


def test_transforms_in_their_documented_order():
    data = torch.tensor([[[1.0, float("nan"), 3.0, 4.0]]])  # (B=1, T=1, N=4), neuron 1 unobserved
    heldin = torch.tensor([True, True, True, False])
    batch = transforms.sbtt(transforms.make_batch(data, heldin))
    assert batch.encoder_mask.tolist() == [[[True, False, True, True]]] and batch.target[0, 0, 1] == 0
    keep = torch.tensor([[[True, True, False, True]]])
    batch = transforms.sample_validation(batch, keep, 0.25)
    assert batch.heldout.tolist() == [[[False, False, True, False]]]
    assert batch.loss_mask.tolist() == [[[True, False, False, True]]]
    # per-member CD rates (P = 2): member 0 hides nothing (rate 0), member 1 hides entry 0
    rates = torch.tensor([0.0, 0.5]).view(2, 1, 1, 1)
    uniforms = torch.tensor([0.1, 0.9, 0.9, 0.9]).expand(2, 1, 1, 4)
    cd = transforms.coordinated_dropout(batch, rates, uniforms)
    assert cd.encoder_mask.shape == (2, 1, 1, 4)
    assert cd.encoder_mask[0].tolist() == batch.encoder_mask.tolist()
    assert cd.encoder_mask[1].tolist() == [[[False, False, False, True]]]
    # member 1 counts the entry it hid (0) and the held-out neuron (3), not the shown ones
    assert cd.loss_mask[1].tolist() == [[[True, False, False, True]]]
    assert cd.loss_mask[0].tolist() == batch.loss_mask.tolist()
    x = transforms.encoder_input(cd)
    torch.testing.assert_close(x[1], torch.tensor([[[0.0, 0.0, 0.0, 4.0 / 0.75 / 0.5]]]))
