"""What dynamical system did the generator learn? Fixed points of its autonomous dynamics.

A generator (``lfads_nb.models.lfads``) is either a discrete map ``step(g, inputs) -> g`` (the
GRU: g_t = F(g_{t-1}, u_t)) or a continuous field ``vector_field(g, inputs) -> dg/dt`` (the neural
ODE: dg/dt = f(g, u)). With the inputs at zero (no controller output, no external input) its
*fixed points* are the states it would sit at forever: F(g*) = g* for a map, f(g*) = 0 for a field.
Following Sussillo & Barak (2013) they are found by minimising the speed

    q(g) = 1/2 ||F(g) - g||^2   (map)        q(g) = 1/2 ||f(g)||^2   (field)

from many starting states sampled along the inferred trajectories (the region the model knows),
then refined by Newton's method, kept where q is below a tolerance, merged when they coincide, and
classified by the eigenvalues of the Jacobian at each point: a map's fixed point is stable where
every |lambda| < 1, a field's where every Re(lambda) < 0; the number of eigenvalues on the other
side (``n_unstable``) counts its unstable directions, and a point with some of each is a saddle.

:func:`pca` gives the projection the explorer (``lfads_nb.explorer``) and :func:`plot_fixed_points`
share, so fixed points and flow appear in the same space as the trajectories.
"""
from __future__ import annotations

import copy
from typing import NamedTuple

import numpy as np
import plotly.graph_objects as go
import torch
import xarray as xr
from plotly.subplots import make_subplots

from .errors import ConfigError, DataError

STABILITY_COLOURS = {"stable": "#2ca02c", "saddle": "#ff7f0e", "unstable": "#d62728"}


# ----------------------------------------------------------------------------- the dynamics

class Dynamics(NamedTuple):
    """The autonomous dynamics of a generator. ``velocity(g)`` (B, D) -> (B, D): F(g) - g for a map,
    f(g) for a field; ``continuous``: True for a field; ``dim``: D."""

    velocity: object
    continuous: bool
    dim: int


def autonomous(model) -> Dynamics:
    """The dynamics of ``model``'s generator with zero inputs, in float64 (a copy; ``model`` is untouched).

    ``model``: an ``LFADS`` (its ``generator`` is used), or any module with ``vector_field(g, inputs)``
    (a continuous field) or ``step(g, inputs)`` (a discrete map), with ``g`` (B, D). D is the last dim
    of the module's ``weight_hh`` (its ``dim`` attribute without one); the width of ``inputs`` is the
    last dim of its ``weight_ih``, 0 without one.
    """
    generator = getattr(model, "generator", model)
    if not isinstance(generator, torch.nn.Module) or not (hasattr(generator, "vector_field") or hasattr(generator, "step")):
        raise ConfigError(f"fixed_points needs an LFADS model or a generator module with vector_field(g, inputs) or "
                          f"step(g, inputs); got {type(model).__name__}. (NDT has no generator: it has no dynamics "
                          "to find fixed points of.)")
    generator = copy.deepcopy(generator).to(torch.float64).requires_grad_(False)
    weight_ih = getattr(generator, "weight_ih", None)
    n_inputs = weight_ih.shape[-1] if weight_ih is not None else 0
    dim = _state_dim(generator)
    if hasattr(generator, "vector_field"):
        return Dynamics(lambda g: generator.vector_field(g, g.new_zeros(g.shape[0], n_inputs)), True, dim)
    return Dynamics(lambda g: generator.step(g, g.new_zeros(g.shape[0], n_inputs)) - g, False, dim)


def _state_dim(generator) -> int:
    weight_hh = getattr(generator, "weight_hh", None)
    if weight_hh is None:
        return int(getattr(generator, "dim"))
    return int(weight_hh.shape[-1])


