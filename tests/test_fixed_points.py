"""lfads_nb.dynamics.fixed_points against closed forms: a linear field run as an Euler or RK4 map and
a linear map (fixed point c; multipliers of the one-bin map, per-bin growth log|mu| and rotation
arg mu), a slow spiral whose field is stable and whose Euler map is not, the Lorenz equations
(three fixed points; the truth's per-bin eigenvalues from the closed-form Jacobian against the
published values and against the model path run on the same system); trained-size LFADS
generators (GRU map, NODE field) checked by evaluating their own step / vector field at the points
found and by finite differences of the step; the structure scores on a model that is an exact
affine image of Lorenz (all errors zero), a sped-up one (errors = the speed-up) and a rotated
saddle (angle = the rotation); bad input."""
import numpy as np
import pytest
import torch
import xarray as xr
from scipy.linalg import expm

import lfads_nb
from data_generators import attractor, chaotic_rnn, integrate_lorenz, true_fixed_points, true_jacobians
from lfads_nb import dynamics, plots
from lfads_nb.errors import ConfigError, DataError
from lfads_nb.models.lfads import integrate_fixed_step

torch.set_num_threads(1)
CENTRE = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)


class LinearField(torch.nn.Module):
    """dg/dt = A (g - c), with no inputs, run per bin (time ``h``) by ``substeps`` steps of ``solver``
    (the NODE generator's integrator)."""

    def __init__(self, matrix, h=0.1, solver="euler", substeps=1):
        super().__init__()
        self.matrix = torch.as_tensor(matrix, dtype=torch.float64)
        self.dim, self.h, self.solver, self.substeps = 3, h, solver, substeps

    def vector_field(self, g, inputs):
        return (g - CENTRE) @ self.matrix.T

    def step(self, g, inputs):
        return integrate_fixed_step(lambda s: self.vector_field(s, inputs), g, self.h, self.substeps, self.solver)


class LinearMap(torch.nn.Module):
    """g_t = c + M (g_{t-1} - c): a discrete map with the generator's step interface."""

    def __init__(self, matrix):
        super().__init__()
        self.matrix = torch.as_tensor(matrix, dtype=torch.float64)
        self.dim = 3

    def step(self, g, inputs):
        return CENTRE + (g - CENTRE) @ self.matrix.T


class LorenzField(torch.nn.Module):
    """The Lorenz equations (sigma 10, rho 28, beta 8/3) in the coordinates g = s A^T + b (A = I, b = 0:
    the equations themselves), time scaled by ``speed``, run over one bin of ``h`` time units by RK4
    with 4 substeps: the NODE generator's interface."""

    dim = 3

    def __init__(self, h=0.015, matrix=np.eye(3), offset=np.zeros(3), speed=1.0):
        super().__init__()
        self.h, self.speed = h, speed
        self.matrix, self.offset = torch.as_tensor(matrix, dtype=torch.float64), torch.as_tensor(offset, dtype=torch.float64)
        self.inverse = torch.linalg.inv(self.matrix)

    def vector_field(self, g, inputs):
        x, y, z = ((g - self.offset) @ self.inverse.T).unbind(-1)
        return self.speed * torch.stack([10 * (y - x), x * (28 - z) - y, x * y - 8 / 3 * z], -1) @ self.matrix.T

    def step(self, g, inputs):
        return integrate_fixed_step(lambda s: self.vector_field(s, inputs), g, self.h, 4, "rk4")


def _multipliers(found):
    return found.eigenvalue_real.values + 1j * found.eigenvalue_imag.values


def _cloud(n=400, seed=0):
    return CENTRE.numpy() + np.random.default_rng(seed).standard_normal((n, 3))


RK4 = lambda z: 1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24  # noqa: E731  RK4's amplification of dg/dt = lambda g


