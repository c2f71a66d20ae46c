"""What dynamical system did the generator learn? Fixed points of its autonomous dynamics.

A generator (``lfads_nb.models.lfads``) is either a discrete map ``step(g, inputs) -> g`` (the
GRU: g_t = F(g_{t-1}, u_t)) or a continuous field ``vector_field(g, inputs) -> dg/dt`` (the neural
ODE: dg/dt = f(g, u)), which the model runs as a map too: ``step`` integrates f over one bin (one
Euler step g + h f(g), or RK4). With the inputs at zero (no controller output, no external input)
its *fixed points* are the states it would sit at forever: F(g*) = g* for a map, f(g*) = 0 for a
field. Following Sussillo & Barak (2013) they are found by minimising the speed

    q(g) = 1/2 ||F(g) - g||^2   (map)        q(g) = 1/2 ||f(g)||^2   (field)

from many starting states sampled along the inferred trajectories (the region the model knows),
then refined by Newton's method, kept where q is below a tolerance and merged when they coincide.

Every point is classified on the **one-bin map the model runs** (``generator.step``), for a GRU
and a NODE alike: the eigenvalues mu of its Jacobian (the *multipliers*) give the per-bin growth
and rotation nu = log mu, Re nu = log |mu| (growth per bin; a direction is unstable where it is
> 0, i.e. |mu| > 1) and Im nu = arg mu (rotation per bin, radians). A NODE's field Jacobian would
mislead: a slow spiral with Re lambda = -0.02 under an Euler step of 0.1 has |1 + 0.1 lambda| > 1
when its rotation is fast enough, so the model that runs is unstable there. Per bin, the numbers
compare with a known continuous system's at the data's bin (``flow_fixed_points``: nu = lambda x
the bin's duration), whatever time unit the model's field uses internally. ``n_unstable`` counts
the unstable directions; a point with some of each is a saddle.

:func:`structure_scores` compares fixed points with a known system's after the affine map from
model state to true state; :func:`pca` gives the projection the explorer (``lfads_nb.Explorer``) and
``lfads_nb.plots.fixed_points`` share, so fixed points and flow appear in the same space as the
trajectories. The figures of this analysis are in ``lfads_nb.plots`` (``fixed_points``,
``fixed_points_true_space``).
"""
from __future__ import annotations

import copy
from typing import NamedTuple

import numpy as np
import torch
import xarray as xr
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from .errors import ConfigError, DataError
from .metrics import affine_fit



# ----------------------------------------------------------------------------- the dynamics

class Dynamics(NamedTuple):
    """The autonomous dynamics of a generator, (B, D) -> (B, D) functions of float64 states.
    ``velocity(g)``: F(g) - g for a map, f(g) for a field (zero exactly at the fixed points: what the
    search minimises); ``step(g)``: the one-bin map the model runs (F, or f integrated over one bin);
    ``continuous``: True for a field; ``dim``: D."""

    velocity: object
    step: object
    continuous: bool
    dim: int


def autonomous(model) -> Dynamics:
    """The dynamics of ``model``'s generator with zero inputs, in float64 (a copy; ``model`` is untouched).

    ``model``: an ``LFADS`` (its ``generator`` is used), or any module with ``step(g, inputs)`` (the
    one-bin map) and optionally ``vector_field(g, inputs)`` (a continuous field, which ``step``
    integrates), with ``g`` (B, D). D is the last dim of the module's ``weight_hh`` (its ``dim``
    attribute without one); the width of ``inputs`` is the last dim of its ``weight_ih``, 0 without one.
    """
    generator = getattr(model, "generator", model)
    if not isinstance(generator, torch.nn.Module) or not hasattr(generator, "step"):
        raise ConfigError(f"fixed_points needs an LFADS model or a generator module with step(g, inputs) (and "
                          f"vector_field(g, inputs) for a neural ODE); got {type(model).__name__}. (NDT has no "
                          "generator: it has no dynamics to find fixed points of.)")
    generator = copy.deepcopy(generator).to(torch.float64).requires_grad_(False)
    weight_ih = getattr(generator, "weight_ih", None)
    n_inputs = weight_ih.shape[-1] if weight_ih is not None else 0
    dim = _state_dim(generator)

    def step(g):
        return generator.step(g, g.new_zeros(g.shape[0], n_inputs))

    if hasattr(generator, "vector_field"):
        return Dynamics(lambda g: generator.vector_field(g, g.new_zeros(g.shape[0], n_inputs)), step, True, dim)
    return Dynamics(lambda g: step(g) - g, step, False, dim)


