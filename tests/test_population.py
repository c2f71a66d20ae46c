"""Population-batched LFADS against P separate LFADS models trained with lfads_nb.training's loss.

Reference: P ordinary ``LFADS`` models, each built after ``torch.manual_seed(seed_i)``, each
stepped with ``training._batch_loss`` + ``clip_grad_norm_`` + ``torch.optim.Adam``: the exact
inner loop of ``lfads_nb.training.train``. Everything in float64.

Same random numbers on both sides: the population consumes a ``PopulationNoise`` (every
random number of a step, drawn up front). The separate models draw theirs in two ways, and the
test gives both the population's numbers:
- dropout: each separate model's ``dropout`` module is replaced by ``Replay``, which applies
  member i's keep masks (uniform >= rate) from the population's noise in the order LFADS calls
  its dropout (encoder input, IC-encoder output, [ext], [controller inputs, linear(g0), then the
  masks of f_{t-1} and of g_t for all steps] or [all generator states]);
- the coordinated-dropout mask and the posterior samples: LFADS and ``_batch_loss`` draw them
  from the global RNG (``torch.rand`` for CD, ``randn_like`` for g0, ``randn`` for u); with
  dropout replayed these are the only global draws, so seeding the global RNG with seed_(i, step)
  before member i's step, and building the population's ``cd``, ``ic_eps``, ``co_eps`` slices
  for member i by the same draws after the same seed, makes them identical.
"""
import math

import pytest
import torch
from torch import nn

from lfads_nb.errors import ConfigError, DataError
from lfads_nb.model import LFADS, LFADSConfig
from lfads_nb.population import Population, PopulationLFADS, draw_noise
from lfads_nb.training import TrainConfig, _batch_loss, _sv_keep_mask, _Tensors, _validation_metrics

torch.set_num_threads(1)

SMALL = dict(ic_enc_dim=6, ci_enc_dim=5, con_dim=7, ic_dim=4, gen_dim=8, fac_dim=3)
P, B, T, N = 3, 4, 6, 5
HPS = {  # one value per member; member 2 has coordinated dropout off, member 1 a tight clip
    "lr": [4e-3, 1e-2, 2e-3],
    "dropout": [0.1, 0.3, 0.0],
    "cd_rate": [0.3, 0.5, 0.0],
    "kl_ic_scale": [1e-3, 0.1, 1.0],
    "kl_co_scale": [1e-2, 0.5, 1e-4],
    "l2_gen_scale": [1e-2, 1.0, 0.1],
    "l2_con_scale": [0.5, 1e-3, 1.0],
    "grad_clip": [200.0, 0.5, 200.0],
}
SEEDS = [11, 22, 33]


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _data(ext_dim: int, sv_fraction: float):
    """Counts with some unobserved (NaN) entries, neuron 4 held out, optional external inputs."""
    g = torch.Generator().manual_seed(5)
    spikes = torch.poisson(torch.full((10, T, N), 1.5), generator=g)
    spikes[torch.rand(spikes.shape, generator=g) < 0.05] = math.nan
    import xarray as xr

    ds = xr.Dataset(coords={"trial": range(10), "time": range(T), "neuron": range(N)})
    heldin = torch.tensor([True, True, True, True, False])
    return _Tensors(
        spikes=spikes,
        ext_input=torch.randn(10, T, ext_dim, generator=g) if ext_dim else None,
        heldin=heldin,
        sv_keep=torch.as_tensor(_sv_keep_mask(ds, sv_fraction, 0)),
    )


class Replay(nn.Module):
    """Stands in for ``LFADS.dropout``: applies recorded keep masks, in call order."""

    def __init__(self, masks, rate):
        super().__init__()
        self.masks, self.rate = list(masks), rate

    def forward(self, v):
        keep = self.masks.pop(0)
        assert keep.shape == v.shape
        return v * keep / (1 - self.rate)


