"""Selective backpropagation through time (``lfads_nb.transforms.sbtt``) on spikes and on calcium
events, and RADICaL's wiring: ZIG LFADS with SBTT on sub-frame events.

Reference semantics (extensions reference, section 3: sbtt-demo ``model.py`` and lfads-torch
``SelectiveBackpropThruTime``): NaN marks an entry that was not observed; the encoder sees 0 there
(no rescaling); the loss is the sum of the NLL over observed entries divided by their number, so
with no NaN it is the plain loss exactly, and the gradient at an unobserved entry is exactly 0.
"""
import numpy as np
import pytest
import torch

import lfads_nb
from data_generators import calcium_2p, lorenz, observe_random_neurons
from lfads_nb import ConfigError
from lfads_nb.dashboard import Progress
from lfads_nb.training.feed import to_tensors, training_batch
from lfads_nb.transforms import coordinated_dropout, encoder_input, make_batch, sbtt

torch.set_num_threads(1)

TINY = dict(ic_enc_dim=8, ci_enc_dim=6, con_dim=6, co_dim=0, ic_dim=4, gen_dim=10, fac_dim=3, dropout=0.0)
WEIGHTS = dict(kl_ic_scale=0.0, kl_co_scale=0.0, l2_gen_scale=0.0, l2_con_scale=0.0, kl_ramp=1.0, l2_ramp=1.0)


def spikes_with_missing(n_observed=4, seed=0):
    ds = lorenz(seed, n_neurons=9, n_conditions=4, trials_per_condition=4, n_bins=10)
    return ds, observe_random_neurons(ds, n_observed, seed=seed)


def forward(model, batch):
    """Forward pass with the observation parameters' gradient kept; returns (out, recon)."""
    out = model(model.session.read_in(encoder_input(batch)), batch.ext, sample=False)
    out.obs_params.retain_grad()
    loss, parts = model.objective(out, batch, WEIGHTS)
    return out, parts["train_recon"]


def test_observe_random_neurons_keeps_exactly_n_per_bin():
    full, ds = spikes_with_missing(4)
    observed = ~np.isnan(ds["spikes"].values)
    assert (observed.sum(-1) == 4).all()
    np.testing.assert_array_equal(ds["spikes"].values[observed], full["spikes"].values[observed])
    assert 0.3 < observed.mean(axis=(0, 1)).min() and observed.mean(axis=(0, 1)).max() < 0.6  # 4/9 each
    xr_equal = observe_random_neurons(full, 4, seed=0)["spikes"].values
    np.testing.assert_array_equal(np.isnan(xr_equal), ~observed)  # drawn once from the seed
    with pytest.raises(ConfigError, match="n_observed must be a whole number of neurons from 1 to 9"):
        observe_random_neurons(full, 10)


def test_sbtt_without_nan_is_the_plain_loss():
    full, _ = spikes_with_missing()
    model = lfads_nb.build_model(full, seed=0, **TINY).eval()
    data = torch.as_tensor(full["spikes"].values[:8], dtype=torch.float32)
    heldin = torch.ones(9, dtype=torch.bool)
    plain, with_sbtt = make_batch(data, heldin), sbtt(make_batch(data, heldin))
    assert torch.equal(encoder_input(plain), encoder_input(with_sbtt))
    assert forward(model, plain)[1].item() == forward(model, with_sbtt)[1].item()


def test_sbtt_loss_is_the_mean_over_observed_entries_and_unobserved_get_no_gradient():
    _, ds = spikes_with_missing(3)
    model = lfads_nb.build_model(ds, seed=0, **TINY).eval()
    data = torch.as_tensor(ds["spikes"].values[:8], dtype=torch.float32)
    batch = sbtt(make_batch(data, torch.ones(9, dtype=torch.bool)))
    observed = ~torch.isnan(data)
    # the encoder sees the observed counts as they are and 0 elsewhere (no rescaling)
    torch.testing.assert_close(encoder_input(batch), data.nan_to_num(0.0))
    out, recon = forward(model, batch)
    log_rate = out.obs_params[..., 0].detach().double()
    x = data.double()
    nll = torch.exp(log_rate) - x * log_rate + torch.lgamma(x + 1)  # Poisson NLL written out
    assert recon.item() == pytest.approx(nll[observed].mean().item(), rel=1e-5)
    recon.backward()
    grad = out.obs_params.grad[..., 0]
    assert (grad[~observed] == 0).all() and (grad[observed] != 0).all()