def jacobians(dynamics: Dynamics, states: torch.Tensor) -> torch.Tensor:
    """d velocity / d g at each state: (B, D) -> (B, D, D). The map's Jacobian dF/dg is this + I."""
    single = lambda g: dynamics.velocity(g[None])[0]  # noqa: E731
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
    seed: int = 0,
) -> xr.Dataset:
    """Fixed points of ``model``'s generator with zero inputs (see the module docstring).

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
    seed: draws the starts and the noise.

    Returns
    -------
    Dataset with dims ``fixed_point`` (sorted by q, lowest first), ``generator`` (D) and ``eigen`` (D):
    ``state`` (fixed_point, generator); ``speed`` q; ``eigenvalue_real``/``eigenvalue_imag``
    (fixed_point, eigen) of the Jacobian (of F for a map, f for a field), sorted by decreasing
    growth; ``n_unstable`` (eigenvalues with |lambda| > 1 for a map, Re > 0 for a field);
    ``stability`` ('stable', 'saddle' or 'unstable'); attrs ``dynamics`` ('map' or 'field'),
    ``n_starts`` and ``n_converged`` (starts that met the tolerance before merging).
    """
    if n_starts < 1 or adam_steps < 0 or newton_steps < 0 or tolerance <= 0 or merge_distance < 0 or noise < 0:
        raise ConfigError("fixed_points needs n_starts >= 1, adam_steps >= 0, newton_steps >= 0, tolerance > 0, "
                          "merge_distance >= 0 and noise >= 0.")
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
    points = g.numpy()[converged][kept]
    eigen = _eigenvalues(dynamics, points)
    return _as_dataset(points, q[converged][kept], eigen, dynamics, n_starts, int(converged.sum()))


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
        jac = jacobians(dynamics, g)
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


def _eigenvalues(dynamics: Dynamics, points: np.ndarray) -> np.ndarray:
    """(P, D) complex eigenvalues of the Jacobian of F (map) or f (field), by decreasing growth."""
    if len(points) == 0:
        return np.zeros((0, dynamics.dim), dtype=complex)
    jac = jacobians(dynamics, torch.from_numpy(points)).numpy()
    if not dynamics.continuous:
        jac = jac + np.eye(dynamics.dim)
    eigen = np.linalg.eigvals(jac)
    growth = eigen.real if dynamics.continuous else np.abs(eigen)
    return np.take_along_axis(eigen, np.argsort(-growth, axis=1, kind="stable"), axis=1)


def classify(eigenvalues: np.ndarray, continuous: bool) -> tuple[np.ndarray, np.ndarray]:
    """(n_unstable, stability) per row of (P, D) eigenvalues: unstable directions are Re > 0 for a
    field and |lambda| > 1 for a map; 'stable' with none, 'unstable' with all, else 'saddle'."""
    eigenvalues = np.asarray(eigenvalues)
    unstable = eigenvalues.real > 0 if continuous else np.abs(eigenvalues) > 1
    n_unstable = unstable.sum(axis=1)
    stability = np.where(n_unstable == 0, "stable", np.where(n_unstable == eigenvalues.shape[1], "unstable", "saddle"))
    return n_unstable, stability


def _as_dataset(points, q, eigen, dynamics: Dynamics, n_starts: int, n_converged: int) -> xr.Dataset:
    n_unstable, stability = classify(eigen, dynamics.continuous)
    ids = np.arange(len(points))
    return xr.Dataset(
        {
            "state": (("fixed_point", "generator"), points.reshape(-1, dynamics.dim)),
            "speed": ("fixed_point", q, {"description": "q = ||velocity||^2 / 2 at the point"}),
            "eigenvalue_real": (("fixed_point", "eigen"), eigen.real.reshape(-1, dynamics.dim)),
            "eigenvalue_imag": (("fixed_point", "eigen"), eigen.imag.reshape(-1, dynamics.dim)),
            "n_unstable": ("fixed_point", n_unstable.astype(int)),
            "stability": ("fixed_point", stability.astype(str)),
        },
        coords={"fixed_point": ids},
        attrs={"dynamics": "field" if dynamics.continuous else "map", "n_starts": n_starts,
               "n_converged": n_converged},
    )


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