@pytest.mark.parametrize("matrix, stability, n_unstable", [
    (np.diag([-1.0, -0.5, -2.0]), "stable", 0),
    (np.diag([0.7, -0.5, -2.0]), "saddle", 1),
    (np.array([[0.2, 1.0, 0.0], [-1.0, 0.2, 0.0], [0.0, 0.0, 0.3]]), "unstable", 3),
])
@pytest.mark.parametrize("solver, substeps, amplification", [("euler", 1, lambda z: 1 + z), ("rk4", 2, RK4)])
def test_linear_field_is_classified_on_the_map_it_runs(matrix, stability, n_unstable, solver, substeps, amplification):
    """Closed form: the only zero of A (g - c) is c; one bin of n steps of the solver multiplies a
    displacement along an eigenvector by R(h lambda / n)^n (Euler R(z) = 1 + z, RK4 its quartic), so
    the multipliers are those, growth log|mu| and rotation arg mu."""
    h = 0.1
    found = dynamics.fixed_points(LinearField(matrix, h, solver, substeps), _cloud(), n_starts=32, adam_steps=300, lr=0.05)
    assert found.sizes["fixed_point"] == 1 and found.attrs["dynamics"] == "field"
    np.testing.assert_allclose(found.state.values[0], CENTRE.numpy(), atol=1e-9)
    expected = amplification(h * np.linalg.eigvals(matrix) / substeps) ** substeps
    np.testing.assert_allclose(np.sort_complex(_multipliers(found)[0]), np.sort_complex(expected), atol=1e-12)
    expected = expected[np.argsort(-np.abs(expected), kind="stable")]
    np.testing.assert_allclose(found.growth.values[0], np.log(np.abs(expected)), atol=1e-12)
    np.testing.assert_allclose(np.abs(found.rotation.values[0]), np.abs(np.angle(expected)), atol=1e-12)
    assert found.stability.values[0] == stability and found.n_unstable.values[0] == n_unstable


def test_a_stable_field_can_run_as_an_unstable_map():
    """The issue's case: a slow spiral with Re lambda = -0.022 per model time unit, rotating 1.53 rad per
    unit (0.153 per bin of h = 0.1, Lorenz's C+/- rate), is stable as a field, but its Euler map has
    |1 + h lambda| = sqrt((1 - 0.0022)^2 + 0.153^2) > 1: the model that runs spirals out."""
    spiral = np.array([[-0.022, 1.53, 0.0], [-1.53, -0.022, 0.0], [0.0, 0.0, -2.0]])
    found = dynamics.fixed_points(LinearField(spiral, h=0.1), _cloud(), n_starts=16, adam_steps=200, lr=0.05)
    assert (np.linalg.eigvals(spiral).real < 0).all()
    assert found.n_unstable.values.tolist() == [2] and found.stability.values.tolist() == ["saddle"]
    np.testing.assert_allclose(found.growth.values[0, 0], 0.5 * np.log((1 - 0.0022) ** 2 + 0.153**2), atol=1e-12)
    np.testing.assert_allclose(abs(found.rotation.values[0, 0]), np.arctan2(0.153, 1 - 0.0022), atol=1e-12)


@pytest.mark.parametrize("matrix, stability, n_unstable", [
    (np.diag([0.9, 0.5, -0.8]), "stable", 0),  # |lambda| < 1 although one is negative
    (np.diag([1.5, 0.5, -1.2]), "saddle", 2),  # -1.2 grows in size: unstable for a map
])
def test_linear_map_uses_the_discrete_convention(matrix, stability, n_unstable):
    """Closed form: F(g) = c + M (g - c) has F(c) = c and Jacobian M; growth log|lambda|, a negative
    multiplier rotates by pi per bin."""
    found = dynamics.fixed_points(LinearMap(matrix), _cloud(), n_starts=32, adam_steps=300, lr=0.05)
    assert found.sizes["fixed_point"] == 1 and found.attrs["dynamics"] == "map"
    np.testing.assert_allclose(found.state.values[0], CENTRE.numpy(), atol=1e-9)
    diagonal = np.diag(matrix)[np.argsort(-np.abs(np.diag(matrix)), kind="stable")]
    np.testing.assert_allclose(found.eigenvalue_real.values[0], diagonal, atol=1e-9)
    np.testing.assert_allclose(found.growth.values[0], np.log(np.abs(diagonal)), atol=1e-9)
    np.testing.assert_allclose(np.abs(found.rotation.values[0]), np.where(diagonal < 0, np.pi, 0.0), atol=1e-9)
    assert found.stability.values[0] == stability and found.n_unstable.values[0] == n_unstable


