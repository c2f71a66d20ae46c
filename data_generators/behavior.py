"""A behaviour readout for synthetic data: "hand velocity" as a fixed linear map of the latents.

Real motor-cortex datasets come with behaviour (hand velocity) that is roughly a linear
function of the population state; decoding it from inferred rates (vel R^2) is a standard
check. Synthetic generators mimic that with one random, seeded linear map per dataset, so
the map is exact and recoverable by least squares from ``latents_true``.
"""
from __future__ import annotations

import numpy as np

VELOCITY_DIMS = ("vx", "vy")
VELOCITY_DESCRIPTION = "fixed random linear map of latents_true (hand velocity, latent units)"


def velocity_readout(
    latents: np.ndarray, rng: np.random.Generator, dims: tuple[str, ...] = VELOCITY_DIMS
) -> tuple[np.ndarray, np.ndarray]:
    """Map latents to behaviour with a fixed random linear map (no offset, no noise).

    latents: array (..., n_latents), e.g. (trial, time, latent).
    rng: the generator's behaviour stream; the same stream gives the same map.
    dims: names of the behaviour dims (the ``behavior_dim`` coordinate); one output per name.

    Returns ``(behavior, weights)``: behavior (..., len(dims)) float32 with
    ``behavior = latents @ weights``; weights (n_latents, len(dims)), each column a
    random unit vector, so every behaviour dim is a projection of the latent state onto
    a random direction and has the latents' units and scale.
    """
    latents = np.asarray(latents, dtype=np.float64)
    weights = rng.standard_normal((latents.shape[-1], len(dims)))
    weights /= np.linalg.norm(weights, axis=0, keepdims=True)
    return (latents @ weights).astype(np.float32), weights
