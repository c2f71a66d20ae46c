"""LFADS model: shapes, priors, fused kernels against the step loop, vmap rules, noise as input, lags,
dropout, config errors, a smoke fit."""
import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from lfads_nb.errors import ConfigError, DataError
from lfads_nb.models._fused_gru import DecoderWeights, clipped_gru_scan, controlled_decode
from lfads_nb.models.lfads import LFADS, AR1Prior, GaussianPrior, LFADSConfig, Noise, draw_noise, gru_step

torch.set_num_threads(1)

SMALL = dict(ic_enc_dim=6, ci_enc_dim=5, con_dim=7, ic_dim=4, gen_dim=8, fac_dim=3)


def _model(dtype=torch.float64, **kw):
    torch.manual_seed(0)
    cfg = LFADSConfig(**{"n_neurons": 5, **SMALL, **kw})
    return LFADS(cfg).to(dtype)


def _spikes(B=3, T=7, N=5, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.full((B, T, N), 1.0, dtype=torch.float64), generator=g).to(dtype)


@pytest.mark.parametrize("co_dim,ext", [(0, 0), (2, 0), (0, 3), (2, 3)])
def test_output_shapes(co_dim, ext):
    model = _model(torch.float32, co_dim=co_dim, ext_input_dim=ext, encod_dim=4)
    B, T = 3, 7
    x = torch.rand(B, T, 4)  # the 4 held-in neurons of 5
    out = model(x, torch.randn(B, T, ext) if ext else None)
    shapes = {k: tuple(v.shape) for k, v in out._asdict().items()}
    assert shapes == {
        "obs_params": (B, T, 5, 1),
        "factors": (B, T, 3),
        "gen_states": (B, T, 8),
        "inputs": (B, T, co_dim),
        "ic_mean": (B, 4),
        "ic_std": (B, 4),
        "co_mean": (B, T, co_dim),
        "co_std": (B, T, co_dim),
        "kl_ic": (B,),
        "kl_co": (B,),
    }
    assert all(torch.isfinite(v).all() for v in out)
    if co_dim == 0:
        assert (out.kl_co == 0).all() and model.l2_penalties()["l2_con"].item() == 0.0


@pytest.mark.parametrize("name,k", [("poisson", 1), ("gaussian", 2), ("gamma", 2), ("zig", 3)])
def test_every_observation_model_plugs_in(name, k):
    model = _model(torch.float32, co_dim=2, observation=name)
    x = torch.rand(3, 1, 5)  # a single time bin works too
    out = model(x)
    assert out.obs_params.shape == (3, 1, 5, k)
    loss = model.observation.nll(out.obs_params, x).mean() + model.observation.penalty()
    loss.backward()
    assert torch.isfinite(loss) and model.observation.readout.weight.grad is not None


def test_ic_kl_matches_closed_form_gaussian_kl():
    # Reference: torch.distributions.kl_divergence(Normal, Normal), an independent implementation
    # of KL = log(sp/sq) + (sq^2 + (mq - mp)^2) / (2 sp^2) - 1/2.
    prior = GaussianPrior(4, 0.1).double()
    with torch.no_grad():
        prior.mean.copy_(torch.tensor([0.3, -0.2, 0.0, 1.0]))
    m, s = torch.randn(5, 4, dtype=torch.float64), torch.rand(5, 4, dtype=torch.float64) + 0.05
    expected = kl_divergence(Normal(m, s), Normal(prior.mean, math.sqrt(0.1))).sum(-1)
    torch.testing.assert_close(prior.kl(m, s), expected)
    # and the model reports exactly this KL for its own posterior
    model = _model(co_dim=0)
    out = model(_spikes(), sample=False)
    ref = kl_divergence(Normal(out.ic_mean, out.ic_std), Normal(model.ic_prior.mean, math.sqrt(0.1))).sum(-1)
    torch.testing.assert_close(out.kl_ic, ref)


def _ar1_dense(prior, T):
    """The AR(1) prior as one dense T x T Gaussian per dim: cov_ij = s^2 / (1 - a^2) a^|i-j|."""
    a = torch.exp(-torch.exp(-prior.log_tau)).detach()
    pvar = torch.exp(prior.log_noise_var).detach() / (1 - a**2)
    lag = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).abs().to(a.dtype)
    return [MultivariateNormal(torch.zeros(T, dtype=a.dtype), pvar[d] * a[d] ** lag) for d in range(len(a))]