def test_lorenz_three_fixed_points_from_its_trajectories():
    """Closed form: (0, 0, 0) and (+-sqrt(beta (rho - 1)), +-sqrt(beta (rho - 1)), rho - 1). Run as one
    bin of RK4 the Lorenz field's fixed points are those, and their per-bin growth and rotation are the
    field's eigenvalues times the bin: the origin's -beta and (-(sigma + 1) +- sqrt((sigma + 1)^2 +
    4 sigma (rho - 1))) / 2 (one unstable direction); two for the others (a complex pair with Re > 0)."""
    h = 0.015
    states = integrate_lorenz(np.array([[1.0, 1.0, 20.0]]), 1500, 0.01)[:, 300:]
    found = dynamics.fixed_points(LorenzField(h), states, n_starts=64, adam_steps=500, lr=0.1)
    r = np.sqrt(8 / 3 * 27)
    expected = np.array([[0, 0, 0], [r, r, 27], [-r, -r, 27]])
    assert found.sizes["fixed_point"] == 3
    distances = np.linalg.norm(expected[:, None] - found.state.values[None], axis=-1)
    assert distances.min(axis=1).max() < 1e-8
    origin = int(np.argmin(np.linalg.norm(found.state.values, axis=1)))
    root = np.sqrt(11**2 + 4 * 10 * 27)
    np.testing.assert_allclose(found.growth.values[origin], h * np.array([(-11 + root) / 2, -8 / 3, (-11 - root) / 2]),
                               rtol=1e-5)
    assert list(np.sort(found.n_unstable.values)) == [1, 2, 2]
    assert set(found.stability.values) == {"saddle"}


def test_true_jacobians_closed_forms_and_published_eigenvalues():
    """data_generators.true_jacobians against central finite differences of each system's field in
    z-scored coordinates; Lorenz's eigenvalues per time unit are the published +11.83, -2.67, -22.83
    (origin) and 0.094 +- 10.19i, -13.85 (C+/-), and ``flow_fixed_points`` gives them per bin (times
    ``system_time_per_bin`` = 1.5008 / 100 at the default sampling) with 1, 2, 2 unstable directions."""
    from data_generators.attractors import SYSTEMS
    mean, std = np.array([0.5, -1.0, 20.0]), np.array([8.0, 9.0, 7.5])  # any z-scoring: S^-1 J S must follow it
    for system in SYSTEMS:
        ds = xr.Dataset(attrs={"generator": "attractor", "system": system, "state_mean": mean, "state_std": std})
        field = lambda latent: SYSTEMS[system][0](mean + std * latent) / std  # noqa: E731
        eps, points = 1e-6, true_fixed_points(ds)
        numeric = np.stack([(field(points + eps * e) - field(points - eps * e)) / (2 * eps) for e in np.eye(3)], -1)
        np.testing.assert_allclose(true_jacobians(ds), numeric, rtol=1e-6, atol=1e-6)
    ds = attractor("lorenz", n_trials=5, n_bins=10)
    eigenvalues = [np.sort_complex(np.linalg.eigvals(j)) for j in true_jacobians(ds)]
    np.testing.assert_allclose(eigenvalues[0], [-22.83, -2.67, 11.83], atol=0.005)
    for wing in eigenvalues[1:]:
        np.testing.assert_allclose(wing, [-13.85, 0.094 - 10.19j, 0.094 + 10.19j], atol=0.006)
    h = ds.attrs["system_time_per_bin"]
    assert h == pytest.approx(1.5008 / 100)
    truth = dynamics.flow_fixed_points(true_fixed_points(ds), true_jacobians(ds), h)
    assert truth.n_unstable.values.tolist() == [1, 2, 2]
    np.testing.assert_allclose(truth.growth.values[0], h * np.array([11.828, -2.667, -22.828]), atol=1e-3 * h)
    np.testing.assert_allclose(np.abs(truth.rotation.values[1:, 0]), h * 10.195, atol=1e-3 * h)
    np.testing.assert_allclose(np.abs(truth.eigenvalue_real.values + 1j * truth.eigenvalue_imag.values),
                               np.exp(truth.growth.values), rtol=1e-12)


