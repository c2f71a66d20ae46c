"""The neural-ODE generator (LFADSConfig(generator="node")): the fixed-step integrators against
a closed form (a linear vector field, whose flow is the matrix exponential, scipy.linalg.expm),
their order of convergence, the generator's step against its formula, the fused flag falling
back to the step loop, and the model end to end in training, inference, checkpoints and PBT."""
import dataclasses

import numpy as np
import pytest
import scipy.linalg
import torch

import lfads_nb
from data_generators import chaotic_rnn
from lfads_nb.errors import ConfigError
from lfads_nb.models.lfads import LFADS, LFADSConfig, NeuralODEGenerator, integrate_fixed_step
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


@pytest.mark.parametrize("co_dim, solver", [(0, "euler"), (2, "rk4")])
def test_fused_model_falls_back_to_the_loop_and_follows_the_ode(co_dim, solver):
    """LFADS(fused=True) with a NODE generator runs the step loop: the same outputs and gradients
    as fused=False, and its states follow g_t = step(g_{t-1}, [u_t, ext_t]) by hand."""
    torch.manual_seed(1)
    config = LFADSConfig(n_neurons=5, co_dim=co_dim, ext_input_dim=1, node_solver=solver, node_substeps=2, **SMALL)
    fused = LFADS(config, fused=True).double()
    loop = LFADS(config, fused=False).double()
    loop.load_state_dict(fused.state_dict())
    x, ext = torch.rand(3, 6, 5, dtype=torch.float64), torch.randn(3, 6, 1, dtype=torch.float64)
    fused.eval(), loop.eval()
    a, b = fused(x, ext, sample=False), loop(x, ext, sample=False)
    torch.testing.assert_close(a.obs_params, b.obs_params)
    g = fused.ic_to_g0(a.ic_mean)
    for t in range(6):
        g = fused.generator.step(g, torch.cat([a.inputs[:, t], ext[:, t]], dim=-1))
        torch.testing.assert_close(a.gen_states[:, t], g)
    a.obs_params.sum().backward()
    assert fused.generator.weight_hh.grad.abs().sum() > 0


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