def plot_fixed_points(model, states: xr.DataArray, found: xr.Dataset, *, basis: PCA | None = None,
                      max_trials: int = 30, n_grid: int = 15, title: str | None = None) -> go.Figure:
    """Fixed points over the trajectories and the flow, in 2-D small multiples of PC space: PC1-PC2
    (left) and PC1-PC3 (right). Grey lines: up to ``max_trials`` trials of ``states`` (trial, time,
    generator); arrows: the autonomous flow in each plane through the states' mean (direction and
    relative speed, scaled to the grid); markers: the fixed points, coloured by stability and
    labelled by their number of unstable directions. ``basis``: the PCA (default: :func:`pca` of
    ``states``, as the explorer's)."""
    basis = basis or pca(states)
    paths = basis.project(np.asarray(states.values, dtype=np.float64)[:max_trials])
    points = basis.project(found["state"].values) if found.sizes["fixed_point"] else np.zeros((0, 3))
    planes = ((0, 1), (0, 2))
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=[f"PC{a + 1} vs PC{b + 1}" for a, b in planes])
    everything = np.concatenate([paths.reshape(-1, 3), points])
    for col, (a, b) in enumerate(planes, start=1):
        lo, hi = everything[:, [a, b]].min(axis=0), everything[:, [a, b]].max(axis=0)
        pad = 0.1 * np.maximum(hi - lo, 1e-9)
        extent = np.stack([lo - pad, hi + pad], axis=1)
        for k, path in enumerate(paths):
            fig.add_scatter(x=path[:, a], y=path[:, b], mode="lines", line=dict(color="rgba(120,120,120,0.35)", width=1),
                            name="inferred trajectories", legendgroup="traj", showlegend=col == 1 and k == 0,
                            row=1, col=col)
        _add_arrows(fig, *flow_field(model, basis, (a, b), extent, n_grid), extent, n_grid, col, showlegend=col == 1)
        for kind, colour in STABILITY_COLOURS.items():
            pick = found["stability"].values == kind
            if pick.any():
                fig.add_scatter(x=points[pick, a], y=points[pick, b], mode="markers+text",
                                marker=dict(size=13, color=colour, symbol="x", line=dict(width=1, color="black")),
                                text=[f"{n} unstable" for n in found["n_unstable"].values[pick]],
                                textposition="top center", name=f"{kind} fixed point", legendgroup=kind,
                                showlegend=col == 1, row=1, col=col)
        fig.update_xaxes(title_text=f"PC{a + 1} ({100 * basis.explained[a]:.0f} % var.)", row=1, col=col)
        fig.update_yaxes(title_text=f"PC{b + 1} ({100 * basis.explained[b]:.0f} % var.)", row=1, col=col)
    kind = "map F(g) - g" if found.attrs.get("dynamics") == "map" else "field f(g)"
    fig.update_layout(title=title or f"{found.sizes['fixed_point']} fixed points and the autonomous flow ({kind})",
                      height=520, legend=dict(orientation="h", yanchor="top", y=-0.15))
    return fig


def _add_arrows(fig: go.Figure, u, v, du, dv, extent, n_grid: int, col: int, showlegend: bool) -> None:
    """Arrows as line segments with a head, the longest as long as one grid cell."""
    cell = (extent[:, 1] - extent[:, 0]) / max(n_grid - 1, 1)
    length = np.hypot(du / cell[0], dv / cell[1])
    scale = 0.9 / max(float(length.max()), 1e-300)
    tip_u, tip_v = u + du * scale, v + dv * scale
    xs, ys = [], []
    for x0, y0, x1, y1 in zip(u, v, tip_u, tip_v):
        xs += [x0, x1, None]
        ys += [y0, y1, None]
    fig.add_scatter(x=xs, y=ys, mode="lines", line=dict(color="#1f77b4", width=1), name="flow (zero inputs)",
                    legendgroup="flow", showlegend=showlegend, hoverinfo="skip", row=1, col=col)
    fig.add_scatter(x=tip_u, y=tip_v, mode="markers", marker=dict(size=3, color="#1f77b4"), showlegend=False,
                    hoverinfo="skip", row=1, col=col)


