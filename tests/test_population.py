"""Population-batched LFADS against P separate LFADS models trained with lfads_nb.training's loss.

Reference: P ordinary ``LFADS`` models, each built after ``torch.manual_seed(seed_i)``, each
stepped with ``LFADS.loss`` on the feed's ``training_batch`` + ``clip_grad_norm_`` +
``torch.optim.Adam``: the exact inner loop of ``lfads_nb.training.train``. Everything in float64.

Same random numbers on both sides, passed in: the population consumes a ``StepNoise`` (every
random number of a step, drawn up front, with a leading member axis) and separate model i gets
slice i of it: its coordinated-dropout uniforms and its ``Noise`` (dropout uniforms and
posterior normals). The population is ``vmap`` of the same ``LFADS``, so this checks the
batching (stacked weights, per-member rates and masks, the fused kernels' vmap rules,
per-member clipping and Adam), not a second copy of the model.
"""
import math

import numpy as np
import pytest
import torch

import lfads_nb
from lfads_nb.errors import ConfigError, DataError
from lfads_nb.models.lfads import LFADS, LFADSConfig, Noise
from lfads_nb.models.registry import FAMILIES
from lfads_nb.training import make_feed
from lfads_nb.training.loop import TrainConfig, loss_weights, validation_metrics
from lfads_nb.transforms import rounded_normal_shifts
from lfads_nb.tune.population import Population, PopulationModel, StepNoise, draw_step_noise

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


LFADS_FAMILY = FAMILIES["lfads"]