def test_ar1_log_prob_and_closed_form_kl_match_dense_gaussian():
    # Reference: the AR(1) process written as a dense multivariate normal (stationary covariance),
    # torch.distributions.MultivariateNormal.log_prob and kl_divergence.
    T, D = 6, 2
    prior = AR1Prior(D, tau=4.0, noise_var=0.3).double()
    with torch.no_grad():
        prior.log_tau[1] = math.log(9.0)
        prior.log_noise_var[1] = math.log(0.05)
    dense = _ar1_dense(prior, T)
    u = torch.randn(3, T, D, dtype=torch.float64)
    expected_lp = sum(dense[d].log_prob(u[..., d]) for d in range(D))
    torch.testing.assert_close(prior.log_prob(u), expected_lp)

    m, s = torch.randn(3, T, D, dtype=torch.float64), torch.rand(3, T, D, dtype=torch.float64) + 0.1
    expected_kl = sum(
        kl_divergence(MultivariateNormal(m[..., d], torch.diag_embed(s[..., d] ** 2)), dense[d]) for d in range(D)
    )
    torch.testing.assert_close(prior.kl_expected(m, s), expected_kl)


def test_ar1_one_sample_kl_is_unbiased_monte_carlo():
    # Reference: the closed-form KL above; the mean of many one-sample estimates must match it
    # within 4 standard errors.
    torch.manual_seed(3)
    T, D, S = 10, 2, 20000
    prior = AR1Prior(D, tau=10.0, noise_var=0.1).double()
    m = torch.randn(1, T, D, dtype=torch.float64) * 0.5
    s = torch.rand(1, T, D, dtype=torch.float64) * 0.3 + 0.1
    u = m + s * torch.randn(S, T, D, dtype=torch.float64)
    est = prior.kl_sample(m.expand(S, -1, -1), s.expand(S, -1, -1), u)
    exact = prior.kl_expected(m, s)[0]
    assert abs(est.mean() - exact) < 4 * est.std() / math.sqrt(S)


def test_factor_readout_rows_have_unit_norm():
    model = _model(co_dim=0)
    with torch.no_grad():
        model.factor_readout.weight.mul_(7.0)
    raw = model.factor_readout.weight.detach().clone()
    w = model.factor_readout.normalized_weight()
    torch.testing.assert_close(w.norm(dim=1), torch.ones(3, dtype=torch.float64))
    model.eval()
    out = model(_spikes(), sample=False)
    torch.testing.assert_close(out.factors, out.gen_states @ w.T)
    assert torch.equal(model.factor_readout.weight, raw)  # normalised in forward, never in place


@pytest.mark.parametrize("co_dim", [0, 2])
def test_generator_state_is_clipped(co_dim):
    model = _model(co_dim=co_dim, cell_clip=2.0)
    with torch.no_grad():
        model.ic_to_g0.bias.fill_(6.0)  # g_{-1} far outside the clip
    out = model(_spikes())
    assert out.gen_states.abs().max() <= 2.0
    assert out.gen_states.abs().max() == 2.0  # the clip was active


def test_fused_scan_passes_gradcheck():
    # Reference: torch.autograd.gradcheck (finite differences, float64) of the hand-written
    # backward, with an initial state beyond the clip so the clip mask is exercised.
    torch.manual_seed(4)
    T, D, B, H = 5, 2, 3, 4
    xp = torch.randn(T, D, B, 3 * H, dtype=torch.float64, requires_grad=True)
    h0 = (torch.randn(D, B, H, dtype=torch.float64) * 2.5).requires_grad_()
    w = torch.randn(D, 3 * H, H, dtype=torch.float64, requires_grad=True)
    assert (h0.abs() > 2.0).any()
    assert torch.autograd.gradcheck(lambda a, b, c: clipped_gru_scan(a, b, c, 2.0), (xp, h0, w))
    # the last-state output alone (how the IC encoder uses it: no gradient for the sequence)
    assert torch.autograd.gradcheck(lambda a, b, c: clipped_gru_scan(a, b, c, 2.0)[1], (xp, h0, w))