def _lorenz_model_and_truth(seed=0, **model):
    """Attractor data, its truth per bin, and states that are an exact affine image of the Lorenz state
    (g = s A^T + b) for a ``LorenzField`` model in those coordinates."""
    ds = attractor("lorenz", seed=seed, n_trials=100, n_bins=70)
    h = ds.attrs["system_time_per_bin"]
    truth = dynamics.flow_fixed_points(true_fixed_points(ds), true_jacobians(ds), h)
    rng = np.random.default_rng(seed)
    matrix, offset = rng.standard_normal((3, 3)), rng.standard_normal(3)
    raw = ds.latents_true.values * np.array(ds.attrs["state_std"]) + np.array(ds.attrs["state_mean"])
    states = raw @ matrix.T + offset
    field = LorenzField(h, matrix, offset, **model)
    found = dynamics.fixed_points(field, states, n_starts=64, adam_steps=300, lr=0.1)
    return found, truth, dynamics.affine_map(states, ds.latents_true.values), states


def test_structure_scores_of_an_exact_model_are_zero_and_a_faster_one_scores_its_speed_up():
    """A model that is the Lorenz system in affine coordinates has the truth's structure: every error
    ~0 (RK4's error over one bin), counts 1,2,2; the same model run 10 % faster has its per-bin
    eigenvalues 10 % larger (the flow over one bin of 1.1 f is the flow over 1.1 bins of f): growth and
    rotation errors 0.1, positions and directions unchanged. The sibling check: the model path
    (fixed_points on the RK4 step) and the truth path (flow_fixed_points from the closed form) agree."""
    found, truth, mapping, _ = _lorenz_model_and_truth()
    scores = dynamics.structure_scores(found, truth, mapping)
    assert scores["n_fixed_points"] == 3 and scores["unstable_counts"] == "1,2,2"
    for name in ("wing_error", "origin_error", "saddle_angle"):
        assert scores[name] < 1e-6, name
    for name in ("rotation_error", "saddle_growth_error"):
        assert scores[name] < 1e-6, name
    pairs = dynamics.compare_fixed_points(found, truth, mapping)
    assert pairs.n_unstable_found.values.tolist() == [1, 2, 2] and np.isnan(pairs.angle.values[1:]).all()
    faster = dynamics.structure_scores(*_lorenz_model_and_truth(speed=1.1)[:3])
    assert faster["rotation_error"] == pytest.approx(0.1, abs=1e-6)
    assert faster["saddle_growth_error"] == pytest.approx(0.1, abs=1e-6)
    assert faster["wing_error"] < 1e-6 and faster["saddle_angle"] < 1e-4


