"""Coordinated dropout (CD) and sample validation (SV) in lfads_nb.training.

The rules checked are those of the reference, section 4 (Keshtkaran & Pandarinath 2019):
CD draws a fresh (trial, time, neuron) mask every step, the encoder sees x * keep / (1 - rate),
the reconstruction loss back-propagates only through the dropped entries, and CD is off at
validation and inference. SV holds out one fixed, seeded set of entries in every split; they
are zero at the encoder (the rest rescaled), never in the training loss, and their NLL is the
``valid_sv_nll`` metric, usable for model selection.

Most tests use data whose every entry holds at least one spike, so an entry the encoder did
not see is exactly an entry whose encoder input is 0.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import poisson

import lfads_nb
from lfads_nb.dashboard import Progress
from lfads_nb import build_model
from lfads_nb.data import sample_validation_mask
from lfads_nb.models.registry import LFADS_LOSS_WEIGHTS
from lfads_nb.training import TrainConfig, infer, make_feed, train
from lfads_nb.training.loop import loss_weights, validation_metrics

torch.set_num_threads(1)

TINY = dict(ic_enc_dim=8, ci_enc_dim=6, con_dim=6, co_dim=2, ic_dim=4, gen_dim=10, fac_dim=3, dropout=0.0)
BIN = 0.01


def positive_dataset(n_trials=16, n_time=12, n_neurons=6, seed=0, heldout=0):
    """Counts >= 1 everywhere (1 + Poisson), a quarter of the trials 'valid'."""
    rng = np.random.default_rng(seed)
    rates = rng.uniform(50, 300, (n_trials, n_time, n_neurons))  # Hz
    spikes = 1 + rng.poisson(rates * BIN)
    labels = np.where(np.arange(n_trials) % 4 == 0, "valid", "train")
    ds = lfads_nb.make_dataset(spikes, BIN, split_labels=labels, condition=np.zeros(n_trials, int), rates_true=rates)
    if heldout:
        ds = ds.assign_coords(heldout=("neuron", np.arange(n_neurons) >= n_neurons - heldout))
    return ds


def config(**kw):
    # CD off (the TrainConfig default is 0.3) unless a test turns it on, so SV's entries are the only hidden ones.
    base = dict(max_epochs=2, batch_size=4, kl_ramp_epochs=1, l2_ramp_epochs=1, seed=1, cd_rate=0.0)
    base.update(kw)
    return TrainConfig(**base)


class Spy:
    """Wraps model.forward: records each call's encoder input and keeps obs_params' gradient."""

    def __init__(self, model):
        self.inputs, self.outputs, self.training = [], [], []
        real = model.forward

        def forward(encoder_input, ext_input=None, **kw):
            out = real(encoder_input, ext_input, **kw)
            if out.obs_params.requires_grad:
                out.obs_params.retain_grad()
            self.inputs.append(encoder_input.detach().clone())
            self.outputs.append(out)
            self.training.append(model.training)
            return out

        model.forward = forward


def one_step(ds, cfg, idx, seed=0):
    """The recon loss of one training batch, back-propagated; returns (spy, x of the batch)."""
    torch.manual_seed(0)
    model = build_model(ds, **TINY)
    spy = Spy(model)
    feed = make_feed(ds, cfg)
    torch.manual_seed(seed)
    _, parts = model.loss(feed.draw_training_batch({None: idx}, cfg), loss_weights(LFADS_LOSS_WEIGHTS, cfg, 1.0, 1.0))
    parts["train_recon"].backward()
    return spy, feed.sessions[None].tensors.data[idx]


# ---------------------------------------------------------------------------------------------
# Coordinated dropout
# ---------------------------------------------------------------------------------------------

def test_cd_encoder_input_is_kept_entries_rescaled():
    # Reference rule: encoder input = x * keep / (1 - cd_rate), keep ~ Bernoulli(1 - cd_rate).
    ds, rate = positive_dataset(), 0.4
    spy, x = one_step(ds, config(cd_rate=rate), torch.arange(8))
    seen = spy.inputs[0]
    keep = seen != 0
    torch.testing.assert_close(seen, x * keep / (1 - rate))
    assert abs(1 - keep.float().mean().item() - rate) < 0.05


def test_cd_recon_gradient_reaches_only_dropped_entries():
    # The gradient of the reconstruction loss w.r.t. the observation parameters (log rates) is
    # exp(log rate) - x, nonzero almost surely, at exactly the entries the encoder did not see.
    ds = positive_dataset()
    spy, _ = one_step(ds, config(cd_rate=0.3), torch.arange(8))
    grad = spy.outputs[0].obs_params.grad[..., 0]
    dropped = spy.inputs[0] == 0
    assert dropped.any() and (~dropped).any()
    assert torch.equal(grad != 0, dropped)


def test_cd_held_out_neurons_always_count():
    # Held-out neurons never reach the encoder, so CD cannot hide them: all their entries count.
    ds = positive_dataset(heldout=2)
    spy, _ = one_step(ds, config(cd_rate=0.3), torch.arange(8))
    grad = spy.outputs[0].obs_params.grad[..., 0]
    assert (grad[..., -2:] != 0).all()
    assert torch.equal(grad[..., :-2] != 0, spy.inputs[0] == 0)


def test_cd_draws_a_fresh_mask_every_step_and_is_off_at_validation_and_inference():
    ds = positive_dataset()
    torch.manual_seed(0)
    model = build_model(ds, **TINY)
    spy = Spy(model)
    train(model, ds, config(cd_rate=0.3, max_epochs=2), progress=Progress())
    train_masks = [inp == 0 for inp, tr in zip(spy.inputs, spy.training) if tr and inp.shape[0] == 4]
    assert len(train_masks) == 6  # 12 training trials, batch 4, 2 epochs
    assert all(not torch.equal(a, b) for i, a in enumerate(train_masks) for b in train_masks[i + 1:])
    # Validation (eval mode) sees every entry, unscaled.
    x = torch.as_tensor(ds["spikes"].values, dtype=torch.float32)
    valid = torch.as_tensor(np.flatnonzero(ds["split"].values == "valid"))
    evals = [inp for inp, tr in zip(spy.inputs, spy.training) if not tr and inp.shape[0] == len(valid)]
    assert len(evals) == 2 and all(torch.equal(inp, x[valid]) for inp in evals)
    spy.inputs.clear()
    infer(model, ds)
    assert torch.equal(spy.inputs[0], x)


def test_cd_does_not_change_the_validation_metric():
    # Same weights, CD on or off: the validation NLL is the same number (CD is a training-only mask).
    ds = positive_dataset()
    torch.manual_seed(0)
    model = build_model(ds, **TINY)
    off = validation_metrics(model, make_feed(ds, config()), 256)
    on = validation_metrics(model, make_feed(ds, config(cd_rate=0.5)), 256)
    assert off == on


# ---------------------------------------------------------------------------------------------
# Sample validation
# ---------------------------------------------------------------------------------------------

def test_sv_mask_is_fixed_seeded_and_the_same_in_every_split_and_epoch():
    ds, f = positive_dataset(), 0.25
    torch.manual_seed(0)
    model = build_model(ds, **TINY)
    spy = Spy(model)
    cfg = config(sv_fraction=f, sv_seed=7, max_epochs=3)
    train(model, ds, cfg, progress=Progress())
    keep = torch.as_tensor(sample_validation_mask(ds, f, seed=7))
    assert abs(1 - keep.float().mean().item() - f) < 0.06
    # Every call of the model (training batches of every epoch, validation) saw exactly this mask.
    # Training batches are shuffled: match each batch's rows to trials by their counts.
    x = torch.as_tensor(ds["spikes"].values, dtype=torch.float32)
    calls = [inp for inp in spy.inputs if inp.shape[0] != 1]  # leave out the dashboard's example trial
    assert len(calls) == 3 * 3 + 3
    for inp in calls:
        for row in inp:
            trial = [t for t in range(len(x)) if torch.equal(row != 0, keep[t]) and torch.allclose(row[keep[t]] * (1 - f), x[t][keep[t]])]
            assert len(trial) == 1
    # The mask is a function of (sv_seed, trial id): same seed, same mask; another seed, another.
    np.testing.assert_array_equal(sample_validation_mask(ds, f, seed=7), keep.numpy())
    assert not np.array_equal(sample_validation_mask(ds, f, seed=8), keep.numpy())


def test_sv_held_out_entries_never_change_training():
    # Replace every held-out count by another value: training must be bit for bit the same
    # (losses, validation NLL on the visible entries, weights); only valid_sv_nll may change.
    # build_model gets the config so that the data-dependent readout bias skips them as well.
    ds, f = positive_dataset(), 0.2
    cfg = config(sv_fraction=f, sv_seed=3, max_epochs=3, cd_rate=0.2)
    held = ~sample_validation_mask(ds, f, seed=3)
    changed = ds.copy(deep=True)
    changed["spikes"].values[held] = changed["spikes"].values[held] * 3 + 5

    def fit(data):
        torch.manual_seed(0)
        return train(build_model(data, cfg, **TINY), data, cfg, progress=Progress())

    a, b = fit(ds), fit(changed)
    same = ["train_loss", "train_recon", "kl_ic", "kl_co", "l2", "valid_recon"]
    np.testing.assert_array_equal(a.history[same].to_numpy(), b.history[same].to_numpy())
    assert (a.history["valid_sv_nll"] != b.history["valid_sv_nll"]).all()
    for (name, wa), wb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(wa, wb), name


def test_sv_nll_is_the_poisson_nll_of_the_held_out_validation_entries():
    # Reference: scipy's Poisson log-pmf at the model's expected counts, with the model fed the
    # validation spikes with held-out entries zeroed and the rest scaled by 1 / (1 - f).
    ds, f = positive_dataset(n_trials=24), 0.2
    torch.manual_seed(0)
    result = train(build_model(ds, **TINY), ds, config(sv_fraction=f, max_epochs=1), progress=Progress())
    assert result.best_epoch == 0
    valid = np.flatnonzero(ds["split"].values == "valid")
    keep = sample_validation_mask(ds, f, seed=0)[valid]
    x = ds["spikes"].values[valid].astype(np.float32)
    with torch.no_grad():
        out = result.model(torch.as_tensor(x * keep / (1 - f)), sample=False)
        expected = result.model.observation.mean(out.obs_params).numpy().astype(float)
    nll = -poisson.logpmf(x, expected)
    row = result.history.iloc[0]
    np.testing.assert_allclose(row["valid_sv_nll"], nll[~keep].mean(), rtol=1e-5)
    np.testing.assert_allclose(row["valid_recon"], nll[keep].mean(), rtol=1e-5)


def test_sv_selects_the_model_by_held_out_nll():
    ds = positive_dataset()
    torch.manual_seed(0)
    result = train(build_model(ds, **TINY), ds, config(sv_fraction=0.2, max_epochs=6, lr=2e-2, select_by="valid_sv_nll"),
                   progress=Progress())
    h = result.history
    assert np.isfinite(h["valid_sv_nll"]).all()
    assert result.best_epoch == int(h["valid_sv_nll"].idxmin())


def test_bad_mask_settings_are_config_errors():
    with pytest.raises(lfads_nb.ConfigError, match="cd_rate"):
        TrainConfig(cd_rate=-0.1)
    with pytest.raises(lfads_nb.ConfigError, match="sv_fraction"):
        TrainConfig(sv_fraction=1.0)


# ---------------------------------------------------------------------------------------------
# Forward prediction: the last bins (the 'forward' time coordinate) are hidden from the encoder
# and reconstructed, as lfads-torch does with recon_seq_len > encod_seq_len (NLB's fp bins).
# ---------------------------------------------------------------------------------------------

def with_forward(ds, n_forward):
    return ds.assign_coords(forward=("time", np.arange(ds.sizes["time"]) >= ds.sizes["time"] - n_forward))


@pytest.mark.parametrize("cd_rate", [0.0, 0.3])
def test_forward_bins_are_hidden_from_the_encoder_and_always_in_the_loss(cd_rate):
    # The gradient of the recon loss w.r.t. the log rates is exp(log rate) - x, nonzero almost
    # surely wherever the entry counts: every forward-bin entry counts, none reaches the encoder.
    ds = with_forward(positive_dataset(heldout=1), 3)
    spy, x = one_step(ds, config(cd_rate=cd_rate), torch.arange(8))
    seen, grad = spy.inputs[0], spy.outputs[0].obs_params.grad[..., 0]
    assert (seen[:, -3:] == 0).all() and (seen[:, :-3] != 0).any()
    assert (grad[:, -3:] != 0).all()
    if cd_rate == 0:
        assert (grad != 0).all()  # without CD the loss covers every entry
        torch.testing.assert_close(seen[:, :-3], x[:, :-3, :-1])
    else:  # held-in entries of the encoder's bins count only where CD hid them
        assert torch.equal(grad[:, :-3, :-1] != 0, seen[:, :-3] == 0)


def test_infer_predicts_forward_bins_without_seeing_them():
    # Changing the spikes of the forward bins changes nothing the model infers (it never sees
    # them); changing one encoder bin does. The rates cover every bin.
    ds = with_forward(positive_dataset(), 4)
    torch.manual_seed(0)
    model = build_model(ds, **TINY)
    base = infer(model, ds)
    assert base["rates"].sizes == ds["spikes"].sizes and "rates" in base
    changed = ds.copy(deep=True)
    changed["spikes"].values[:, -4:] += 7
    for name in base.data_vars:
        np.testing.assert_array_equal(infer(model, changed)[name].values, base[name].values)
    changed["spikes"].values[:, 0] += 7
    assert not np.array_equal(infer(model, changed)["rates"].values, base["rates"].values)


def test_forward_validation_counts_forward_bins():
    # valid_recon is the mean NLL over every validation entry, the forward bins included.
    ds = with_forward(positive_dataset(n_trials=24), 3)
    torch.manual_seed(0)
    result = train(build_model(ds, **TINY), ds, config(max_epochs=1), progress=Progress())
    valid = np.flatnonzero(ds["split"].values == "valid")
    x = ds["spikes"].values[valid].astype(np.float32)
    shown = x.copy()
    shown[:, -3:] = 0
    with torch.no_grad():
        out = result.model(torch.as_tensor(shown), sample=False)
        expected = result.model.observation.mean(out.obs_params).numpy().astype(float)
    np.testing.assert_allclose(result.history.iloc[0]["valid_recon"], -poisson.logpmf(x, expected).mean(), rtol=1e-5)