def test_coordinated_dropout_composes_with_sbtt():
    """The loss counts observed entries the encoder did not see (observed and dropped); the
    encoder sees observed, kept entries rescaled by 1 / (1 - rate)."""
    _, ds = spikes_with_missing(5)
    data = torch.as_tensor(ds["spikes"].values[:8], dtype=torch.float32)
    observed = ~torch.isnan(data)
    uniforms = torch.rand(data.shape, generator=torch.Generator().manual_seed(0))
    batch = coordinated_dropout(sbtt(make_batch(data, torch.ones(9, dtype=torch.bool))), 0.3, uniforms)
    kept = uniforms >= 0.3
    assert torch.equal(batch.loss_mask, observed & ~kept)
    torch.testing.assert_close(encoder_input(batch), data.nan_to_num(0.0) * kept / 0.7)


def test_training_step_with_sample_validation_and_coordinated_dropout_counts_only_observed_entries():
    """The training loop's batch (``training_batch``: sbtt -> sample validation -> coordinated
    dropout) on spikes with 3 of 9 neurons observed per bin, through a model with a controller
    and dropout in train mode, on both decoder paths (fused kernels and the step loop).

    Reference: the masks written out from their definitions (extensions reference section 3: the
    gradient mask is observed AND sample-validation-kept AND CD-dropped; the encoder sees observed,
    kept, CD-shown entries rescaled by 1 / ((1 - sv) (1 - cd)); held-out entries are observed ones
    only), and the recon against a float64 Poisson NLL averaged over that mask. Catches a NaN
    zero-filled and then fitted as an observed zero, sample validation or coordinated dropout
    counting or scoring unobserved entries, and a path that leaks gradient into them."""
    from lfads_nb.models.lfads import draw_noise

    _, ds = spikes_with_missing(3)
    config = lfads_nb.TrainConfig(sv_fraction=0.2, cd_rate=0.3, sv_seed=1)
    tensors = to_tensors(ds, config.sv_fraction, config.sv_seed)
    idx = torch.arange(8)
    uniforms = torch.rand((8, *tensors.data.shape[1:]), generator=torch.Generator().manual_seed(2))
    batch = training_batch(tensors, idx, config.sv_fraction, config.cd_rate, uniforms)
    data = tensors.data[idx]
    observed, sv_kept, cd_shown = ~torch.isnan(data), tensors.sv_keep[idx], uniforms >= config.cd_rate
    assert observed.float().mean() == pytest.approx(3 / 9) and (~sv_kept).any() and (~cd_shown).any()
    assert torch.equal(batch.loss_mask, observed & sv_kept & ~cd_shown)
    assert torch.equal(batch.heldout, observed & ~sv_kept)
    expected_input = data.nan_to_num(0.0) * (observed & sv_kept & cd_shown) / ((1 - 0.2) * (1 - 0.3))
    torch.testing.assert_close(encoder_input(batch), expected_input)

    model = lfads_nb.build_model(ds, seed=0, **{**TINY, "co_dim": 2, "dropout": 0.2}).train()
    noise = draw_noise(model.config, 8, data.shape[1], generator=torch.Generator().manual_seed(3))
    results = []
    for fused in (True, False):
        model.fused = fused
        model.zero_grad()
        out = model(model.session.read_in(encoder_input(batch)), batch.ext, sample=True, noise=noise)
        out.obs_params.retain_grad()
        _, parts = model.objective(out, batch, WEIGHTS)
        parts["train_recon"].backward()
        log_rate, x = out.obs_params[..., 0].detach().double(), data.double().nan_to_num(0.0)
        nll = torch.exp(log_rate) - x * log_rate + torch.lgamma(x + 1)
        assert parts["train_recon"].item() == pytest.approx(nll[batch.loss_mask].mean().item(), rel=1e-5)
        grad = out.obs_params.grad[..., 0]
        assert (grad[~batch.loss_mask] == 0).all() and (grad[batch.loss_mask] != 0).all()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((parts["train_recon"].detach(), grads))
    (fused_recon, fused_grads), (plain_recon, plain_grads) = results
    torch.testing.assert_close(fused_recon, plain_recon)
    assert fused_grads.keys() == plain_grads.keys() and "generator.weight_hh" in fused_grads
    for name in fused_grads:
        torch.testing.assert_close(fused_grads[name], plain_grads[name], rtol=1e-4, atol=1e-6)