def _state_dim(generator) -> int:
    weight_hh = getattr(generator, "weight_hh", None)
    if weight_hh is None:
        return int(getattr(generator, "dim"))
    return int(weight_hh.shape[-1])


def jacobians(function, states: torch.Tensor) -> torch.Tensor:
    """d function / d g at each state, for a (B, D) -> (B, D) ``function`` (e.g. ``Dynamics.velocity``
    or ``Dynamics.step``) that treats rows independently: (B, D) -> (B, D, D)."""
    single = lambda g: function(g[None])[0]  # noqa: E731
    return torch.func.vmap(torch.func.jacrev(single))(states)


# ----------------------------------------------------------------------------- PCA shared with the explorer

class PCA(NamedTuple):
    """A principal-component basis: ``mean`` (D,), ``components`` (k, D) orthonormal rows,
    ``explained`` (k,) fraction of the variance each explains."""

    mean: np.ndarray
    components: np.ndarray
    explained: np.ndarray

    def project(self, x: np.ndarray) -> np.ndarray:
        """(..., D) states -> (..., k) PC scores."""
        return (np.asarray(x, dtype=np.float64) - self.mean) @ self.components.T

    def lift(self, scores: np.ndarray) -> np.ndarray:
        """(..., k) PC scores -> (..., D) states in the PCs' span through the mean."""
        return self.mean + np.asarray(scores, dtype=np.float64) @ self.components


def pca(states: xr.DataArray | np.ndarray, n_components: int = 3) -> PCA:
    """PCA of states (trial, time, D) or (N, D) pooled over trials and time; up to ``n_components``
    (fewer when D is smaller; missing components are padded with zeros so 3-D views always work)."""
    x = _points(states, "states")
    mean = x.mean(axis=0)
    _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
    k = min(n_components, vt.shape[0])
    variance = singular**2
    explained = np.zeros(n_components)
    explained[:k] = variance[:k] / variance.sum() if variance.sum() > 0 else 0
    components = np.zeros((n_components, x.shape[1]))
    components[:k] = vt[:k]
    return PCA(mean, components, explained)


def _points(states, name: str) -> np.ndarray:
    """(N, D) float64 from a (..., D) DataArray or array; finite, at least one row."""
    x = np.asarray(states.values if isinstance(states, xr.DataArray) else states, dtype=np.float64)
    if x.ndim < 2:
        raise DataError(f"{name} must have a state dim last, e.g. (trial, time, generator); got shape {x.shape}.")
    x = x.reshape(-1, x.shape[-1])
    if x.shape[0] == 0 or not np.isfinite(x).all():
        raise DataError(f"{name} must be finite and non-empty (got {x.shape[0]} states, some not finite). "
                        "Pass the inferred states, e.g. lfads_nb.infer(model, ds).generator_states.")
    return x


# ----------------------------------------------------------------------------- fixed points

