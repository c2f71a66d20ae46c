"""The Neural Data Transformer baseline (lfads_nb.models.ndt): the model protocol through the same
train / infer / checkpoint / dashboard path as LFADS, masked modelling (whole bins hidden, loss on
the hidden entries only, checked against a hand-computed Poisson NLL), deterministic validation that
scores every entry once, and the attention context limit (an invariance: outputs at t do not depend
on inputs more than n_layers x context bins away, and do depend on those just inside)."""
import math

import numpy as np
import pytest
import torch

import lfads_nb
from data_generators import chaotic_rnn
from lfads_nb.errors import ConfigError, DataError
from lfads_nb.models.ndt import NDT, NDTConfig, band_mask
from lfads_nb.checkpoint import load_checkpoint
from lfads_nb.transforms import make_batch

torch.set_num_threads(1)
SMALL = dict(d_model=16, n_layers=2, n_heads=2, ff_dim=32, context_backward=2, context_forward=3)


def _data(**kw):
    return chaotic_rnn(seed=0, n_units=12, n_bins=8, n_conditions=10, trials_per_condition=3, **kw)


class _Quiet:
    stop_requested = False

    def start(self, total):
        pass

    def update(self, row, example):
        self.example = example

    def finish(self, history, message):
        pass


def test_band_mask_hand_values():
    expected = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 1], [1, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(band_mask(4, backward=1, forward=1), expected)


def test_trains_infers_and_round_trips_a_checkpoint_through_the_lfads_loop(tmp_path):
    ds = _data()
    model = lfads_nb.build_model(ds, model="ndt", seed=0, **SMALL)
    assert isinstance(model, NDT) and model.config.n_bins == 8
    progress = _Quiet()
    result = lfads_nb.train(model, ds, lfads_nb.TrainConfig(max_epochs=8, batch_size=8, cd_rate=0.0, seed=0),
                            checkpoint_dir=tmp_path, progress=progress)
    h = result.history
    assert np.isfinite(h[["train_loss", "valid_recon"]].values).all()
    assert h["valid_recon"].iloc[-1] < h["valid_recon"].iloc[0]
    assert progress.example["rates"].shape == (8, 3)  # the dashboard's example trial
    out = lfads_nb.infer(result.model, ds)
    assert out["rates"].attrs["units"] == "Hz" and out["latents"].dims == ("trial", "time", "ndt_latent")
    ckpt = load_checkpoint(tmp_path / "best.pt")  # torch.load(weights_only=True)
    assert ckpt["model_family"] == "ndt"
    loaded = lfads_nb.load_model(tmp_path / "best.pt")
    assert isinstance(loaded, NDT) and loaded.config == result.model.config
    np.testing.assert_array_equal(lfads_nb.infer(loaded, ds)["rates"].values, out["rates"].values)


def test_masked_loss_counts_only_masked_bins_and_held_out_neurons():
    """loss = mean Poisson NLL (incl. log k!) over the masked bins' entries and every entry of the
    held-out neurons, computed by hand from the model's own prediction on the masked input."""
    torch.manual_seed(0)
    model = NDT(NDTConfig(n_neurons=4, encod_dim=3, n_bins=6, **SMALL)).eval()
    spikes = torch.poisson(torch.full((2, 6, 4), 2.0))
    heldin = torch.tensor([True, True, True, False])
    batch = make_batch(spikes, heldin)
    noise = torch.ones(2, 6)
    noise[0, 1] = noise[1, 4] = 0.0  # mask bin 1 of trial 0 and bin 4 of trial 1
    loss, parts = model.loss(batch, {}, noise=noise)
    masked = noise < 0.25
    x = spikes[..., :3] * ~masked[..., None]
    log_rate = model(x)[0][..., 0]
    nll = torch.exp(log_rate) - spikes * log_rate + torch.lgamma(spikes + 1)
    counted = masked[..., None] | ~heldin
    torch.testing.assert_close(loss, nll[counted.expand_as(nll)].mean())
    # the inputs of a masked bin are never seen: changing them changes nothing
    other = spikes.clone()
    other[0, 1, :3] += 5
    torch.testing.assert_close(model.loss(make_batch(other, heldin)._replace(target=spikes), {}, noise=noise)[0], loss)


def test_validation_scores_every_entry_in_the_pass_that_masks_it_and_is_deterministic():
    torch.manual_seed(1)
    model = NDT(NDTConfig(n_neurons=4, encod_dim=3, n_bins=7, **SMALL)).eval()
    batch = make_batch(torch.poisson(torch.full((3, 7, 4), 1.0)), torch.tensor([True, True, True, False]))
    nll = model.entry_nll(batch)
    assert nll.shape == (3, 7, 4) and torch.isfinite(nll).all()
    K = round(1 / model.config.mask_ratio)
    for k in range(K):  # each entry's NLL is the one of the pass that masks its bin
        masked = (torch.arange(7) % K == k).expand(3, 7)
        params, _ = model(model._masked_input(batch, masked))
        torch.testing.assert_close(nll[masked], model.observation.nll(params, batch.target)[masked])
    torch.testing.assert_close(model.entry_nll(batch), nll)


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_outputs_do_not_see_beyond_the_attention_context(direction):
    """Receptive field of L layers with context (b, f): t - L b .. t + L f."""
    torch.manual_seed(2)
    c = NDTConfig(n_neurons=3, n_bins=30, **SMALL)
    model = NDT(c).eval()
    x = torch.rand(1, 30, 3)
    t = 15
    reach = c.n_layers * (c.context_forward if direction == "forward" else c.context_backward)
    sign = 1 if direction == "forward" else -1
    base = model(x)[0]
    outside, inside = x.clone(), x.clone()
    outside[0, t + sign * (reach + 1)] += 3.0
    inside[0, t + sign * reach] += 3.0
    torch.testing.assert_close(model(outside)[0][0, t], base[0, t], rtol=0, atol=1e-6)
    assert (model(inside)[0][0, t] - base[0, t]).abs().max() > 1e-4


def test_bad_setups_are_clear_errors():
    ds = _data()
    model = lfads_nb.build_model(ds, model="ndt", seed=0, **SMALL)
    with pytest.raises(ConfigError, match="cd_rate=0"):
        lfads_nb.train(model, ds, lfads_nb.TrainConfig(max_epochs=1, cd_rate=0.3), progress=_Quiet())
    with pytest.raises(DataError, match="external inputs"):
        lfads_nb.infer(model, ds.assign(ext_input=(("trial", "time", "ext_input_dim"), np.zeros((30, 8, 1)))))
    with pytest.raises(DataError, match="12 neurons"):
        lfads_nb.infer(model, ds.isel(neuron=slice(0, 10)))
    with pytest.raises(ConfigError, match="mask_ratio"):
        NDTConfig(n_neurons=3, mask_ratio=0.0)
    with pytest.raises(ConfigError, match="multiple of n_heads"):
        NDTConfig(n_neurons=3, d_model=15, n_heads=2)
    with pytest.raises(ConfigError, match="Unknown model family"):
        lfads_nb.build_model(ds, model="transformer")
    with pytest.raises(ConfigError, match="n_bins is read from the data"):
        lfads_nb.build_model(ds, model="ndt", n_bins=20)


def test_inference_latency_is_positive_and_leaves_the_model_and_threads_as_they_were():
    ds = _data()
    model = lfads_nb.build_model(ds, model="ndt", seed=0, **SMALL).train()
    threads = torch.get_num_threads()
    ms = lfads_nb.training.inference_latency(model, ds, repeats=5, warmup=1)
    assert 0 < ms < 1e4 and math.isfinite(ms)
    assert model.training and torch.get_num_threads() == threads
    with pytest.raises(ConfigError, match="repeats"):
        lfads_nb.training.inference_latency(model, ds, repeats=0)