def test_sbtt_training_on_spikes_infers_rates_everywhere():
    full, ds = spikes_with_missing(3)
    config = lfads_nb.TrainConfig(max_epochs=2, batch_size=8, cd_rate=0.0, kl_ramp_epochs=1, l2_ramp_epochs=1)
    result = lfads_nb.train(lfads_nb.build_model(ds, seed=0, **TINY), ds, config, progress=Progress())
    rates = lfads_nb.infer(result.model, ds)["rates"]
    assert rates.shape == full["spikes"].shape and np.isfinite(rates.values).all()
    assert np.isfinite(result.history["valid_recon"]).all()


# ---------------------------------------------------------------------------------- RADICaL wiring

def small_calcium(**kw):
    return calcium_2p(0, n_neurons=10, n_conditions=4, trials_per_condition=5, n_frames=8, **kw)


def test_zig_with_sbtt_on_subframe_events_trains_and_infers_at_subframe_resolution():
    ds = small_calcium()
    config = lfads_nb.TrainConfig(max_epochs=2, batch_size=8, kl_ramp_epochs=1, l2_ramp_epochs=1)
    assert config.cd_rate > 0  # coordinated dropout stays on alongside SBTT
    model = lfads_nb.build_model(ds, config, seed=0, **TINY)
    assert model.observation.s_min == ds.attrs["s_min"] == 0.1  # s_min from the data's attrs
    assert type(model.observation).__name__ == "ZeroInflatedGamma"
    result = lfads_nb.train(model, ds, config, progress=Progress())
    assert np.isfinite(result.history[["train_loss", "valid_recon"]].values).all()
    out = lfads_nb.infer(result.model, ds)
    assert out["events_mean"].dims == ("trial", "time", "neuron") and out["events_mean"].shape == ds["events"].shape
    assert np.isfinite(out["events_mean"].values).all()  # a prediction at every sub-frame bin, sampled or not
    assert out["factors"].sizes["time"] == ds.sizes["time"] == 24
    np.testing.assert_allclose(out["time"].values, ds["time"].values)


def test_zig_loss_skips_unsampled_subframe_bins():
    """ZIG on sub-frame events: the recon is the mean ZIG NLL over sampled bins only and the
    gradient at the other bins is exactly 0 (lfads-torch puts a placeholder there and zeroes
    its loss; here the ZIG computes on nan_to_num(0) and the mask drops it)."""
    ds = small_calcium()
    model = lfads_nb.build_model(ds, seed=0, **TINY).eval()
    data = torch.as_tensor(ds["events"].values[:6], dtype=torch.float32)
    batch = sbtt(make_batch(data, torch.ones(10, dtype=torch.bool)))
    out, recon = forward(model, batch)
    sampled = ~torch.isnan(data)
    nll = model.observation.nll(out.obs_params.detach(), data)
    assert recon.item() == pytest.approx(nll[sampled].mean().item(), rel=1e-6)
    recon.backward()
    grad = out.obs_params.grad
    assert (grad[~sampled] == 0).all() and (grad[sampled].abs().sum(-1) > 0).all()


def test_training_refuses_an_s_min_above_the_smallest_event():
    ds = small_calcium().assign_attrs(s_min=0.5)
    with pytest.raises(lfads_nb.DataError, match="s_min'\\] is 0.5 but the smallest event"):
        lfads_nb.build_model(ds, **TINY)
