"""The neural-ODE generator (LFADSConfig(generator="node")): the fixed-step integrators against
a closed form (a linear vector field, whose flow is the matrix exponential, scipy.linalg.expm),
their order of convergence, the generator's step against its formula, the fused kernel
(``_fused_node.node_scan``) against finite differences and against the step loop in float64,
its vmap rule, the fused model against the step loop (the fused kernel without a controller,
the loop with one), and the model end to end in training, inference, checkpoints and PBT."""
import dataclasses

import numpy as np
import pytest
import scipy.linalg
import torch

import lfads_nb
from data_generators import chaotic_rnn
from lfads_nb.errors import ConfigError
from lfads_nb.models._fused_node import node_scan
from lfads_nb.models.lfads import LFADS, LFADSConfig, NeuralODEGenerator, draw_noise, integrate_fixed_step
from lfads_nb.checkpoint import load_checkpoint
from lfads_nb.tune.pbt import PBTConfig, pbt

torch.set_num_threads(1)
SMALL = dict(ic_enc_dim=6, ci_enc_dim=5, con_dim=7, ic_dim=4, gen_dim=3, fac_dim=3, generator="node", node_hidden=16)
A = torch.tensor([[-0.2, 1.0, 0.0], [-1.0, -0.2, 0.3], [0.0, -0.3, -0.5]], dtype=torch.float64)


def _linear(g):
    return g @ A.T


def _exact(g0, duration):
    return g0 @ torch.as_tensor(scipy.linalg.expm(A.numpy() * duration)).T


@pytest.mark.parametrize("solver, substeps, tol", [("rk4", 100, 1e-8), ("euler", 1000, 2e-3)])
def test_integrators_match_the_matrix_exponential(solver, substeps, tol):
    """dg/dt = A g from g0: g(t) = expm(A t) g0 (closed form)."""
    g0 = torch.tensor([[1.0, -0.5, 2.0], [0.3, 0.1, -1.0]], dtype=torch.float64)
    got = integrate_fixed_step(_linear, g0, 2.0, substeps, solver)
    assert (got - _exact(g0, 2.0)).abs().max() < tol


@pytest.mark.parametrize("solver, order", [("euler", 1), ("rk4", 4)])
def test_integrators_converge_at_their_order(solver, order):
    """Halving the step divides the global error by 2^order (1 for Euler, 4 for RK4)."""
    g0 = torch.tensor([[1.0, -0.5, 2.0]], dtype=torch.float64)
    errors = [(integrate_fixed_step(_linear, g0, 1.0, n, solver) - _exact(g0, 1.0)).norm() for n in (8, 16, 32)]
    for coarse, fine in zip(errors, errors[1:]):
        assert float(torch.log2(coarse / fine)) == pytest.approx(order, abs=0.15)


def test_generator_step_is_the_formula():
    torch.manual_seed(0)
    gen = NeuralODEGenerator(2, 3, 8, "euler", 3, 0.3).double()
    g, v = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    f = lambda s: torch.tanh(s @ gen.weight_hh.T + v @ gen.weight_ih.T + gen.bias) @ gen.weight_out.T + gen.bias_out
    expected = g
    for _ in range(3):  # three Euler steps of 0.1, the inputs held
        expected = expected + 0.1 * f(expected)
    torch.testing.assert_close(gen.step(g, v), expected)


def test_bad_node_options_are_config_errors():
    with pytest.raises(ConfigError, match="generator must be one of"):
        LFADSConfig(n_neurons=3, generator="lstm")
    with pytest.raises(ConfigError, match="node_solver"):
        LFADSConfig(n_neurons=3, generator="node", node_solver="dopri5")
    with pytest.raises(ConfigError, match="node_substeps"):
        LFADSConfig(n_neurons=3, generator="node", node_substeps=0)
    with pytest.raises(ConfigError, match="node_step"):
        LFADSConfig(n_neurons=3, generator="node", node_step=0.0)


