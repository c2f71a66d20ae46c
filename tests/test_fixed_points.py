"""lfads_nb.dynamics.fixed_points against closed forms: a linear field and a linear map (fixed point
c, eigenvalues of the matrix), and the Lorenz equations (three fixed points, eigenvalues of the
origin from the characteristic polynomial); classification by the continuous (Re lambda) and
discrete (|lambda|) conventions; trained-size LFADS generators (GRU map, NODE field) checked by
evaluating their own step / vector field at the points found; the PCA figure; bad input."""
import numpy as np
import pytest
import torch
import xarray as xr

import lfads_nb
from data_generators import attractor, chaotic_rnn, integrate_lorenz, true_fixed_points
from lfads_nb import dynamics
from lfads_nb.errors import ConfigError, DataError

torch.set_num_threads(1)
CENTRE = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)


class LinearField(torch.nn.Module):
    """dg/dt = A (g - c), with no inputs."""

    def __init__(self, matrix):
        super().__init__()
        self.matrix = torch.as_tensor(matrix, dtype=torch.float64)
        self.dim = 3

    def vector_field(self, g, inputs):
        return (g - CENTRE) @ self.matrix.T


class LinearMap(torch.nn.Module):
    """g_t = c + M (g_{t-1} - c): a discrete map with the generator's step interface."""

    def __init__(self, matrix):
        super().__init__()
        self.matrix = torch.as_tensor(matrix, dtype=torch.float64)
        self.dim = 3

    def step(self, g, inputs):
        return CENTRE + (g - CENTRE) @ self.matrix.T


class LorenzField(torch.nn.Module):
    """The Lorenz equations (sigma 10, rho 28, beta 8/3) with the NODE generator's interface."""

    dim = 3

    def vector_field(self, g, inputs):
        x, y, z = g.unbind(-1)
        return torch.stack([10 * (y - x), x * (28 - z) - y, x * y - 8 / 3 * z], -1)


def _cloud(n=400, seed=0):
    return CENTRE.numpy() + np.random.default_rng(seed).standard_normal((n, 3))


@pytest.mark.parametrize("matrix, stability, n_unstable", [
    (np.diag([-1.0, -0.5, -2.0]), "stable", 0),
    (np.diag([0.7, -0.5, -2.0]), "saddle", 1),
    (np.array([[0.2, 1.0, 0.0], [-1.0, 0.2, 0.0], [0.0, 0.0, 0.3]]), "unstable", 3),
])
def test_linear_field_fixed_point_and_eigenvalues(matrix, stability, n_unstable):
    """Closed form: the only zero of A (g - c) is c, and the Jacobian is A (eigenvalues of A)."""
    found = dynamics.fixed_points(LinearField(matrix), _cloud(), n_starts=32, adam_steps=300, lr=0.05)
    assert found.sizes["fixed_point"] == 1 and found.attrs["dynamics"] == "field"
    np.testing.assert_allclose(found.state.values[0], CENTRE.numpy(), atol=1e-9)
    got = np.sort_complex(found.eigenvalue_real.values[0] + 1j * found.eigenvalue_imag.values[0])
    np.testing.assert_allclose(got, np.sort_complex(np.linalg.eigvals(matrix)), atol=1e-9)
    assert found.stability.values[0] == stability and found.n_unstable.values[0] == n_unstable


@pytest.mark.parametrize("matrix, stability, n_unstable", [
    (np.diag([0.9, 0.5, -0.8]), "stable", 0),  # |lambda| < 1 although one is negative
    (np.diag([1.5, 0.5, -1.2]), "saddle", 2),  # -1.2 grows in size: unstable for a map
])
def test_linear_map_uses_the_discrete_convention(matrix, stability, n_unstable):
    """Closed form: F(g) = c + M (g - c) has F(c) = c and Jacobian M; stability is |lambda| vs 1."""
    found = dynamics.fixed_points(LinearMap(matrix), _cloud(), n_starts=32, adam_steps=300, lr=0.05)
    assert found.sizes["fixed_point"] == 1 and found.attrs["dynamics"] == "map"
    np.testing.assert_allclose(found.state.values[0], CENTRE.numpy(), atol=1e-9)
    np.testing.assert_allclose(np.sort(found.eigenvalue_real.values[0]), np.sort(np.diag(matrix)), atol=1e-9)
    assert found.stability.values[0] == stability and found.n_unstable.values[0] == n_unstable


