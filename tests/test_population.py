"""Population-batched LFADS against P separate LFADS models trained with lfads_nb.training's loss.

Reference: P ordinary ``LFADS`` models, each built after ``torch.manual_seed(seed_i)``, each
stepped with ``LFADS.loss`` on ``training.loop.training_batch`` + ``clip_grad_norm_`` +
``torch.optim.Adam``: the exact inner loop of ``lfads_nb.training.train``. Everything in float64.

Same random numbers on both sides, passed in: the population consumes a ``StepNoise`` (every
random number of a step, drawn up front, with a leading member axis) and separate model i gets
slice i of it: its coordinated-dropout uniforms and its ``Noise`` (dropout uniforms and
posterior normals). The population is ``vmap`` of the same ``LFADS``, so this checks the
batching (stacked weights, per-member rates and masks, the fused kernels' vmap rules,
per-member clipping and Adam), not a second copy of the model.
"""
import math

import pytest
import torch

from lfads_nb.errors import ConfigError, DataError
from lfads_nb.models.lfads import LFADS, LFADSConfig, Noise
from lfads_nb.transforms import rounded_normal_shifts
from lfads_nb.training.loop import (TrainConfig, _sv_keep_mask, _Tensors, _validation_metrics, loss_weights,
                                    training_batch)
from lfads_nb.tune.population import Population, PopulationLFADS, StepNoise, draw_step_noise

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
    """Counts with some unobserved (NaN) entries, neuron 4 held out, the last 2 bins forward-prediction
    bins, optional external inputs."""
    g = torch.Generator().manual_seed(5)
    spikes = torch.poisson(torch.full((10, T, N), 1.5), generator=g)
    spikes[torch.rand(spikes.shape, generator=g) < 0.05] = math.nan
    import xarray as xr

    ds = xr.Dataset(coords={"trial": range(10), "time": range(T), "neuron": range(N)})
    heldin = torch.tensor([True, True, True, True, False])
    return _Tensors(
        data=spikes,
        ext_input=torch.randn(10, T, ext_dim, generator=g) if ext_dim else None,
        heldin=heldin,
        encoder_bins=torch.arange(T) < T - 2,
        sv_keep=torch.as_tensor(_sv_keep_mask(ds, sv_fraction, 0)),
    )


def _members(config, seeds=SEEDS, dtype=torch.float64):
    members = []
    for seed in seeds:
        torch.manual_seed(seed)
        members.append(LFADS(config).to(dtype))
    return members


def _member_noise(noise: Noise, i: int) -> Noise:
    return Noise(*(None if v is None else v[i] for v in noise))


@pytest.mark.parametrize("co_dim,ext_dim,shift_std,ci_enc_dim", [(2, 0, None, 5), (0, 2, None, 5),
                                                                 (2, 0, [2.0, 0.0, 1.0], 5), (2, 0, None, 6)])
def test_population_matches_separate_models_trained_with_training_loss(float64, co_dim, ext_dim, shift_std,
                                                                        ci_enc_dim):
    """With ``shift_std``, every member also shifts its batch in time at its own std (member 1 not at
    all): the reference applies ``temporal_shift`` with the member's slice of the step's normals.
    With ci_enc_dim == ic_enc_dim (6) both encoders run as one fused scan, under vmap too."""
    sv = 0.2
    config = LFADSConfig(n_neurons=N, encod_dim=N - 1, co_dim=co_dim, ext_input_dim=ext_dim,
                         **{**SMALL, "ci_enc_dim": ci_enc_dim})
    tensors = _data(ext_dim, sv)
    hps = HPS if shift_std is None else {**HPS, "shift_std": shift_std}
    shared = TrainConfig(sv_fraction=sv, shift_max=2)
    pop = Population(_members(config), shared, hps, dtype=torch.float64)
    models, optims, configs = [], [], []
    for i, seed in enumerate(SEEDS):
        torch.manual_seed(seed)
        models.append(LFADS(LFADSConfig(**{**config.__dict__, "dropout": HPS["dropout"][i]})).to(torch.float64).train())
        cfg = TrainConfig(sv_fraction=sv, shift_max=2, **{k: v[i] for k, v in hps.items() if k != "dropout"})
        configs.append(cfg)
        optims.append(torch.optim.Adam(models[i].parameters(), lr=cfg.lr))
    for i in range(P):  # same initial weights
        for k, v in models[i].state_dict().items():
            torch.testing.assert_close(pop.model.member_state_dict(i)[k], v, rtol=0, atol=0)

    gen = torch.Generator().manual_seed(0)
    clipped = shifted = False
    for step in range(3):
        idx = torch.arange(step, step + B)
        kl_ramp, l2_ramp = 0.3 + 0.2 * step, 0.5
        noise = draw_step_noise(config, P, B, T, gen, torch.float64, shift=shift_std is not None)
        got = pop.train_step(tensors, idx, kl_ramp, l2_ramp, noise=noise)
        for i in range(P):
            shifts = None
            if shift_std is not None:
                shifts = tuple(rounded_normal_shifts(noise.shift[:, i], configs[i].shift_std, configs[i].shift_max))
                shifted |= bool(shifts[0].any())
            batch = training_batch(tensors, idx, sv, configs[i].cd_rate, noise.cd[i], shifts)
            loss, parts = models[i].loss(batch, loss_weights(configs[i], kl_ramp, l2_ramp),
                                         noise=_member_noise(noise.model, i))
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
    assert shifted == (shift_std is not None)  # and, when asked, the temporal shift
    for i in range(P):
        mine = pop.model.member_state_dict(i)
        for k, v in models[i].state_dict().items():
            torch.testing.assert_close(mine[k], v, rtol=1e-9, atol=1e-11, msg=f"member {i} {k}")
    # validation: the same per-member NLLs as training.loop._validation_metrics
    valid_idx = torch.arange(6, 10)
    got = pop.validate(tensors, valid_idx, batch_size=3)
    for i in range(P):
        want = _validation_metrics(models[i], tensors, valid_idx, configs[i], 3)
        for k, v in want.items():
            assert got[k][i].item() == pytest.approx(v, rel=1e-10)


