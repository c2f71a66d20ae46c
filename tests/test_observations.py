"""Observation models checked against scipy.stats, closed forms and finite differences."""
import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import stats

from lfads_nb import LFADS, LFADSConfig
from lfads_nb.errors import ConfigError, DataError
from lfads_nb.models.observations import (
    Gamma,
    Gaussian,
    Poisson,
    ZeroInflatedGamma,
    make_observation,
    observation_spec,
)

torch.set_num_threads(1)


def _params(n_params, shape=(3, 4, 5), seed=0, low=-2.0, high=2.0):
    g = np.random.default_rng(seed)
    return torch.tensor(g.uniform(low, high, size=(*shape, n_params)), dtype=torch.float64)


def test_poisson_nll_matches_scipy_logpmf():
    # Reference: scipy.stats.poisson.logpmf (includes the log(x!) term).
    params = _params(1)
    counts = torch.tensor(np.random.default_rng(1).poisson(3.0, size=(3, 4, 5)), dtype=torch.float64)
    nll = Poisson(5).nll(params, counts)
    expected = -stats.poisson.logpmf(counts.numpy(), np.exp(params[..., 0].numpy()))
    assert nll.shape == (3, 4, 5)
    np.testing.assert_allclose(nll.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_gaussian_nll_matches_scipy_norm():
    # Reference: scipy.stats.norm.logpdf with scale = exp(logvar / 2).
    params = _params(2)
    x = torch.tensor(np.random.default_rng(2).normal(size=(3, 4, 5)))
    nll = Gaussian(5).nll(params, x)
    mu, logvar = params[..., 0].numpy(), params[..., 1].numpy()
    expected = -stats.norm.logpdf(x.numpy(), loc=mu, scale=np.exp(0.5 * logvar))
    np.testing.assert_allclose(nll.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_gamma_nll_matches_scipy_gamma_and_clamps_zeros():
    # Reference: scipy.stats.gamma.logpdf(x, a=alpha, scale=1/beta); zeros are evaluated at eps.
    params = _params(2, low=-1.0, high=1.5)
    x = torch.tensor(np.random.default_rng(3).gamma(2.0, 0.5, size=(3, 4, 5)))
    x[0, 0, :] = 0.0
    model = Gamma(5)
    nll = model.nll(params, x)
    alpha, beta = np.exp(params[..., 0].numpy()), np.exp(params[..., 1].numpy())
    expected = -stats.gamma.logpdf(np.maximum(x.numpy(), model.eps), a=alpha, scale=1.0 / beta)
    assert torch.isfinite(nll).all()
    np.testing.assert_allclose(nll.numpy(), expected, rtol=1e-10, atol=1e-10)


def test_zig_nll_matches_hand_computed_closed_form():
    # Reference: p(0) = 1 - q; p(x > 0) = q * Gamma(x - s_min; alpha, beta), written out by hand
    # with math.lgamma for one neuron (scale = 20 at init), including a zero and the s_min shift.
    model = ZeroInflatedGamma(1)
    a, b, c = 0.3, -0.4, 0.8
    sig = lambda v: 1.0 / (1.0 + math.exp(-v))  # noqa: E731
    alpha, beta, q = 20 * sig(a), 20 * sig(b), sig(c)
    params = torch.tensor([[[[a, b, c]]]], dtype=torch.float64).expand(1, 3, 1, 3)
    x = torch.tensor([[[0.0], [0.1 + 0.25], [1.7]]], dtype=torch.float64)
    nll = model.nll(params, x)[0, :, 0].tolist()

    def gamma_logpdf(y):
        return alpha * math.log(beta) - math.lgamma(alpha) + (alpha - 1) * math.log(y) - beta * y

    expected = [-math.log(1 - q), -math.log(q) - gamma_logpdf(0.25), -math.log(q) - gamma_logpdf(1.6)]
    np.testing.assert_allclose(nll, expected, rtol=1e-12)


def test_zig_nll_matches_scipy_shifted_gamma():
    # Reference: scipy.stats.gamma with loc = s_min for events, and log(1 - q) for zeros.
    model = ZeroInflatedGamma(5).double()
    with torch.no_grad():
        model.scale.copy_(torch.linspace(5, 30, 10).view(2, 5))
    params = _params(3)
    rng = np.random.default_rng(4)
    x = rng.gamma(2.0, 0.3, size=(3, 4, 5)) + model.s_min
    x[rng.random(x.shape) < 0.6] = 0.0
    nll = model.nll(params, torch.tensor(x)).detach().numpy()
    sig = 1.0 / (1.0 + np.exp(-params.numpy()))
    scale = model.scale.detach().numpy()
    alpha, beta, q = sig[..., 0] * scale[0], sig[..., 1] * scale[1], sig[..., 2]
    event = -np.log(q) - stats.gamma.logpdf(x, a=alpha, loc=model.s_min, scale=1.0 / beta)
    expected = np.where(x > 0, event, -np.log1p(-q))
    np.testing.assert_allclose(nll, expected, rtol=1e-10, atol=1e-10)


def test_means_match_distribution_means():
    # Reference: the .mean() of the corresponding scipy.stats distributions.
    p1, p2, p3 = _params(1), _params(2, low=-1, high=1), _params(3)
    np.testing.assert_allclose(Poisson(5).mean(p1).numpy(), stats.poisson(np.exp(p1[..., 0].numpy())).mean())
    np.testing.assert_allclose(Gaussian(5).mean(p2).numpy(), stats.norm(p2[..., 0].numpy(), 1.0).mean())
    a, b = np.exp(p2[..., 0].numpy()), np.exp(p2[..., 1].numpy())
    np.testing.assert_allclose(Gamma(5).mean(p2).numpy(), stats.gamma(a, scale=1 / b).mean(), rtol=1e-12)
    zig = ZeroInflatedGamma(5).double()
    sig = 1 / (1 + np.exp(-p3.numpy()))
    alpha, beta, q = 20 * sig[..., 0], 20 * sig[..., 1], sig[..., 2]
    expected = q * stats.gamma(alpha, loc=zig.s_min, scale=1 / beta).mean()
    np.testing.assert_allclose(zig.mean(p3).detach().numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("name", ["poisson", "gaussian", "gamma", "zig"])
def test_nll_gradients_pass_gradcheck(name):
    # Reference: torch.autograd.gradcheck (central finite differences, float64).
    model = make_observation(name, 4).double()
    params = _params(model.n_params, shape=(2, 3, 4), seed=5).requires_grad_()
    rng = np.random.default_rng(6)
    target = torch.tensor(rng.poisson(1.5, size=(2, 3, 4)), dtype=torch.float64)
    if name == "zig":
        target = torch.where(target > 0, target + model.s_min, target)
    assert torch.autograd.gradcheck(lambda p: model.nll(p, target), (params,))
    assert torch.autograd.gradcheck(lambda p: model.mean(p), (params,))


@pytest.mark.parametrize("name", ["poisson", "gaussian", "gamma", "zig"])
def test_nan_targets_give_finite_nll_and_gradients(name):
    model = make_observation(name, 4)
    params = _params(model.n_params, shape=(2, 3, 4), seed=7).float().requires_grad_()
    target = torch.ones(2, 3, 4)
    target[0, 1, :] = float("nan")
    nll = model.nll(params, target)
    assert torch.isfinite(nll).all()
    nll.sum().backward()
    assert torch.isfinite(params.grad).all()


def test_zig_penalty_pulls_scale_to_init():
    # Reference: 0.5 * 1e-4 * sum((scale - 20)^2), computed by hand.
    model = ZeroInflatedGamma(3)
    assert model.penalty().item() == 0.0
    with torch.no_grad():
        model.scale[0, 0] = 22.0
    assert model.penalty().item() == pytest.approx(0.5 * 1e-4 * 4.0)
    assert Poisson(3).penalty().item() == 0.0


def test_readout_shapes_and_unknown_name():
    obs = make_observation("zig", 7, fac_dim=5)
    params = obs(torch.randn(2, 3, 5))
    assert params.shape == (2, 3, 7, 3)
    assert obs.nll(params, torch.zeros(2, 3, 7)).shape == (2, 3, 7)
    with pytest.raises(ConfigError, match="poisson"):
        make_observation("negbinom", 7)
    with pytest.raises(ConfigError, match="readout"):
        make_observation("poisson", 7)(torch.randn(2, 3, 5))
    with pytest.raises(ConfigError):
        make_observation("poisson", 0)


def test_options_reach_the_model_from_keywords_or_a_spec():
    zig = make_observation("zig", 3, s_min=0.25, scale_init=5)
    assert (zig.s_min, zig.scale_init, zig.scale_penalty) == (0.25, 5.0, 1e-4)
    assert make_observation({"name": "gamma", "eps": 1e-3}, 3).eps == 1e-3
    assert make_observation({"name": "zig", "s_min": 0.2}, 3, s_min=0.3).s_min == 0.3  # keywords override


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"\['smin'\] for the 'zig'.*'s_min': 0.1, 'scale_init': 20.0"):
        make_observation("zig", 3, smin=0.1)
    with pytest.raises(ConfigError, match=r"\['eps'\] for the 'poisson' observation model; its options are none"):
        make_observation({"name": "poisson", "eps": 1e-3}, 3)


def test_observation_spec_plain_form():
    """Names stay names; options become Python floats so checkpoints (weights_only) can hold them."""
    assert observation_spec("zig") == observation_spec({"name": "zig"}) == "zig"
    spec = observation_spec({"name": "zig", "s_min": np.float32(0.5), "scale_init": 10})
    assert spec == {"name": "zig", "s_min": 0.5, "scale_init": 10.0}
    assert all(type(v) is float for k, v in spec.items() if k != "name")
    with pytest.raises(ConfigError, match="no 'name'"):
        observation_spec({"s_min": 0.1})
    with pytest.raises(ConfigError, match=r"s_min=\[0.1\] \(list\) must be a number"):
        observation_spec({"name": "zig", "s_min": [0.1]})
    with pytest.raises(ConfigError, match="Unknown observation model 'negbinom'"):
        observation_spec({"name": "negbinom"})


def test_config_options_reach_the_model_and_survive_a_weights_only_checkpoint(tmp_path):
    """Checkpoints store dataclasses.asdict(config) and rebuild with LFADSConfig(**saved)."""
    config = LFADSConfig(n_neurons=3, co_dim=0, observation={"name": "zig", "s_min": np.float64(0.05)})
    assert LFADS(config).observation.s_min == 0.05
    torch.save({"model_config": dataclasses.asdict(config)}, tmp_path / "c.pt")
    saved = torch.load(tmp_path / "c.pt", weights_only=True)["model_config"]
    assert LFADSConfig(**saved) == config
    assert LFADSConfig(n_neurons=3, observation={"name": "gamma"}).observation == "gamma"
    with pytest.raises(ConfigError, match=r"\['smin'\] for the 'zig'"):
        LFADSConfig(n_neurons=3, observation={"name": "zig", "smin": 0.1})


def test_init_from_data_starts_each_channel_at_its_mean():
    # Reference: numpy nanmean / nanvar of the same counts, computed independently.
    g = np.random.default_rng(3)
    counts = g.poisson([0.05, 0.3, 2.0], size=(40, 25, 3)).astype(float)
    counts[0, :5, 1] = np.nan  # unobserved bins are left out of the mean
    counts[:, :, 2] = 0.0  # a silent neuron: the floor keeps log finite
    target = torch.tensor(counts)
    poisson = make_observation("poisson", 3, fac_dim=4)
    poisson.init_from_data(target)
    expected = np.log(np.maximum(np.nanmean(counts, axis=(0, 1)), 1e-4))
    np.testing.assert_allclose(poisson.readout.bias.detach().numpy(), expected, rtol=1e-6)
    at_zero = poisson.mean(poisson(torch.zeros(1, 1, 4)))[0, 0]
    np.testing.assert_allclose(at_zero.detach().numpy(), np.exp(expected), rtol=1e-6)

    values = g.normal([1.0, -2.0, 5.0], [0.5, 2.0, 1.0], size=(40, 25, 3))
    values[1, 3, 0] = np.nan
    gaussian = make_observation("gaussian", 3, fac_dim=4)
    gaussian.init_from_data(torch.tensor(values))
    bias = gaussian.readout.bias.detach().numpy().reshape(3, 2)
    np.testing.assert_allclose(bias[:, 0], np.nanmean(values, axis=(0, 1)), rtol=1e-5)
    np.testing.assert_allclose(bias[:, 1], np.log(np.nanvar(values, axis=(0, 1))), rtol=1e-5)


def test_init_from_data_errors_and_default():
    with pytest.raises(ConfigError, match="no readout"):
        Poisson(3).init_from_data(torch.ones(2, 2, 3))
    all_nan = torch.ones(2, 2, 3)
    all_nan[..., 1] = float("nan")
    with pytest.raises(DataError, match=r"positions \[1\] have no observed"):
        make_observation("poisson", 3, fac_dim=2).init_from_data(all_nan)
    zig = make_observation("zig", 3, fac_dim=2)  # no data-dependent start: the bias stays 0
    zig.init_from_data(torch.ones(2, 2, 3))
    assert torch.equal(zig.readout.bias, torch.zeros(9))