def fixed_points(
    model,
    states: xr.DataArray | np.ndarray,
    *,
    n_starts: int = 256,
    noise: float = 0.0,
    adam_steps: int = 2000,
    lr: float = 0.01,
    newton_steps: int = 20,
    tolerance: float = 1e-6,
    merge_distance: float = 0.05,
    max_data_distance: float | None = 1.0,
    seed: int = 0,
) -> xr.Dataset:
    """Fixed points of ``model``'s generator with zero inputs, classified on its one-bin map (see the
    module docstring).

    Parameters
    ----------
    model: an ``LFADS`` model or a generator module (see :func:`autonomous`).
    states: inferred generator states, (trial, time, generator) (``infer(...).generator_states``) or
        (N, D): the starting states are ``n_starts`` of them drawn at random, plus Gaussian ``noise``
        times their per-dimension standard deviation.
    adam_steps, lr: Adam on q from every start at once; then ``newton_steps`` of Newton's method on the
        velocity (each accepted only where it lowers q), which makes true fixed points exact to
        float64 precision.
    tolerance: keep a candidate when q < tolerance x (the states' mean squared velocity scale: the
        mean of ||velocity||^2 / 2 over the states), so the test does not depend on the units of g.
    merge_distance: candidates closer than this, in units of the states' RMS distance from their
        mean, are one fixed point (the one with the lowest q is kept).
    max_data_distance: keep only points within this distance of the nearest state, in the same
        units. Farther out no data constrain the generator, so a point there (a minimiser can run far
        from its start) is an artefact of how the model extrapolates, not part of what it learned.
        None keeps every point.
    seed: draws the starts and the noise.

    Returns
    -------
    The Dataset :func:`linearisation` describes (dims ``fixed_point``, sorted by q lowest first,
    ``generator`` and ``eigen``), from the Jacobian of the one-bin map ``generator.step``, plus
    ``speed`` q and ``data_distance`` (to the nearest state, units as ``merge_distance``); attrs
    ``dynamics`` ('map' or 'field': what the generator is), ``n_starts``, ``n_converged`` (starts
    that met the tolerance before merging) and ``n_outside_data`` (points dropped by
    ``max_data_distance``).
    """
    if (n_starts < 1 or adam_steps < 0 or newton_steps < 0 or tolerance <= 0 or merge_distance < 0 or noise < 0
            or (max_data_distance is not None and max_data_distance <= 0)):
        raise ConfigError("fixed_points needs n_starts >= 1, adam_steps >= 0, newton_steps >= 0, tolerance > 0, "
                          "merge_distance >= 0, noise >= 0 and max_data_distance > 0 (or None).")
    dynamics = autonomous(model)
    x = _points(states, "states")
    if x.shape[1] != dynamics.dim:
        raise DataError(f"states have {x.shape[1]} dims but the generator's state has {dynamics.dim}: pass the "
                        "generator states (infer(...).generator_states), not the factors.")
    rng = np.random.default_rng(seed)
    starts = x[rng.integers(0, len(x), n_starts)] + noise * x.std(axis=0) * rng.standard_normal((n_starts, x.shape[1]))
    scale_q = float(np.mean(_speed(dynamics, torch.from_numpy(x)).numpy()))
    g = _minimise(dynamics, torch.from_numpy(starts), adam_steps, lr)
    g = _newton(dynamics, g, newton_steps)
    q = _speed(dynamics, g).numpy()
    converged = q < tolerance * max(scale_q, 1e-300)
    radius = float(np.sqrt(((x - x.mean(axis=0)) ** 2).sum(axis=1).mean()))
    kept = _merge(g.numpy()[converged], q[converged], merge_distance * radius)
    points, speeds = g.numpy()[converged][kept], q[converged][kept]
    data_distance = cKDTree(x).query(points)[0] / radius if len(points) else np.zeros(0)
    inside = data_distance <= (np.inf if max_data_distance is None else max_data_distance)
    points, speeds, data_distance = points[inside], speeds[inside], data_distance[inside]
    step_jacobians = (jacobians(dynamics.step, torch.from_numpy(points)).numpy() if len(points)
                      else np.zeros((0, dynamics.dim, dynamics.dim)))
    found = linearisation(points, step_jacobians)
    found["speed"] = ("fixed_point", speeds, {"description": "q = ||velocity||^2 / 2 at the point"})
    found["data_distance"] = ("fixed_point", data_distance, {
        "description": "distance to the nearest state, in units of the states' RMS distance from their mean"})
    found.attrs.update(dynamics="field" if dynamics.continuous else "map", n_starts=n_starts,
                       n_converged=int(converged.sum()), n_outside_data=int((~inside).sum()))
    return found


def _speed(dynamics: Dynamics, g: torch.Tensor) -> torch.Tensor:
    """q = ||velocity||^2 / 2 per state: (B, D) -> (B,)."""
    return 0.5 * dynamics.velocity(g).pow(2).sum(-1)