def test_members_never_interact_nan_member_and_copy(float64):
    config = LFADSConfig(n_neurons=N, encod_dim=N - 1, co_dim=2, **SMALL)
    tensors = _data(0, 0.0)
    a = Population(_members(config), TrainConfig(), HPS, dtype=torch.float64)
    b = Population(_members(config), TrainConfig(), HPS, dtype=torch.float64)
    with torch.no_grad():
        for p in b.model.parameters():
            p[1] = math.nan
    noise = draw_step_noise(config, P, B, T, torch.Generator().manual_seed(1), torch.float64)
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
    noise = draw_step_noise(config, P, B, T, torch.Generator().manual_seed(2), torch.float64)

    def copy_0_to_1(v):
        return None if v is None else v.index_copy(0, torch.tensor([1]), v[[0]])

    noise = StepNoise(copy_0_to_1(noise.cd), Noise(*map(copy_0_to_1, noise.model)))
    b.train_step(tensors, idx, 1.0, 1.0, noise=noise)
    for p in b.model.parameters():
        torch.testing.assert_close(p[1], p[0], rtol=0, atol=0)
    assert torch.equal(b.optimizer.steps, torch.tensor([2.0, 2.0, 2.0]))


def test_state_dict_round_trip_and_member_export(tmp_path):
    config = LFADSConfig(n_neurons=N, encod_dim=N - 1, co_dim=0, **SMALL)
    tensors = _data(0, 0.0)
    pop = Population(_members(config, dtype=torch.float32), TrainConfig(), HPS, noise_seed=3)
    pop.train_step(tensors, torch.arange(B), 1.0, 1.0)
    torch.save(pop.state_dict(), tmp_path / "p.pt")
    other = Population(_members(config, [0, 0, 0], torch.float32), TrainConfig(), {})
    other.load_state_dict(torch.load(tmp_path / "p.pt", weights_only=True))
    ra = pop.train_step(tensors, torch.arange(B), 1.0, 1.0)
    rb = other.train_step(tensors, torch.arange(B), 1.0, 1.0)  # same weights, Adam, HPs and noise stream
    torch.testing.assert_close(ra["train_loss"], rb["train_loss"], rtol=0, atol=0)
    model = pop.member_model(1)
    assert isinstance(model, LFADS) and model.config.dropout == pytest.approx(0.3)
    out = model(torch.ones(2, T, N - 1), sample=False)
    ref = PopulationLFADS(_members(config, dtype=torch.float32)).eval()
    ref.load_state_dict(pop.model.state_dict())
    want = ref(torch.ones(P, 2, T, N - 1))
    torch.testing.assert_close(out.obs_params, want.obs_params[1])


def test_bad_inputs_are_clear_errors():
    config = LFADSConfig(n_neurons=N, co_dim=0, **SMALL)
    with pytest.raises(ConfigError, match="cannot differ"):
        Population(_members(config, [0, 1]), TrainConfig(), {"lr_decay": [0.9, 0.9]})
    with pytest.raises(ConfigError, match="2 values for 3"):
        Population(_members(config, [0, 1, 2]), TrainConfig(), {"lr": [1e-3, 1e-3]})
    model = PopulationLFADS(_members(config, [0, 1], torch.float32))
    with pytest.raises(DataError, match="leading member axis of size 2"):
        model(torch.ones(3, 2, T, N))
    with pytest.raises(ConfigError, match="share one LFADSConfig"):
        PopulationLFADS([LFADS(config), LFADS(LFADSConfig(n_neurons=N, co_dim=0, **{**SMALL, "gen_dim": 9}))])