def test_structure_scores_known_offsets_angle_and_missing_points():
    """Closed forms on hand-made linearisations: found points moved by a known offset score that
    distance; a saddle whose Jacobian is the truth's rotated by 30 degrees about an axis
    perpendicular to its unstable direction scores an angle of 30; a model with one point leaves two
    true points unmatched (inf; angle NaN); without truth the errors are NaN and the counts remain."""
    ds = attractor("lorenz", n_trials=5, n_bins=10)
    h = ds.attrs["system_time_per_bin"]
    points, jac = true_fixed_points(ds), true_jacobians(ds)
    truth = dynamics.flow_fixed_points(points, jac, h)
    identity = dynamics.AffineMap(np.eye(3), np.zeros(3))
    unstable = truth.eigenvector_real.values[0, :, 0]
    axis = np.cross(unstable, [1.0, 0.0, 0.0])
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = expm(np.radians(30) * k)
    rotated = jac.copy()
    rotated[0] = rotation @ jac[0] @ rotation.T
    offsets = np.array([[0.0, 0.0, 0.0], [0.0, 0.3, 0.0], [0.0, 0.0, -0.2]])
    found = dynamics.linearisation(points + offsets, expm(rotated * h))
    scores = dynamics.structure_scores(found, truth, identity)
    assert scores["wing_error"] == pytest.approx(0.3) and scores["origin_error"] == pytest.approx(0.0, abs=1e-12)
    assert scores["saddle_angle"] == pytest.approx(30.0, abs=1e-6)
    assert scores["saddle_growth_error"] == pytest.approx(0.0, abs=1e-9) and scores["rotation_error"] < 1e-9

    one = dynamics.linearisation(points[1:2], expm(jac[1:2] * h))
    scores = dynamics.structure_scores(one, truth, identity)
    assert scores["n_fixed_points"] == 1 and scores["unstable_counts"] == "2"
    assert np.isinf(scores["origin_error"]) and np.isinf(scores["wing_error"]) and np.isinf(scores["saddle_growth_error"])
    assert np.isnan(scores["saddle_angle"])
    none = dynamics.structure_scores(dynamics.linearisation(np.zeros((0, 3)), np.zeros((0, 3, 3))), truth, identity)
    assert none["unstable_counts"] == "none" and np.isinf(none["wing_error"])
    blind = dynamics.structure_scores(found)
    assert blind["n_fixed_points"] == 3 and blind["unstable_counts"] == "1,2,2"
    assert all(np.isnan(blind[name]) for name in ("wing_error", "rotation_error", "saddle_growth_error",
                                                  "saddle_angle", "origin_error"))
    with pytest.raises(ConfigError, match="affine map"):
        dynamics.structure_scores(found, truth)


def test_structure_table_keeps_counts_as_integers_and_text(tmp_path):
    """The scores Dataset has dim model, integer counts and text unstable counts, and survives a file."""
    ds = attractor("lorenz", n_trials=5, n_bins=10)
    truth = dynamics.flow_fixed_points(true_fixed_points(ds), true_jacobians(ds), ds.attrs["system_time_per_bin"])
    identity = dynamics.AffineMap(np.eye(3), np.zeros(3))
    table = dynamics.structure_table({"node_3": dynamics.structure_scores(truth, truth, identity),
                                      "gru_large": dynamics.structure_scores(truth)})
    assert list(table.model.values) == ["node_3", "gru_large"]
    assert table.n_fixed_points.dtype.kind == "i" and table.unstable_counts.dtype.kind == "U"
    assert table.wing_error.sel(model="node_3") < 1e-12 and np.isnan(table.wing_error.sel(model="gru_large"))
    lfads_nb.save_scores(table, tmp_path / "scores.nc")
    with xr.open_dataset(tmp_path / "scores.nc", engine="h5netcdf") as back:
        assert back.n_fixed_points.dtype.kind == "i"
        assert back.unstable_counts.sel(model="node_3").item() == "1,2,2"


def test_merging_and_unconverged_starts():
    """Copies of one fixed point merge into one; a field without zeros (f = 1) yields none."""

    class NoZero(LinearField):
        def vector_field(self, g, inputs):
            return 0 * g + 1

    none = dynamics.fixed_points(NoZero(np.eye(3)), _cloud(), n_starts=8, adam_steps=50)
    assert none.sizes["fixed_point"] == 0 and none.attrs["n_converged"] == 0
    one = dynamics.fixed_points(LinearField(-np.eye(3)), _cloud(), n_starts=16, adam_steps=100)
    assert one.attrs["n_converged"] == 16 and one.sizes["fixed_point"] == 1