def test_fused_scan_equals_step_loop():
    # Reference: T calls of gru_step (plain autograd), values and gradients.
    torch.manual_seed(5)
    T, D, B, H = 9, 3, 4, 6
    xp = torch.randn(T, D, B, 3 * H, dtype=torch.float64, requires_grad=True)
    h0 = (torch.randn(D, B, H, dtype=torch.float64) * 3).requires_grad_()
    w = torch.randn(D, 3 * H, H, dtype=torch.float64, requires_grad=True)
    fast, last = clipped_gru_scan(xp, h0, w, 2.5)
    torch.testing.assert_close(last, fast[-1], rtol=0, atol=0)
    h, ref = h0, []
    for t in range(T):
        h = gru_step(xp[t], h, w, 2.5)
        ref.append(h)
    ref = torch.stack(ref)
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(fast)
    for a, b in zip(torch.autograd.grad(fast, (xp, h0, w), grad), torch.autograd.grad(ref, (xp, h0, w), grad)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _fused_and_loop(**kw):
    """The same LFADS (same weights) on the fused kernels and on the step loop."""
    fused = _model(**kw)
    loop = LFADS(fused.config, fused=False).to(torch.float64)
    loop.load_state_dict(fused.state_dict())
    return fused, loop


@pytest.mark.parametrize("co_dim,ext,sample,ci_enc_dim", [(0, 0, True, 5), (0, 2, False, 5), (2, 0, False, 5),
                                                          (2, 2, True, 5), (2, 0, True, 6)])
def test_fused_model_equals_step_loop(co_dim, ext, sample, ci_enc_dim):
    # Reference: LFADS(fused=False), the decoder's plain-autograd step loop, against the fused
    # kernels (clipped_gru_scan without a controller, controlled_decode with one). Whole forward
    # passes in train mode with dropout, fed the same Noise; values and gradients of every input
    # and parameter, float64; states partly at the clip. With ci_enc_dim == ic_enc_dim (6) the
    # fused model runs both encoders as one scan, the loop model one after the other.
    fused, loop = _fused_and_loop(co_dim=co_dim, ext_input_dim=ext, dropout=0.3, cell_clip=0.3, ci_enc_dim=ci_enc_dim)
    B, T = 3, 6
    x = (_spikes(B=B, T=T) * 2).requires_grad_()
    ext_in = torch.randn(B, T, ext, dtype=torch.float64, requires_grad=True) if ext else None
    noise = draw_noise(fused.config, B, T, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    outs = [m(x, ext_in, sample=sample, noise=noise) for m in (fused, loop)]
    assert (outs[0].gen_states.abs() == 0.3).any()  # the clip is active
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    weights = [torch.randn_like(v) for v in outs[0]]
    grads = []
    for model, out in zip((fused, loop), outs):
        wrt = [x] + ([ext_in] if ext else []) + list(model.parameters())
        grads.append(torch.autograd.grad(sum((w * v).sum() for w, v in zip(weights, out)), wrt, allow_unused=True))
    for a, b in zip(*grads):
        if a is None or b is None:  # unused, or a weight with no entries (generator inputs without co_dim, ext)
            assert all(g is None or g.numel() == 0 for g in (a, b))
        else:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_fused_kernels_vmap_rule_equals_per_member_calls():
    # Reference: each member's own kernel call. Under torch.func.vmap the kernels fold the mapped
    # axis into their D axis; values and gradients must match calling them member by member,
    # with mapped and unmapped (shared) arguments mixed.
    torch.manual_seed(8)
    P, T, D, B, H = 3, 4, 2, 3, 5
    xp = torch.randn(P, T, D, B, 3 * H, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(D, B, H, dtype=torch.float64, requires_grad=True)  # shared by all members
    w = torch.randn(P, D, 3 * H, H, dtype=torch.float64, requires_grad=True)
    mapped = torch.func.vmap(lambda a, c: clipped_gru_scan(a, h0, c, 2.0)[0])(xp, w)
    each = torch.stack([clipped_gru_scan(xp[i], h0, w[i], 2.0)[0] for i in range(P)])
    torch.testing.assert_close(mapped, each, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(each)
    for a, b in zip(torch.autograd.grad(mapped, (xp, h0, w), g), torch.autograd.grad(each, (xp, h0, w), g)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

    C, G, K, F = 3, 4, 2, 2

    def r(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    per_member = [r(P, T, 1, B, 3 * C), r(P, T, 1, B, 3 * G), r(P, 1, B, C), r(P, 1, B, G), r(P, 1, B, F)]
    weights = [r(P, 1, 3 * C, C), r(P, 1, 3 * C, F), r(P, 1, 2 * K, C), r(P, 1, 2 * K), r(P, 1, 3 * G, K),
               r(P, 1, 3 * G, G), r(P, 1, F, G)]
    eps = torch.randn(T, 1, B, K, dtype=torch.float64)  # shared

    def decode(ci, ge, h, g, f, *ws):
        return controlled_decode(ci, ge, h, g, f, DecoderWeights(*ws), None, None, eps, 2.0)

    mapped = torch.func.vmap(decode)(*per_member, *weights)
    each = [torch.stack(o) for o in zip(*(decode(*(a[i] for a in per_member + weights)) for i in range(P)))]
    inputs = per_member + weights
    g = [torch.randn_like(o) for o in each]
    for a, b in zip(mapped, each):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    ga = torch.autograd.grad(sum((gi * o).sum() for gi, o in zip(g, mapped)), inputs)
    gb = torch.autograd.grad(sum((gi * o).sum() for gi, o in zip(g, each)), inputs)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_noise_is_an_input():
    # The same Noise gives the same outputs in train mode; every drawn site changes them; the
    # default draws from torch's global generator (torch.manual_seed reproduces a run).
    model = _model(co_dim=2, ext_input_dim=2, dropout=0.3)
    x, ext = _spikes(), torch.randn(3, 7, 2, dtype=torch.float64)
    noise = draw_noise(model.config, 3, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a, b = model(x, ext, noise=noise), model(x, ext, noise=noise)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    for site in Noise._fields:
        changed = noise._replace(**{site: torch.rand_like(getattr(noise, site))})
        assert not torch.equal(model(x, ext, noise=changed).obs_params, a.obs_params), site
    model.eval()  # eval: dropout off, only the posterior normals matter
    undropped = noise._replace(**{f: None for f in Noise._fields if not f.endswith("eps")})
    assert torch.equal(model(x, ext, noise=noise).obs_params, model(x, ext, noise=undropped).obs_params)


@pytest.mark.parametrize("sample,masks", [(True, True), (False, False)])
def test_controlled_decoder_passes_gradcheck(sample, masks):
    # Reference: torch.autograd.gradcheck (finite differences, float64) of the hand-written
    # backward, every differentiable input at once; initial states beyond the clip so both clip
    # masks are exercised; with dropout multipliers and posterior samples, and without (means).
    torch.manual_seed(6)
    T, D, B, C, G, K, F = 4, 2, 3, 3, 4, 2, 2

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, dtype=torch.float64) * scale).requires_grad_()

    args = [r(T, D, B, 3 * C), r(T, D, B, 3 * G), r(D, B, C, scale=2.5), r(D, B, G, scale=2.5), r(D, B, F),
            r(D, 3 * C, C), r(D, 3 * C, F), r(D, 2 * K, C), r(D, 2 * K), r(D, 3 * G, K), r(D, 3 * G, G), r(D, F, G)]

    def keep(*shape):
        return (torch.rand(*shape, dtype=torch.float64) > 0.3) / 0.7 if masks else None

    fixed = (keep(T, D, B, F), keep(T, D, B, G), torch.randn(T, D, B, K, dtype=torch.float64) if sample else None)
    assert torch.autograd.gradcheck(lambda *a: controlled_decode(*a[:5], DecoderWeights(*a[5:]), *fixed, 2.0),
                                    tuple(args))


def test_full_model_gradcheck_autonomous():
    # Reference: finite differences through the whole model (encoder and generator both run the
    # fused scan), w.r.t. the encoder input.
    model = _model(co_dim=0, dropout=0.0)
    model.eval()
    target = _spikes(B=2, T=4)
    x = target.clone().requires_grad_()

    def f(x):
        out = model(x, sample=False)
        return model.observation.nll(out.obs_params, target).sum() + out.kl_ic.sum()

    assert torch.autograd.gradcheck(f, (x,))


def test_sample_false_is_deterministic_and_seed_reproduces():
    model = _model(co_dim=2, dropout=0.3)
    x = _spikes()
    model.eval()
    a, b = model(x, sample=False), model(x, sample=False)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    s1, s2 = model(x), model(x)
    assert not torch.equal(s1.factors, s2.factors)  # sampling draws fresh g0 and u
    torch.manual_seed(11)
    r1 = model(x)
    torch.manual_seed(11)
    r2 = model(x)
    for u, v in zip(r1, r2):
        assert torch.equal(u, v)


def test_dropout_only_in_train_mode():
    model = _model(co_dim=2, dropout=0.5)
    x = _spikes()
    model.train()
    assert not torch.equal(model(x, sample=False).factors, model(x, sample=False).factors)
    model.eval()
    assert torch.equal(model(x, sample=False).factors, model(x, sample=False).factors)


def test_controller_input_lag():
    # Documented lag: e_t = [fwd_{t-1}, bwd_{t+1}], so changing x at t0 changes the forward half
    # only after t0, the backward half only before t0, and e_{t0} not at all.
    model = _model(co_dim=2)
    H = SMALL["ci_enc_dim"]
    x = _spikes(B=2, T=9)
    t0 = 4
    x2 = x.clone()
    x2[:, t0] += 3.0
    e1, e2 = model.encode_controller_inputs(x), model.encode_controller_inputs(x2)
    changed = (e1 - e2).abs().amax(dim=(0,)) > 1e-12  # (T, 2H)
    fwd_changed, bwd_changed = changed[:, :H].any(-1), changed[:, H:].any(-1)
    assert fwd_changed.tolist() == [t > t0 for t in range(9)]
    assert bwd_changed.tolist() == [t < t0 for t in range(9)]
    assert (e1[:, 0, :H] == 0).all() and (e1[:, -1, H:] == 0).all()  # zeros past the edges


def test_controller_loop_gradients_reach_every_parameter():
    model = _model(co_dim=2, ext_input_dim=2)
    x = _spikes()
    out = model(x, torch.randn(3, 7, 2, dtype=torch.float64))
    loss = model.observation.nll(out.obs_params, x).mean() + out.kl_ic.mean() + out.kl_co.mean()
    loss = loss + sum(model.l2_penalties().values())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters())


def test_l2_penalties_match_hand_computation():
    # Reference: 0.5 * sum(W^2) / W.numel() written out with the weights.
    model = _model(co_dim=2)
    with torch.no_grad():
        model.generator.weight_hh.fill_(0.5)
        model.controller.weight_hh.fill_(2.0)
    l2 = model.l2_penalties()
    assert l2["l2_gen"].item() == pytest.approx(0.5 * 0.25)
    assert l2["l2_con"].item() == pytest.approx(0.5 * 4.0)


@pytest.mark.parametrize(
    "kw",
    [
        dict(n_neurons=0),
        dict(n_neurons=5, gen_dim=-1),
        dict(n_neurons=5, fac_dim=2.5),
        dict(n_neurons=5, dropout=1.0),
        dict(n_neurons=5, dropout=-0.1),
        dict(n_neurons=5, co_dim=2, con_dim=0),
        dict(n_neurons=5, cell_clip=0.0),
        dict(n_neurons=5, co_prior_tau=float("nan")),
        dict(n_neurons=5, observation="binomial"),
        dict(n_neurons=5, ic_post_var_min=-1e-4),
    ],
)
def test_bad_config_raises_config_error(kw):
    with pytest.raises(ConfigError):
        LFADSConfig(**kw)


def test_bad_inputs_raise_data_error():
    model = _model(torch.float32, co_dim=0, ext_input_dim=2)
    with pytest.raises(DataError, match="encod_dim"):
        model(torch.zeros(2, 5, 4), torch.zeros(2, 5, 2))
    with pytest.raises(DataError, match="ext_input"):
        model(torch.zeros(2, 5, 5))
    with pytest.raises(DataError, match="dtype"):
        model(torch.zeros(2, 5, 5, dtype=torch.float64), torch.zeros(2, 5, 2))


@pytest.mark.parametrize("co_dim", [0, 2])
def test_tiny_model_overfits_tiny_batch(co_dim):
    # Smoke test: Adam on one small batch drives the training loss well down.
    torch.manual_seed(0)
    model = LFADS(LFADSConfig(n_neurons=6, **{**SMALL, "gen_dim": 16, "fac_dim": 4}, co_dim=co_dim, dropout=0.0))
    T = 20
    t = torch.arange(T)[:, None]
    rates = 0.5 + 2.0 * (1 + torch.sin(t / 3.0 + torch.arange(6)[None] + torch.arange(4)[:, None, None])) / 2
    x = torch.poisson(rates, generator=torch.Generator().manual_seed(0)).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_fn():
        out = model(x)
        return model.observation.nll(out.obs_params, x).mean() + 1e-3 * (out.kl_ic.mean() + out.kl_co.mean())

    first = loss_fn().item()
    for _ in range(150):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert loss.item() < 0.75 * first