def test_lorenz_three_fixed_points_from_its_trajectories():
    """Closed form: (0, 0, 0) and (+-sqrt(beta (rho - 1)), +-sqrt(beta (rho - 1)), rho - 1); the
    origin's eigenvalues are -beta and (-(sigma + 1) +- sqrt((sigma + 1)^2 + 4 sigma (rho - 1))) / 2,
    one unstable direction; the other two have two (a complex pair with Re > 0 at rho 28)."""
    states = integrate_lorenz(np.array([[1.0, 1.0, 20.0]]), 1500, 0.01)[:, 300:]
    found = dynamics.fixed_points(LorenzField(), states, n_starts=64, adam_steps=500, lr=0.1)
    r = np.sqrt(8 / 3 * 27)
    expected = np.array([[0, 0, 0], [r, r, 27], [-r, -r, 27]])
    assert found.sizes["fixed_point"] == 3
    distances = np.linalg.norm(expected[:, None] - found.state.values[None], axis=-1)
    assert distances.min(axis=1).max() < 1e-8
    origin = int(np.argmin(np.linalg.norm(found.state.values, axis=1)))
    eig = np.sort(found.eigenvalue_real.values[origin])
    root = np.sqrt(11**2 + 4 * 10 * 27)
    np.testing.assert_allclose(eig, np.sort([-8 / 3, (-11 + root) / 2, (-11 - root) / 2]), atol=1e-9)
    assert list(np.sort(found.n_unstable.values)) == [1, 2, 2]
    assert set(found.stability.values) == {"saddle"}


def test_true_fixed_points_of_the_attractor_data_are_zeros_of_the_field():
    """data_generators.true_fixed_points undoes the z-scoring into zeros of each system's field."""
    from data_generators.attractors import SYSTEMS
    ds = attractor("lorenz", n_trials=5, n_bins=10)
    for system in SYSTEMS:
        ds.attrs["system"] = system
        raw = true_fixed_points(ds) * np.array(ds.attrs["state_std"]) + np.array(ds.attrs["state_mean"])
        assert len(raw) >= 2 and np.abs(SYSTEMS[system][0](raw)).max() < 1e-9
    with pytest.raises(ValueError, match="attractor"):
        true_fixed_points(chaotic_rnn(seed=0, n_conditions=2, trials_per_condition=5, n_bins=5))


def test_merging_and_unconverged_starts():
    """Copies of one fixed point merge into one; a field without zeros (f = 1) yields none."""

    class NoZero(torch.nn.Module):
        dim = 3

        def vector_field(self, g, inputs):
            return 0 * g + 1

    none = dynamics.fixed_points(NoZero(), _cloud(), n_starts=8, adam_steps=50)
    assert none.sizes["fixed_point"] == 0 and none.attrs["n_converged"] == 0
    one = dynamics.fixed_points(LinearField(-np.eye(3)), _cloud(), n_starts=16, adam_steps=100)
    assert one.attrs["n_converged"] == 16 and one.sizes["fixed_point"] == 1