def _scan_args(T, D, B, H, M, per_bin, seed=0):
    """Random float64 inputs of ``node_scan``: xp (T, D, B, M) per bin or (D, M) for all bins,
    g0, w_hh, w_out (scaled so the field moves the state by a fraction of its size), b_out."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_()

    return [r(*((T, D, B, M) if per_bin else (D, M))), r(D, B, H), r(D, M, H), r(D, H, M, scale=0.5), r(D, H)]


@pytest.mark.parametrize("solver, substeps", [("euler", 1), ("euler", 3), ("rk4", 2)])
@pytest.mark.parametrize("per_bin", [True, False])
def test_fused_node_scan_passes_gradcheck(solver, substeps, per_bin):
    # Reference: torch.autograd.gradcheck (finite differences, float64) of the hand-written
    # backward through every stage of the solver, every differentiable input at once; inputs per
    # bin (external inputs) and one projection for all bins (no inputs: the bias).
    args = _scan_args(4, 2, 3, 3, 8, per_bin)
    assert torch.autograd.gradcheck(lambda *a: node_scan(*a, 0.1 / substeps, substeps, solver, 4), tuple(args))


@pytest.mark.parametrize("solver, substeps", [("euler", 1), ("rk4", 2)])
@pytest.mark.parametrize("inputs", [0, 2])
def test_fused_node_scan_equals_step_loop(solver, substeps, inputs):
    # Reference: NeuralODEGenerator.step called bin by bin (plain autograd: euler_step / rk4_step
    # over vector_field), values and gradients w.r.t. the initial state, the inputs and every
    # weight, float64. ``scan`` is node_scan on the generator's weights.
    torch.manual_seed(2)
    gen = NeuralODEGenerator(inputs, 3, 16, solver, substeps, 0.3).double()
    with torch.no_grad():
        gen.bias.normal_(), gen.bias_out.normal_()
    B, T = 4, 9
    g0 = torch.randn(B, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, T, inputs, dtype=torch.float64, requires_grad=True)
    fused = gen.scan(g0, v)
    g, ref = g0, []
    for t in range(T):
        g = gen.step(g, v[:, t])
        ref.append(g)
    ref = torch.stack(ref, dim=1)
    torch.testing.assert_close(fused, ref, rtol=1e-12, atol=1e-12)
    weight = torch.randn_like(ref)
    wrt = [g0, v] + list(gen.parameters()) if inputs else [g0] + [p for n, p in gen.named_parameters() if n != "weight_ih"]
    for a, b in zip(torch.autograd.grad((weight * fused).sum(), wrt), torch.autograd.grad((weight * ref).sum(), wrt)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("per_bin", [True, False])
def test_fused_node_scan_vmap_rule_equals_per_member_calls(per_bin):
    # Reference: each member's own node_scan call. Under torch.func.vmap the mapped axis folds into
    # the kernel's D axis; values and gradients must match, with a shared (unmapped) initial state.
    P, T, D, B, H, M = 3, 4, 1, 2, 3, 5
    members = [_scan_args(T, D, B, H, M, per_bin, seed=i) for i in range(P)]
    xp, _, w_hh, w_out, b_out = (torch.stack([m[k] for m in members]).detach().requires_grad_() for k in range(5))
    g0 = members[0][1]

    def scan(x, a, b, c):
        return node_scan(x, g0, a, b, c, 0.05, 2, "rk4", T)

    mapped = torch.func.vmap(scan)(xp, w_hh, w_out, b_out)
    each = torch.stack([scan(xp[i], w_hh[i], w_out[i], b_out[i]) for i in range(P)])
    torch.testing.assert_close(mapped, each, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(each)
    wrt = (xp, g0, w_hh, w_out, b_out)
    for a, b in zip(torch.autograd.grad(mapped, wrt, g), torch.autograd.grad(each, wrt, g)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("co_dim, solver", [(0, "euler"), (0, "rk4"), (2, "rk4")])
def test_fused_model_equals_step_loop_and_follows_the_ode(co_dim, solver):
    """LFADS(fused=True) with a NODE generator (the fused kernel without a controller, the step
    loop with one) against LFADS(fused=False) in train mode with the same Noise: the same outputs
    and gradients of every parameter (float64); and its states follow g_t = step(g_{t-1}, [u_t,
    ext_t]) by hand."""
    torch.manual_seed(1)
    config = LFADSConfig(n_neurons=5, co_dim=co_dim, ext_input_dim=1, node_solver=solver, node_substeps=2,
                         dropout=0.2, **SMALL)
    fused = LFADS(config, fused=True).double()
    loop = LFADS(config, fused=False).double()
    loop.load_state_dict(fused.state_dict())
    x, ext = torch.rand(3, 6, 5, dtype=torch.float64), torch.randn(3, 6, 1, dtype=torch.float64)
    noise = draw_noise(config, 3, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a, b = fused(x, ext, noise=noise), loop(x, ext, noise=noise)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)
    weight = torch.randn_like(a.obs_params)
    grads = [torch.autograd.grad((weight * out.obs_params).sum(), list(m.parameters()), allow_unused=True)
             for m, out in ((fused, a), (loop, b))]
    for (name, p), u, v in zip(fused.named_parameters(), *grads):
        if p.numel():
            torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12, msg=name)
    fused.eval()
    out = fused(x, ext, sample=False)
    g = fused.ic_to_g0(out.ic_mean)
    for t in range(6):
        g = fused.generator.step(g, torch.cat([out.inputs[:, t], ext[:, t]], dim=-1))
        torch.testing.assert_close(out.gen_states[:, t], g)


def _data():
    return chaotic_rnn(seed=0, n_units=12, n_bins=8, n_conditions=10, trials_per_condition=3)


class _Quiet:
    def start(self, total):
        pass

    def update(self, row, example):
        self.example = example

    stop_requested = False

    def finish(self, history, message):
        pass


@pytest.mark.parametrize("co_dim", [0, 2])
def test_node_trains_infers_and_round_trips_a_checkpoint(tmp_path, co_dim):
    ds = _data()
    model = lfads_nb.build_model(ds, seed=0, co_dim=co_dim, **SMALL)
    assert isinstance(model.generator, NeuralODEGenerator)
    progress = _Quiet()
    result = lfads_nb.train(model, ds, lfads_nb.TrainConfig(max_epochs=6, batch_size=8, seed=0),
                            checkpoint_dir=tmp_path, progress=progress)
    h = result.history
    assert np.isfinite(h["train_loss"]).all() and h["train_loss"].iloc[-1] < h["train_loss"].iloc[0]
    assert progress.example["rates"].shape == (8, 3)  # the dashboard's example trial
    out = lfads_nb.infer(result.model, ds)
    assert out["generator_states"].sizes["generator"] == 3 and np.isfinite(out["rates"].values).all()
    ckpt = load_checkpoint(tmp_path / "best.pt")  # weights_only=True inside
    assert ckpt["model_config"]["generator"] == "node"
    loaded = lfads_nb.load_model(tmp_path / "best.pt")
    assert isinstance(loaded.generator, NeuralODEGenerator)
    np.testing.assert_allclose(lfads_nb.infer(loaded, ds)["rates"].values, out["rates"].values, rtol=1e-5)


def test_node_population_based_training(tmp_path):
    ds = _data()
    sizes = {k: v for k, v in SMALL.items()}
    result = pbt(ds, pbt_config=PBTConfig(population=3, generation_epochs=2, max_generations=2, seed=1),
                 train_config=lfads_nb.TrainConfig(batch_size=8, kl_ramp_epochs=2, l2_ramp_epochs=2),
                 model_sizes={**sizes, "co_dim": 2}, checkpoint_dir=tmp_path, progress=_PBTQuiet())
    assert result.model.config.generator == "node"
    assert np.isfinite(result.history["fitness"].values).any()
    loaded = lfads_nb.load_model(tmp_path / "best.pt")
    assert dataclasses.asdict(loaded.config) == dataclasses.asdict(result.model.config)
    assert np.isfinite(lfads_nb.infer(loaded, ds)["rates"].values).all()


class _PBTQuiet:
    def epoch(self, generation, epoch, metrics):
        pass

    def generation(self, history):
        pass


def test_population_vmap_of_node_members_equals_separate_models():
    """The population (torch.func.vmap over stacked weights) runs the NODE step loop per member:
    its outputs equal P separate models' in float64 (reference: the separate models)."""
    from lfads_nb.tune.population import PopulationModel

    config = LFADSConfig(n_neurons=5, co_dim=2, node_solver="rk4", node_substeps=2, **SMALL)
    members = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        members.append(LFADS(config).double().eval())
    pop = PopulationModel(members).eval()
    x = torch.rand(2, 3, 6, 5, dtype=torch.float64)
    got = pop(x, sample=False)
    for i, member in enumerate(members):
        torch.testing.assert_close(got.obs_params[i], member(x[i], sample=False).obs_params)