# ----------------------------------------------------------------------------- comparison with a known system

def to_latent_space(points: np.ndarray, states: xr.DataArray, latents: xr.DataArray) -> np.ndarray:
    """Map model states ``points`` (P, D) into the true latent space by the affine map
    latent = [g, 1] A fitted by least squares from ``states`` (trial, time, D) to ``latents``
    (trial, time, L) over the same trials and bins (pass the training trials): (P, L)."""
    x, y = _points(states, "states"), _points(latents, "latents")
    if len(x) != len(y):
        raise DataError(f"states and latents must cover the same trials and bins ({len(x)} vs {len(y)} rows).")
    weights = np.linalg.lstsq(np.c_[x, np.ones(len(x))], y, rcond=None)[0]
    points = np.asarray(points, dtype=np.float64).reshape(-1, x.shape[1])
    return np.c_[points, np.ones(len(points))] @ weights


def nearest_distances(true_points: np.ndarray, found: np.ndarray) -> np.ndarray:
    """For each true fixed point (P, L), the distance to the nearest found one (F, L); inf where none was found."""
    true_points = np.asarray(true_points, dtype=np.float64)
    if len(found) == 0:
        return np.full(len(true_points), np.inf)
    return np.linalg.norm(true_points[:, None] - np.asarray(found)[None], axis=-1).min(axis=1)


def plot_true_space(latents: xr.DataArray, true_points: np.ndarray, found: dict, *, max_trials: int = 30,
                    title: str = "Fixed points mapped into the true latent space") -> go.Figure:
    """Found fixed points (``found``: model name -> (P, 3) mapped points) against the true ones
    (black circles) over true trajectories (grey), as 2-D small multiples x-y and x-z."""
    paths = np.asarray(latents.transpose("trial", "time", ...).values[:max_trials], dtype=np.float64)
    names = [str(v) for v in latents[latents.dims[-1]].values]
    planes = ((0, 1), (0, 2))
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=[f"{names[a]} vs {names[b]}" for a, b in planes])
    symbols = ("x", "diamond", "square", "triangle-up")
    for col, (a, b) in enumerate(planes, start=1):
        for k, path in enumerate(paths):
            fig.add_scatter(x=path[:, a], y=path[:, b], mode="lines", line=dict(color="rgba(120,120,120,0.3)", width=1),
                            name="true trajectories", legendgroup="traj", showlegend=col == 1 and k == 0, row=1, col=col)
        fig.add_scatter(x=true_points[:, a], y=true_points[:, b], mode="markers", name="true fixed points",
                        marker=dict(size=16, color="rgba(0,0,0,0)", line=dict(width=2.5, color="black")),
                        legendgroup="true", showlegend=col == 1, row=1, col=col)
        for m, (model, points) in enumerate(found.items()):
            points = np.asarray(points).reshape(-1, len(names))
            fig.add_scatter(x=points[:, a], y=points[:, b], mode="markers", name=f"found by {model}",
                            marker=dict(size=10, symbol=symbols[m % len(symbols)]), legendgroup=model,
                            showlegend=col == 1, row=1, col=col)
        fig.update_xaxes(title_text=f"{names[a]} (z-scored)", row=1, col=col)
        fig.update_yaxes(title_text=f"{names[b]} (z-scored)", row=1, col=col)
    fig.update_layout(title=title, height=520, legend=dict(orientation="h", yanchor="top", y=-0.15))
    return fig