@pytest.mark.parametrize("generator", ["gru", "node"])
def test_lfads_generators_points_are_fixed_under_their_own_dynamics(generator):
    """Independent check on a (briefly trained) LFADS: at each point found, the model's own float64
    step returns the point (GRU map) or its vector field vanishes (NODE), with zero inputs; and the
    Jacobian's eigenvalues match central finite differences of the same dynamics."""
    ds = chaotic_rnn(seed=0, n_conditions=4, trials_per_condition=4, n_units=12, n_bins=20)
    model = lfads_nb.build_model(ds, seed=0, generator=generator, co_dim=1, gen_dim=6, fac_dim=4, ic_dim=4,
                                 ic_enc_dim=8, ci_enc_dim=4, con_dim=4, node_hidden=16)
    states = lfads_nb.infer(model, ds).generator_states
    found = dynamics.fixed_points(model, states, n_starts=64, adam_steps=400, lr=0.02)
    assert found.sizes["fixed_point"] >= 1
    gen = model.generator.double()
    g = torch.as_tensor(found.state.values)
    zeros = g.new_zeros(len(g), 1)
    with torch.no_grad():
        residual = gen.vector_field(g, zeros) if generator == "node" else gen.step(g, zeros) - g
    assert residual.abs().max() < 1e-8
    velocity = dynamics.autonomous(model).velocity
    eps, g0 = 1e-6, g[:1]
    jac = torch.stack([(velocity(g0 + eps * e) - velocity(g0 - eps * e))[0] / (2 * eps) for e in torch.eye(6, dtype=torch.float64)], 1)
    if generator == "gru":
        jac = jac + torch.eye(6, dtype=torch.float64)
    expected = np.sort_complex(np.linalg.eigvals(jac.numpy()))
    got = np.sort_complex(found.eigenvalue_real.values[0] + 1j * found.eigenvalue_imag.values[0])
    np.testing.assert_allclose(got, expected, atol=1e-5)

    fig = dynamics.plot_fixed_points(model, states, found)
    names = {t.name for t in fig.data}
    assert {"inferred trajectories", "flow (zero inputs)"} <= names
    assert any(n and n.endswith("fixed point") for n in names)


def test_pca_is_shared_and_pads_small_states():
    """PCA of 2-D states pads a zero third component; projecting and lifting round-trips the span."""
    x = np.random.default_rng(0).standard_normal((50, 2)) @ np.array([[2.0, 0.0], [0.0, 0.5]])
    basis = dynamics.pca(x)
    assert basis.components.shape == (3, 2) and basis.explained[2] == 0
    np.testing.assert_allclose(basis.lift(basis.project(x)), x, atol=1e-12)
    assert basis.explained[0] > basis.explained[1]


def test_bad_input_names_the_problem():
    ds = chaotic_rnn(seed=0, n_conditions=2, trials_per_condition=4, n_units=8, n_bins=10)
    model = lfads_nb.build_model(ds, seed=0, co_dim=0, gen_dim=5, fac_dim=3, ic_dim=3, ic_enc_dim=4)
    out = lfads_nb.infer(model, ds)
    with pytest.raises(DataError, match="generator states"):
        dynamics.fixed_points(model, out.factors)
    with pytest.raises(DataError, match="finite"):
        dynamics.fixed_points(model, np.full((4, 5), np.nan))
    ndt = lfads_nb.build_model(ds, seed=0, model="ndt", d_model=8, n_layers=1)
    with pytest.raises(ConfigError, match="NDT has no generator"):
        dynamics.fixed_points(ndt, out.generator_states)
    with pytest.raises(ConfigError, match="n_starts"):
        dynamics.fixed_points(model, out.generator_states, n_starts=0)
    assert isinstance(out.generator_states, xr.DataArray)


def test_affine_map_recovers_points_in_true_space():
    """States that are an exact affine image of the latents map back exactly (closed form); the
    nearest distances are the distances to the closest point, inf where nothing was found."""
    rng = np.random.default_rng(1)
    latents = xr.DataArray(rng.standard_normal((6, 20, 3)), dims=("trial", "time", "latent"),
                           coords={"latent": ["x", "y", "z"]})
    mix, shift = rng.standard_normal((3, 5)), rng.standard_normal(5)
    states = xr.DataArray(latents.values @ mix + shift, dims=("trial", "time", "generator"))
    true = np.array([[0.0, 0.0, -2.0], [1.0, 1.0, 0.5]])
    mapped = dynamics.to_latent_space(true @ mix + shift, states, latents)
    np.testing.assert_allclose(mapped, true, atol=1e-9)
    np.testing.assert_allclose(dynamics.nearest_distances(true, mapped[:1] + [0.3, 0.0, 0.4]), [0.5, np.sqrt(0.7**2 + 1.0**2 + 2.1**2)])
    assert np.isinf(dynamics.nearest_distances(true, np.zeros((0, 3)))).all()
    fig = dynamics.plot_true_space(latents, true, {"node_3": mapped})
    assert {"true fixed points", "found by node_3"} <= {t.name for t in fig.data}
    with pytest.raises(DataError, match="same trials"):
        dynamics.to_latent_space(mapped, states[:2], latents)