def _dropout_sequence(noise, i, config):
    seq = [noise.x[i], noise.ic_enc[i]] + ([noise.ext[i]] if config.ext_input_dim else [])
    if config.co_dim:
        seq += [noise.ci[i], noise.g_init[i], noise.factors_in[i], noise.gen_states[i]]
    else:
        seq += [noise.gen_states[i]]
    return [u >= HPS["dropout"][i] for u in seq]


def _step_noise(config, step, generator):
    """The population's noise for one step, its global-RNG parts drawn member by member."""
    noise = draw_noise(config, P, B, T, generator, torch.float64)
    cd, ic_eps, co_eps = [], [], []
    for i in range(P):
        torch.manual_seed(1000 * step + SEEDS[i])
        cd.append(torch.rand(B, T, N) if HPS["cd_rate"][i] > 0 else torch.zeros(B, T, N))
        ic_eps.append(torch.randn(B, config.ic_dim))
        co_eps.append(torch.randn(B, T, config.co_dim))
    co = torch.stack(co_eps) if config.co_dim else None
    return noise._replace(cd=torch.stack(cd), ic_eps=torch.stack(ic_eps), co_eps=co)


@pytest.mark.parametrize("co_dim,ext_dim", [(2, 0), (0, 2)])
def test_population_matches_separate_models_trained_with_training_loss(float64, co_dim, ext_dim):
    sv = 0.2
    config = LFADSConfig(n_neurons=N, encod_dim=N - 1, co_dim=co_dim, ext_input_dim=ext_dim, **SMALL)
    tensors = _data(ext_dim, sv)
    shared = TrainConfig(sv_fraction=sv)
    pop = Population(config, shared, HPS, SEEDS, dtype=torch.float64)
    models, optims, configs = [], [], []
    for i, seed in enumerate(SEEDS):
        torch.manual_seed(seed)
        models.append(LFADS(LFADSConfig(**{**config.__dict__, "dropout": HPS["dropout"][i]})).train())
        cfg = TrainConfig(sv_fraction=sv, **{k: v[i] for k, v in HPS.items() if k != "dropout"})
        configs.append(cfg)
        optims.append(torch.optim.Adam(models[i].parameters(), lr=cfg.lr))
    for i in range(P):  # same initial weights
        for k, v in models[i].state_dict().items():
            torch.testing.assert_close(pop.model.member_state_dict(i)[k], v, rtol=0, atol=0)

    gen = torch.Generator().manual_seed(0)
    clipped = False
    for step in range(3):
        idx = torch.arange(step, step + B)
        kl_ramp, l2_ramp = 0.3 + 0.2 * step, 0.5
        noise = _step_noise(config, step, gen)
        got = pop.train_step(tensors, idx, kl_ramp, l2_ramp, noise=noise)
        for i in range(P):
            models[i].dropout = Replay(_dropout_sequence(noise, i, config), HPS["dropout"][i])
            torch.manual_seed(1000 * step + SEEDS[i])
            loss, parts = _batch_loss(models[i], tensors, idx, configs[i], kl_ramp, l2_ramp)
            assert not models[i].dropout.masks  # every replayed mask used
            optims[i].zero_grad()
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(models[i].parameters(), configs[i].grad_clip)
            clipped |= bool(norm > configs[i].grad_clip)
            optims[i].step()
            torch.testing.assert_close(got["train_loss"][i], loss.detach(), rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(got["grad_norm"][i], norm, rtol=1e-10, atol=1e-12)
            for k, v in parts.items():
                torch.testing.assert_close(got[k][i], v.detach(), rtol=1e-10, atol=1e-12)
    assert clipped  # the per-member clipping was exercised
    for i in range(P):
        mine = pop.model.member_state_dict(i)
        for k, v in models[i].state_dict().items():
            torch.testing.assert_close(mine[k], v, rtol=1e-9, atol=1e-11, msg=f"member {i} {k}")
    # validation: the same per-member NLLs as training._validation_metrics
    valid_idx = torch.arange(6, 10)
    got = pop.validate(tensors, valid_idx, batch_size=3)
    for i in range(P):
        models[i].dropout = nn.Dropout(HPS["dropout"][i])
        want = _validation_metrics(models[i], tensors, valid_idx, configs[i], 3)
        for k, v in want.items():
            assert got[k][i].item() == pytest.approx(v, rel=1e-10)


def test_members_never_interact_nan_member_and_copy(float64):
    config = LFADSConfig(n_neurons=N, encod_dim=N - 1, co_dim=2, **SMALL)
    tensors = _data(0, 0.0)
    a = Population(config, TrainConfig(), HPS, SEEDS, dtype=torch.float64)
    b = Population(config, TrainConfig(), HPS, SEEDS, dtype=torch.float64)
    with torch.no_grad():
        for p in b.model.parameters():
            p[1] = math.nan
    noise = draw_noise(config, P, B, T, torch.Generator().manual_seed(1), torch.float64)
    idx = torch.arange(B)
    ra, rb = a.train_step(tensors, idx, 1.0, 1.0, noise=noise), b.train_step(tensors, idx, 1.0, 1.0, noise=noise)
    assert math.isnan(rb["train_loss"][1]) and torch.isfinite(rb["train_loss"][[0, 2]]).all()
    torch.testing.assert_close(ra["train_loss"][[0, 2]], rb["train_loss"][[0, 2]], rtol=0, atol=0)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(pa[[0, 2]], pb[[0, 2]], rtol=0, atol=0)

    # Exploit: member 1 becomes a copy of member 0 (weights, Adam state, hyperparameters); given the
    # same random numbers it then takes exactly the same step as member 0.
    b.copy_members([1], [0])
    assert b.member_hparams(1) == b.member_hparams(0)
    noise = draw_noise(config, P, B, T, torch.Generator().manual_seed(2), torch.float64)
    noise = noise._replace(**{k: v.index_copy(0, torch.tensor([1]), v[[0]]) for k, v in noise._asdict().items()
                              if v is not None})
    b.train_step(tensors, idx, 1.0, 1.0, noise=noise)
    for p in b.model.parameters():
        torch.testing.assert_close(p[1], p[0], rtol=0, atol=0)
    assert torch.equal(b.optimizer.steps, torch.tensor([2.0, 2.0, 2.0]))


def test_state_dict_round_trip_and_member_export(tmp_path):
    config = LFADSConfig(n_neurons=N, encod_dim=N - 1, co_dim=0, **SMALL)
    tensors = _data(0, 0.0)
    pop = Population(config, TrainConfig(), HPS, SEEDS, noise_seed=3)
    pop.train_step(tensors, torch.arange(B), 1.0, 1.0)
    torch.save(pop.state_dict(), tmp_path / "p.pt")
    other = Population(config, TrainConfig(), {}, [0, 0, 0])
    other.load_state_dict(torch.load(tmp_path / "p.pt", weights_only=True))
    ra = pop.train_step(tensors, torch.arange(B), 1.0, 1.0)
    rb = other.train_step(tensors, torch.arange(B), 1.0, 1.0)  # same weights, Adam, HPs and noise stream
    torch.testing.assert_close(ra["train_loss"], rb["train_loss"], rtol=0, atol=0)
    model = pop.member_model(1)
    assert isinstance(model, LFADS) and model.config.dropout == pytest.approx(0.3)
    out = model(torch.ones(2, T, N - 1), sample=False)
    ref = PopulationLFADS(config, SEEDS)
    ref.load_state_dict(pop.model.state_dict())
    want = ref(torch.ones(P, 2, T, N - 1))
    torch.testing.assert_close(out.obs_params, want.obs_params[1])


def test_bad_inputs_are_clear_errors():
    config = LFADSConfig(n_neurons=N, co_dim=0, **SMALL)
    with pytest.raises(ConfigError, match="cannot differ"):
        Population(config, TrainConfig(), {"lr_decay": [0.9, 0.9]}, [0, 1])
    with pytest.raises(ConfigError, match="2 values for 3"):
        Population(config, TrainConfig(), {"lr": [1e-3, 1e-3]}, [0, 1, 2])
    model = PopulationLFADS(config, [0, 1])
    with pytest.raises(DataError, match="member=2"):
        model(torch.ones(3, 2, T, N))