def _data(ext_dim: int, sv_fraction: float):
    """The feed (float64) of counts with some unobserved (NaN) entries, neuron 4 held out, the last 2
    bins forward-prediction bins, optional external inputs; trials 0-5 'train', 6-9 'valid'."""
    g = torch.Generator().manual_seed(5)
    spikes = torch.poisson(torch.full((10, T, N), 1.5), generator=g)
    spikes[torch.rand(spikes.shape, generator=g) < 0.05] = math.nan
    ext = {"ext_input": torch.randn(10, T, ext_dim, generator=g).numpy()} if ext_dim else {}
    ds = lfads_nb.make_dataset(spikes.numpy(), 0.01, split_labels=["train"] * 6 + ["valid"] * 4, **ext)
    ds = ds.assign_coords(heldout=("neuron", [False, False, False, False, True]), forward=("time", np.arange(T) >= T - 2))
    return make_feed(ds, TrainConfig(sv_fraction=sv_fraction, shift_max=2), dtype=torch.float64)


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
    feed = _data(ext_dim, sv)
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
        trials = {None: torch.arange(step, step + B)}
        kl_ramp, l2_ramp = 0.3 + 0.2 * step, 0.5
        noise = draw_step_noise(LFADS_FAMILY, config, P, {None: (B, N)}, T, gen, torch.float64,
                                shift=shift_std is not None)
        got = pop.step(feed, trials, kl_ramp, l2_ramp, noise=noise)
        for i in range(P):
            shifts = None
            if shift_std is not None:
                shifts = {None: tuple(rounded_normal_shifts(noise.shift[None][:, i], configs[i].shift_std,
                                                            configs[i].shift_max))}
                shifted |= bool(shifts[None][0].any())
            batch = feed.training_batch(trials, configs[i].cd_rate, {None: noise.cd[None][i]}, shifts)
            loss, parts = models[i].loss(batch, loss_weights(LFADS_FAMILY.loss_weights, configs[i], kl_ramp, l2_ramp),
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
    # validation: the same per-member NLLs as training.loop.validation_metrics of each model
    got = pop.validate(feed, batch_size=3)
    for i in range(P):
        want = validation_metrics(models[i], feed, 3)
        for k, v in want.items():
            assert got[k][i].item() == pytest.approx(v.item(), rel=1e-10)


def test_members_never_interact_nan_member_and_copy(float64):
    config = LFADSConfig(n_neurons=N, encod_dim=N - 1, co_dim=2, **SMALL)
    feed = _data(0, 0.0)
    a = Population(_members(config), TrainConfig(), HPS, dtype=torch.float64)
    b = Population(_members(config), TrainConfig(), HPS, dtype=torch.float64)
    with torch.no_grad():
        for p in b.model.parameters():
            p[1] = math.nan
    noise = draw_step_noise(LFADS_FAMILY, config, P, {None: (B, N)}, T, torch.Generator().manual_seed(1), torch.float64)
    trials = {None: torch.arange(B)}
    ra, rb = a.step(feed, trials, 1.0, 1.0, noise=noise), b.step(feed, trials, 1.0, 1.0, noise=noise)
    assert math.isnan(rb["train_loss"][1]) and torch.isfinite(rb["train_loss"][[0, 2]]).all()
    torch.testing.assert_close(ra["train_loss"][[0, 2]], rb["train_loss"][[0, 2]], rtol=0, atol=0)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(pa[[0, 2]], pb[[0, 2]], rtol=0, atol=0)

    # Exploit: member 1 becomes a copy of member 0 (weights, Adam state, hyperparameters); given the
    # same random numbers it then takes exactly the same step as member 0.
    b.copy_members([1], [0])
    assert b.member_hparams(1) == b.member_hparams(0)
    noise = draw_step_noise(LFADS_FAMILY, config, P, {None: (B, N)}, T, torch.Generator().manual_seed(2), torch.float64)

    def copy_0_to_1(v):
        return None if v is None else v.index_copy(0, torch.tensor([1]), v[[0]])

    noise = StepNoise({None: copy_0_to_1(noise.cd[None])}, Noise(*map(copy_0_to_1, noise.model)))
    b.step(feed, trials, 1.0, 1.0, noise=noise)
    for p in b.model.parameters():
        torch.testing.assert_close(p[1], p[0], rtol=0, atol=0)
    assert torch.equal(b.optimizer.steps, torch.tensor([2.0, 2.0, 2.0]))


def test_state_dict_round_trip_and_member_export(tmp_path):
    config = LFADSConfig(n_neurons=N, encod_dim=N - 1, co_dim=0, **SMALL)
    feed = make_feed(_data(0, 0.0).sessions[None].ds, TrainConfig())  # float32
    trials = {None: torch.arange(B)}
    pop = Population(_members(config, dtype=torch.float32), TrainConfig(), HPS, noise_seed=3)
    pop.step(feed, trials, 1.0, 1.0)
    torch.save(pop.state_dict(), tmp_path / "p.pt")
    other = Population(_members(config, [0, 0, 0], torch.float32), TrainConfig(), {})
    other.load_state_dict(torch.load(tmp_path / "p.pt", weights_only=True))
    ra = pop.step(feed, trials, 1.0, 1.0)
    rb = other.step(feed, trials, 1.0, 1.0)  # same weights, Adam, HPs and noise stream
    torch.testing.assert_close(ra["train_loss"], rb["train_loss"], rtol=0, atol=0)
    model = pop.member_model(1)
    assert isinstance(model, LFADS) and model.config.dropout == pytest.approx(0.3)
    out = model(torch.ones(2, T, N - 1), sample=False)
    ref = PopulationModel(_members(config, dtype=torch.float32)).eval()
    ref.load_state_dict(pop.model.state_dict())
    want = ref(torch.ones(P, 2, T, N - 1), sample=False)
    torch.testing.assert_close(out.obs_params, want.obs_params[1])


def test_bad_inputs_are_clear_errors():
    config = LFADSConfig(n_neurons=N, co_dim=0, **SMALL)
    with pytest.raises(ConfigError, match="cannot differ"):
        Population(_members(config, [0, 1]), TrainConfig(), {"lr_decay": [0.9, 0.9]})
    with pytest.raises(ConfigError, match="2 values for 3"):
        Population(_members(config, [0, 1, 2]), TrainConfig(), {"lr": [1e-3, 1e-3]})
    model = PopulationModel(_members(config, [0, 1], torch.float32))
    with pytest.raises(DataError, match="leading member axis of size 2"):
        model(torch.ones(3, 2, T, N))
    with pytest.raises(ConfigError, match="share one LFADSConfig"):
        PopulationModel([LFADS(config), LFADS(LFADSConfig(n_neurons=N, co_dim=0, **{**SMALL, "gen_dim": 9}))])


def test_ndt_population_matches_separate_models_with_per_member_mask_ratios(float64):
    """The population is the protocol model vmapped, whatever the family: P NDTs (dropout 0, so the
    forward pass draws nothing itself) with their own masking fraction, learning rate and clipping
    against P separate NDTs stepped with their own loss, ``clip_grad_norm_`` and torch Adam on the
    same bin-mask uniforms, in float64."""
    from data_generators import chaotic_rnn

    ds = chaotic_rnn(seed=0, n_units=6, n_bins=8, n_conditions=4, trials_per_condition=3)
    sizes = dict(model="ndt", d_model=8, n_layers=1, n_heads=2, ff_dim=16, context_backward=2, context_forward=2,
                 dropout=0.0, dropout_embedding=0.0, dropout_rates=0.0)
    members = [lfads_nb.build_model(ds, seed=s, **sizes).double() for s in (1, 2)]
    references = [lfads_nb.build_model(ds, seed=s, **sizes).double().train() for s in (1, 2)]
    hps = {"lr": [1e-2, 3e-3], "mask_ratio": [0.2, 0.45], "grad_clip": [200.0, 0.05]}
    shared = TrainConfig(batch_size=4, cd_rate=0.0)
    pop = Population(members, shared, hps, dtype=torch.float64)
    optims = [torch.optim.Adam(m.parameters(), lr=lr) for m, lr in zip(references, hps["lr"])]
    feed = make_feed(ds, shared, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    clipped = False
    for step in range(3):
        trials = {None: torch.arange(4 * step, 4 * step + 4)}
        noise = draw_step_noise(FAMILIES["ndt"], pop.model_config, 2, feed.step_sizes(trials), 8, gen, torch.float64,
                                cd=False)
        got = pop.step(feed, trials, 1.0, 1.0, noise=noise)
        for i, model in enumerate(references):
            loss, _ = model.loss(feed.training_batch(trials, None, None, None), {}, noise=noise.model[i],
                                 mask_ratio=hps["mask_ratio"][i])
            optims[i].zero_grad()
            loss.backward()
            clipped |= bool(torch.nn.utils.clip_grad_norm_(model.parameters(), hps["grad_clip"][i]) > hps["grad_clip"][i])
            optims[i].step()
            torch.testing.assert_close(got["train_loss"][i], loss.detach(), rtol=1e-10, atol=1e-12)
    assert clipped
    metrics = pop.validate(feed, batch_size=5)
    for i, model in enumerate(references):
        for k, v in model.state_dict().items():
            torch.testing.assert_close(pop.model.member_state_dict(i)[k], v, rtol=1e-9, atol=1e-11, msg=f"{i} {k}")
        want = validation_metrics(model, feed, 5)["valid_recon"]
        assert metrics["valid_recon"][i].item() == pytest.approx(want.item(), rel=1e-10)
    assert pop.member_model(1).config.mask_ratio == pytest.approx(0.45)