def _minimise(dynamics: Dynamics, g: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    g = g.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([g], lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        _speed(dynamics, g).sum().backward()  # each start's q depends on its own g only
        optimiser.step()
    return g.detach()


def _newton(dynamics: Dynamics, g: torch.Tensor, steps: int) -> torch.Tensor:
    """Newton steps g <- g - J^-1 v(g), kept per state only where they lower q (least squares where J is singular)."""
    for _ in range(steps):
        v = dynamics.velocity(g)
        jac = jacobians(dynamics.velocity, g)
        delta = torch.linalg.lstsq(jac, -v[..., None]).solution[..., 0]
        trial = g + delta
        better = (_speed(dynamics, trial) < _speed(dynamics, g)) & torch.isfinite(trial).all(-1)
        g = torch.where(better[:, None], trial, g)
    return g


def _merge(points: np.ndarray, q: np.ndarray, distance: float) -> np.ndarray:
    """Indices of the points kept, lowest q first: each absorbs the later ones within ``distance``."""
    kept: list[int] = []
    for i in np.argsort(q, kind="stable"):
        if all(np.linalg.norm(points[i] - points[j]) > distance for j in kept):
            kept.append(int(i))
    return np.asarray(kept, dtype=int)


def classify(growth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n_unstable, stability) per row of (P, D) per-bin growth rates Re nu = log |mu|: a direction is
    unstable where it grows (> 0); 'stable' with none, 'unstable' with all, else 'saddle'."""
    growth = np.asarray(growth)
    n_unstable = (growth > 0).sum(axis=1)
    stability = np.where(n_unstable == 0, "stable", np.where(n_unstable == growth.shape[1], "unstable", "saddle"))
    return n_unstable, stability


def linearisation(points: np.ndarray, step_jacobians: np.ndarray) -> xr.Dataset:
    """Fixed points (P, D) with the Jacobians (P, D, D) of the one-bin map at them, as a Dataset.

    Variables: ``state`` (fixed_point, generator); the multipliers mu (eigenvalues of the Jacobian)
    as ``eigenvalue_real``/``eigenvalue_imag`` (fixed_point, eigen); ``growth`` = log |mu| (per bin;
    > 0: unstable) and ``rotation`` = arg mu (radians per bin), the real and imaginary parts of
    nu = log mu; ``eigenvector_real``/``eigenvector_imag`` (fixed_point, generator, eigen), unit
    length; ``n_unstable`` (int) and ``stability`` ('stable', 'saddle' or 'unstable'). Eigen are
    sorted by decreasing growth, so eigen 0 is the leading (least stable) direction.
    """
    points = np.asarray(points, dtype=np.float64)
    n, dim = points.shape
    if n:
        multipliers, vectors = np.linalg.eig(np.asarray(step_jacobians, dtype=np.float64))
    else:
        multipliers, vectors = np.zeros((0, dim), complex), np.zeros((0, dim, dim), complex)
    with np.errstate(divide="ignore"):  # a zero multiplier: growth -inf, an instant collapse
        growth = np.log(np.abs(multipliers))
    order = np.argsort(-growth, axis=1, kind="stable")
    multipliers, growth = (np.take_along_axis(a, order, axis=1) for a in (multipliers, growth))
    vectors = np.take_along_axis(vectors, order[:, None, :], axis=2)
    return _linearisation_dataset(points, multipliers, growth, np.angle(multipliers), vectors)


def _linearisation_dataset(points, multipliers, growth, rotation, vectors) -> xr.Dataset:
    n_unstable, stability = classify(growth)
    eig, vec = ("fixed_point", "eigen"), ("fixed_point", "generator", "eigen")
    return xr.Dataset(
        {
            "state": (("fixed_point", "generator"), points),
            "eigenvalue_real": (eig, multipliers.real, {"description": "multiplier mu: eigenvalue of the one-bin map's Jacobian"}),
            "eigenvalue_imag": (eig, multipliers.imag),
            "growth": (eig, growth, {"units": "per bin", "description": "Re log mu = log |mu|; > 0: unstable"}),
            "rotation": (eig, rotation, {"units": "radians per bin", "description": "Im log mu = arg mu"}),
            "eigenvector_real": (vec, vectors.real),
            "eigenvector_imag": (vec, vectors.imag),
            "n_unstable": ("fixed_point", n_unstable.astype(int)),
            "stability": ("fixed_point", stability.astype(str)),
        },
        coords={"fixed_point": np.arange(len(points))},
    )


def flow_fixed_points(points: np.ndarray, field_jacobians: np.ndarray, bin_duration: float) -> xr.Dataset:
    """A continuous system's fixed points (P, L), known with the Jacobians (P, L, L) of its field
    there (per time unit), classified as :func:`fixed_points` classifies a model: on its flow over one
    bin of ``bin_duration`` time units. That flow's Jacobian at a fixed point is expm(J bin_duration),
    so nu = lambda bin_duration exactly: growth = Re lambda x bin_duration, rotation = Im lambda x
    bin_duration (while |Im| < pi), eigenvectors those of J. Same Dataset as :func:`linearisation`;
    for an ``attractor`` Dataset pass ``true_fixed_points(ds)``, ``true_jacobians(ds)`` and
    ``ds.attrs['system_time_per_bin']``."""
    if not bin_duration > 0:
        raise ConfigError(f"bin_duration must be a positive time, got {bin_duration!r}.")
    points = np.asarray(points, dtype=np.float64)
    eigenvalues, vectors = np.linalg.eig(np.asarray(field_jacobians, dtype=np.float64) * bin_duration)
    order = np.argsort(-eigenvalues.real, axis=1, kind="stable")
    nu = np.take_along_axis(eigenvalues, order, axis=1)
    vectors = np.take_along_axis(vectors, order[:, None, :], axis=2)
    truth = _linearisation_dataset(points, np.exp(nu), nu.real, nu.imag, vectors)
    truth.attrs["bin_duration"] = float(bin_duration)
    return truth


# ----------------------------------------------------------------------------- the picture

def flow_field(model, basis: PCA, plane: tuple[int, int], extent: np.ndarray, n_grid: int = 15):
    """Velocities on an ``n_grid`` x ``n_grid`` grid of the PC ``plane`` (0-based PC indices) through
    the states' mean, covering ``extent`` ((2, 2): [min, max] per axis), projected onto that plane.
    Returns (u, v, du, dv), each (n_grid * n_grid,)."""
    dynamics = autonomous(model)
    a, b = plane
    u, v = np.meshgrid(np.linspace(*extent[0], n_grid), np.linspace(*extent[1], n_grid))
    scores = np.zeros((u.size, basis.components.shape[0]))
    scores[:, a], scores[:, b] = u.ravel(), v.ravel()
    with torch.no_grad():
        velocity = dynamics.velocity(torch.from_numpy(basis.lift(scores))).numpy()
    projected = velocity @ basis.components.T
    return u.ravel(), v.ravel(), projected[:, a], projected[:, b]


# ----------------------------------------------------------------------------- comparison with a known system

class AffineMap(NamedTuple):
    """latent = state @ ``linear`` + ``offset``: ``linear`` (D, L), ``offset`` (L,). A displacement
    (an eigenvector) maps by ``linear`` alone."""

    linear: np.ndarray
    offset: np.ndarray

    def points(self, states: np.ndarray) -> np.ndarray:
        """(P, D) model states -> (P, L) latents."""
        return np.asarray(states, dtype=np.float64).reshape(-1, self.linear.shape[0]) @ self.linear + self.offset

    def vectors(self, vectors: np.ndarray) -> np.ndarray:
        """(..., D, K) column vectors (e.g. eigenvectors) -> (..., L, K)."""
        return np.swapaxes(np.swapaxes(vectors, -1, -2) @ self.linear, -1, -2)


def affine_map(states: xr.DataArray | np.ndarray, latents: xr.DataArray | np.ndarray) -> AffineMap:
    """The affine map model state -> true latent fitted by least squares from ``states`` (trial, time, D)
    to ``latents`` (trial, time, L) over the same trials and bins (pass the training trials). This is
    the inferred -> true direction (``metrics.latent_r2``'s, fitted in sample): a large model's state
    maps onto the truth even where most of it is not the truth, and a point off the data is mapped by
    a fit made on the data."""
    x, y = _points(states, "states"), _points(latents, "latents")
    if len(x) != len(y):
        raise DataError(f"states and latents must cover the same trials and bins ({len(x)} vs {len(y)} rows).")
    weights = affine_fit(x, y)
    return AffineMap(weights[:-1], weights[-1])


def to_latent_space(points: np.ndarray, states: xr.DataArray, latents: xr.DataArray) -> np.ndarray:
    """Model states ``points`` (P, D) in the true latent space by :func:`affine_map` (states, latents): (P, L)."""
    return affine_map(states, latents).points(points)


def compare_fixed_points(found: xr.Dataset, truth: xr.Dataset, mapping: AffineMap) -> xr.Dataset:
    """Each true fixed point against the found one assigned to it, after ``mapping`` (:func:`affine_map`).

    ``found`` (:func:`fixed_points`) and ``truth`` (:func:`flow_fixed_points`) are both classified per
    bin. Found points are assigned one to one to true points by the least total distance (Hungarian
    assignment, ``scipy.optimize.linear_sum_assignment``) between the mapped found points and the true
    ones; with fewer found than true points some true points get none. Eigenvalues compare without any
    fit (they do not change under an invertible affine map); eigenvectors compare after ``mapping``.

    Returns a Dataset over the truth's ``fixed_point``: ``match`` (index of the found point, -1: none),
    ``distance`` (latent units; inf without a match), ``n_unstable`` and ``n_unstable_found`` (-1: none),
    ``growth``/``growth_found`` (the leading per-bin growth, eigen 0), ``rotation``/``rotation_found``
    (|rotation| of the leading direction, radians per bin) and ``angle`` (degrees, 0-90, between the
    truth's leading eigenvector and the mapped leading eigenspace of the match, a line for a real
    multiplier, a plane for a complex pair; NaN where the truth's leading direction is complex or there
    is no match).
    """
    true_points = truth["state"].values
    mapped = mapping.points(found["state"].values)
    n_true = len(true_points)
    match = np.full(n_true, -1)
    if len(mapped):
        cost = np.linalg.norm(true_points[:, None] - mapped[None], axis=-1)
        rows, cols = linear_sum_assignment(cost)
        match[rows] = cols
    has, j = match >= 0, np.maximum(match, 0)

    def matched(per_found: np.ndarray, fill) -> np.ndarray:
        """A value per found point as one per true point: its match's, ``fill`` where none."""
        return np.where(has, per_found[j], fill) if len(mapped) else np.full(n_true, fill)

    def leading(ds: xr.Dataset, name: str) -> np.ndarray:
        return ds[name].values[:, 0] if ds.sizes["fixed_point"] else np.zeros(0)

    distance = (np.where(has, np.linalg.norm(true_points - mapped[j], axis=-1), np.inf) if len(mapped)
                else np.full(n_true, np.inf))
    angle = np.full(n_true, np.nan)
    for i in np.flatnonzero(has & (truth["eigenvalue_imag"].values[:, 0] == 0)):
        span = mapping.vectors(np.stack([found["eigenvector_real"].values[match[i], :, 0],
                                         found["eigenvector_imag"].values[match[i], :, 0]], axis=-1))
        angle[i] = _angle_to_span(truth["eigenvector_real"].values[i, :, 0], span)
    return xr.Dataset(
        {
            "match": ("fixed_point", match),
            "distance": ("fixed_point", distance, {"units": "latent units (SDs for z-scored latents)"}),
            "n_unstable": ("fixed_point", truth["n_unstable"].values),
            "n_unstable_found": ("fixed_point", matched(found["n_unstable"].values, -1).astype(int)),
            "growth": ("fixed_point", leading(truth, "growth"), {"units": "per bin"}),
            "growth_found": ("fixed_point", matched(leading(found, "growth"), np.nan), {"units": "per bin"}),
            "rotation": ("fixed_point", np.abs(leading(truth, "rotation")), {"units": "radians per bin"}),
            "rotation_found": ("fixed_point", np.abs(matched(leading(found, "rotation"), np.nan)),
                               {"units": "radians per bin"}),
            "angle": ("fixed_point", angle, {"units": "degrees"}),
        },
        coords={"fixed_point": truth["fixed_point"].values},
    )


def _angle_to_span(direction: np.ndarray, span: np.ndarray) -> float:
    """Degrees between the line along ``direction`` (L,) and the span of the columns of ``span`` (L, K);
    NaN when the span is empty (the map sends the eigenvector to zero)."""
    basis, singular, _ = np.linalg.svd(span, full_matrices=False)
    basis = basis[:, singular > 1e-9 * max(float(singular.max(initial=0)), 1e-300)]
    if basis.shape[1] == 0:
        return float("nan")
    cosine = np.linalg.norm(basis.T @ direction) / np.linalg.norm(direction)
    return float(np.degrees(np.arccos(np.clip(cosine, 0.0, 1.0))))


SCORE_DESCRIPTIONS = {
    "n_fixed_points": ("", "fixed points found (merged) of the autonomous generator"),
    "unstable_counts": ("", "numbers of unstable directions of the fixed points, ascending (one-bin map)"),
    "wing_error": ("latent SDs", "largest distance of a true two-unstable-direction point (Lorenz C+/-) from "
                                 "its assigned found point, after the affine map"),
    "rotation_error": ("", "largest relative error of those points' leading rotation per bin"),
    "saddle_growth_error": ("", "relative error of the one-unstable-direction point's (Lorenz origin) "
                                "unstable growth per bin"),
    "saddle_angle": ("degrees", "angle between that point's unstable direction, mapped, and the truth's"),
    "origin_error": ("latent SDs", "distance of that point's assigned found point from it, after the affine map"),
}


def structure_scores(found: xr.Dataset, truth: xr.Dataset | None = None, mapping: AffineMap | None = None) -> dict:
    """The structure of ``found`` (:func:`fixed_points`) against a known system's (``truth``,
    :func:`flow_fixed_points`, after ``mapping``): one dict of the scores in ``SCORE_DESCRIPTIONS``.

    ``n_fixed_points`` (int) and ``unstable_counts`` (text such as "1,2,2"; "none" without points)
    need no truth. Roles come from the truth's classification: its *wings* are the points with two
    unstable directions (Lorenz's C+/-), its *saddle* the one with one (Lorenz's origin); each score
    is the largest over the points of its role (:func:`compare_fixed_points` pairs them). Relative
    errors are |found - true| / |true|; a true point without a found one scores inf (angle NaN).
    NaN where ``truth`` is None or has no point of the role.
    """
    n_unstable = np.sort(found["n_unstable"].values)
    scores = {"n_fixed_points": int(found.sizes["fixed_point"]),
              "unstable_counts": ",".join(str(int(n)) for n in n_unstable) or "none"}
    scores.update({name: float("nan") for name in SCORE_DESCRIPTIONS if name not in scores})
    if truth is None:
        return scores
    if mapping is None:
        raise ConfigError("structure_scores needs the affine map (dynamics.affine_map) to compare with a truth.")
    pairs = compare_fixed_points(found, truth, mapping)

    def worst(values: np.ndarray, role: np.ndarray) -> float:
        return float(np.max(values[role])) if role.any() else float("nan")

    def worst_relative(found_values: np.ndarray, true_values: np.ndarray, role: np.ndarray) -> float:
        found_values, true_values = found_values[role], true_values[role]
        errors = np.where(np.isnan(found_values), np.inf, np.abs(found_values - true_values) / np.abs(true_values))
        return float(np.max(errors)) if role.any() else float("nan")

    wings, saddle = pairs.n_unstable.values == 2, pairs.n_unstable.values == 1
    scores.update(
        wing_error=worst(pairs.distance.values, wings),
        rotation_error=worst_relative(pairs.rotation_found.values, pairs.rotation.values, wings),
        saddle_growth_error=worst_relative(pairs.growth_found.values, pairs.growth.values, saddle),
        saddle_angle=worst(pairs.angle.values, saddle),
        origin_error=worst(pairs.distance.values, saddle),
    )
    return scores


def structure_table(rows: dict) -> xr.Dataset:
    """The scores of several models (``rows``: model name -> :func:`structure_scores` dict) as a Dataset
    with dim ``model``: ``n_fixed_points`` int, ``unstable_counts`` text, the rest float, each with its
    description and units."""
    models = list(rows)
    variables = {}
    for name, (units, description) in SCORE_DESCRIPTIONS.items():
        values = np.asarray([rows[m][name] for m in models])
        values = values.astype({"n_fixed_points": int, "unstable_counts": str}.get(name, float))
        variables[name] = ("model", values, {"description": description, **({"units": units} if units else {})})
    return xr.Dataset(variables, coords={"model": models})