def test_ic_posterior_starts_at_its_initial_variance():
    """ic_post_var_init sets the start of the IC posterior's log-variance (its bias) and nothing
    else: the same seed gives the same weights otherwise, and the default (1) is the old start."""
    torch.manual_seed(0)
    default = LFADS(LFADSConfig(n_neurons=5, **SMALL))
    torch.manual_seed(0)
    narrow = LFADS(LFADSConfig(n_neurons=5, ic_post_var_init=0.01, **SMALL))
    ic_dim = SMALL["ic_dim"]
    assert torch.equal(default.ic_linear.bias, torch.zeros(2 * ic_dim))
    torch.testing.assert_close(narrow.ic_linear.bias[ic_dim:], torch.full((ic_dim,), float(np.log(0.01))))
    for (name, a), b in zip(default.state_dict().items(), narrow.state_dict().values()):
        if name != "ic_linear.bias":
            assert torch.equal(a, b), name
    with pytest.raises(ConfigError, match="ic_post_var_init"):
        LFADSConfig(n_neurons=5, ic_post_var_init=0.0)


def test_attractor_recipe_builds_the_models_of_tutorials_08_and_09():
    from data_generators import attractor
    from lfads_nb.recipes import ATTRACTOR_SIZES, attractor_model, attractor_training

    ds = attractor("lorenz", seed=0, n_trials=20, n_bins=12)
    node = attractor_model(ds, "node", 3, seed=0)
    gru = attractor_model(ds, "gru", 6, seed=0, ic_enc_dim=8)
    assert isinstance(node.generator, NeuralODEGenerator) and node.config.co_dim == 0
    assert (node.config.gen_dim, node.config.ic_dim, node.config.fac_dim) == (3, 3, 3)
    assert gru.config.gen_dim == 6 and gru.config.ic_enc_dim == 8
    assert node.config.ic_post_var_init == ATTRACTOR_SIZES["ic_post_var_init"]
    config = attractor_training(max_epochs=3, seed=2)
    assert (config.max_epochs, config.seed, config.lr_decay) == (3, 2, 1.0) and config.curriculum_bins > 0
    result = lfads_nb.train(node, ds, config, progress=_Quiet())
    assert result.history["train_bins"].tolist() == [5, 5, 5]