def test_points_far_from_every_state_are_dropped_and_counted():
    """dg0/dt = -u (u - 8) with u = g0 - c0, the other two dims decaying to c: zeros at c (inside the
    unit-variance cloud of states around c) and at c + 8 e0, about 5 away from the nearest state,
    i.e. ~3 RMS radii (sqrt 3). Starts spread by noise reach both; the far one is outside the data."""

    class TwoZeros(LinearField):
        def vector_field(self, g, inputs):
            u = g - CENTRE
            return torch.stack([-u[:, 0] * (u[:, 0] - 8.0), -u[:, 1], -u[:, 2]], dim=-1)

    search = dict(n_starts=64, noise=3.0, adam_steps=400, lr=0.1)
    everything = dynamics.fixed_points(TwoZeros(np.eye(3)), _cloud(), max_data_distance=None, **search)
    assert everything.sizes["fixed_point"] == 2 and everything.attrs["n_outside_data"] == 0
    far = np.argmax(everything.state.values[:, 0])
    np.testing.assert_allclose(everything.state.values[far], CENTRE.numpy() + [8.0, 0.0, 0.0], atol=1e-9)
    states = _cloud()
    radius = np.sqrt(((states - states.mean(0)) ** 2).sum(1).mean())
    nearest = np.linalg.norm(states - everything.state.values[far], axis=1).min() / radius
    assert 2.0 < nearest < 4.0 and everything.data_distance.values[far] == pytest.approx(nearest)
    found = dynamics.fixed_points(TwoZeros(np.eye(3)), states, **search)
    assert found.sizes["fixed_point"] == 1 and found.attrs["n_outside_data"] == 1
    np.testing.assert_allclose(found.state.values[0], CENTRE.numpy(), atol=1e-9)
    assert found.data_distance.values[0] < 0.5


@pytest.mark.parametrize("generator", ["gru", "node"])
def test_lfads_generators_points_are_fixed_under_their_own_dynamics(generator):
    """Independent check on a (briefly trained) LFADS: at each point found, the model's own float64
    step returns the point (GRU map) or its vector field vanishes (NODE), with zero inputs; and the
    multipliers match central finite differences of the one-bin map the model runs (its step)."""
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
    step = dynamics.autonomous(model).step
    eps, g0 = 1e-6, g[:1]
    jac = torch.stack([(step(g0 + eps * e) - step(g0 - eps * e))[0] / (2 * eps) for e in torch.eye(6, dtype=torch.float64)], 1)
    expected = np.sort_complex(np.linalg.eigvals(jac.numpy()))
    np.testing.assert_allclose(np.sort_complex(_multipliers(found)[0]), expected, atol=1e-5)

    fig = plots.fixed_points(model, states, found)
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


def test_affine_map_recovers_points_and_vectors_in_true_space():
    """States that are an exact affine image of the latents map back exactly (closed form), points by
    the whole map and displacements by its linear part."""
    rng = np.random.default_rng(1)
    latents = xr.DataArray(rng.standard_normal((6, 20, 3)), dims=("trial", "time", "latent"),
                           coords={"latent": ["x", "y", "z"]})
    mix, shift = rng.standard_normal((3, 5)), rng.standard_normal(5)
    states = xr.DataArray(latents.values @ mix + shift, dims=("trial", "time", "generator"))
    true = np.array([[0.0, 0.0, -2.0], [1.0, 1.0, 0.5]])
    mapped = dynamics.to_latent_space(true @ mix + shift, states, latents)
    np.testing.assert_allclose(mapped, true, atol=1e-9)
    mapping = dynamics.affine_map(states, latents)
    np.testing.assert_allclose(mapping.vectors((true @ mix).T), true.T, atol=1e-9)
    with pytest.raises(DataError, match="same trials"):
        dynamics.to_latent_space(mapped, states[:2], latents)
