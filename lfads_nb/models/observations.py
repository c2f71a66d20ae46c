"""Observation models: how LFADS factors turn into the likelihood of the recorded data.

Every observation model does two jobs:

1. **Readout.** A linear map from the factors ``(B, T, fac_dim)`` to the distribution
   parameters ``(B, T, N, n_params)`` of every (time, neuron) entry, followed by nothing
   else: the raw readout is what the model outputs as ``obs_params``. Any squashing
   (exp, sigmoid) happens inside ``nll`` and ``mean`` so one tensor describes the output.
2. **Likelihood.** ``nll(params, target)`` is the negative log-likelihood in nats of each
   entry, shape ``(B, T, N)``, unreduced: the caller averages it over the entries it keeps
   (coordinated dropout, sample validation and NaN masks are the caller's business).
   ``mean(params)`` is the expected value of each entry; ``penalty()`` is any extra loss on
   the model's own parameters.

Targets may hold NaN (bins that were not observed). ``nll`` computes on
``target.nan_to_num(0)`` so a NaN target gives a finite value (and finite gradients) that
the caller then masks out.

==========================  ========  ====================================================
model                       n_params  params per entry
==========================  ========  ====================================================
``Poisson`` (spike counts)  1         log expected count per bin
``Gaussian``                2         mean, log variance
``Gamma`` (EMG)             2         log alpha (shape), log beta (rate)
``ZeroInflatedGamma``       3         logits of alpha / scale, beta / scale, and q
==========================  ========  ====================================================

Options are the keyword arguments of each class after ``n_neurons`` and ``fac_dim``: Gamma
``eps``; ZeroInflatedGamma ``s_min``, ``scale_init``, ``scale_penalty``, ``eps``. A spec names a
model and its options, ``'zig'`` or ``{'name': 'zig', 's_min': 0.1}`` (``LFADSConfig.observation``
holds one); ``make_observation`` builds it and refuses unknown names and options.
"""
from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..errors import ConfigError, DataError


class ObservationModel(nn.Module):
    """Base class: a readout from factors plus a per-entry likelihood.

    ``n_params`` parameters are produced per (time, neuron) entry. ``fac_dim`` is the width of
    the factors read out; ``None`` builds the likelihood alone (no readout), which is enough
    for ``nll``, ``mean`` and ``penalty`` on parameters computed elsewhere.
    """

    n_params: int

    def __init__(self, n_neurons: int, fac_dim: int | None = None):
        super().__init__()
        if not isinstance(n_neurons, int) or isinstance(n_neurons, bool) or n_neurons < 1:
            raise ConfigError(f"n_neurons must be a positive integer, got {n_neurons!r}.")
        if fac_dim is not None and (not isinstance(fac_dim, int) or isinstance(fac_dim, bool) or fac_dim < 1):
            raise ConfigError(f"fac_dim must be a positive integer or None, got {fac_dim!r}.")
        self.n_neurons = n_neurons
        self.readout = None
        if fac_dim is not None:
            # Fan-in initialisation (std 1/sqrt(fac_dim)), zero bias, as lfads-torch.
            self.readout = nn.Linear(fac_dim, n_neurons * self.n_params)
            nn.init.normal_(self.readout.weight, std=1.0 / math.sqrt(fac_dim))
            nn.init.zeros_(self.readout.bias)

    def forward(self, factors: Tensor) -> Tensor:
        """Factors ``(..., fac_dim)`` -> raw distribution parameters ``(..., N, n_params)``."""
        if self.readout is None:
            raise ConfigError(
                f"This {type(self).__name__} was built without a readout (fac_dim=None); "
                "build it with make_observation(name, n_neurons, fac_dim=...) to map factors."
            )
        params = self.readout(factors)
        return params.view(*params.shape[:-1], self.n_neurons, self.n_params)

    @torch.no_grad()
    def init_from_data(self, target: Tensor) -> None:
        """Data-dependent start: set the readout bias so that, with the factors at zero, every
        channel predicts its own average. ``target`` (trial, time, N), NaN = not observed.

        Without it the model starts at the same value for every channel (exp(0) = 1 spike per
        bin for Poisson) and spends its first epochs learning the per-channel means.
        The base class keeps the zero bias.
        """

    def nll(self, params: Tensor, target: Tensor) -> Tensor:
        """Per-entry negative log-likelihood in nats, shape of ``target`` ``(B, T, N)``."""
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        """Expected value of each entry, ``(B, T, N)``."""
        raise NotImplementedError

    def _readout_or_raise(self) -> nn.Linear:
        if self.readout is None:
            raise ConfigError(
                f"This {type(self).__name__} has no readout (fac_dim=None), so there is no bias to "
                "initialise; build it with make_observation(name, n_neurons, fac_dim=...)."
            )
        return self.readout

    def penalty(self) -> Tensor:
        """Extra loss on the observation model's own parameters (a scalar); 0 by default."""
        ref = self.readout.weight if self.readout is not None else torch.zeros(())
        return ref.new_zeros(())


def _channel_nanmean(target: Tensor) -> Tensor:
    """Mean of each channel (last dim) over all observed (non-NaN) entries: (..., N) -> (N,)."""
    flat = target.reshape(-1, target.shape[-1]).to(torch.float64)
    observed = ~torch.isnan(flat)
    unseen = ~observed.any(0)
    if unseen.any():
        raise DataError(f"Channels at positions {unseen.nonzero().flatten().tolist()} have no observed (non-NaN) "
                        "entries, so their mean is undefined; drop them from the data.")
    return flat.nan_to_num(0.0).sum(0) / observed.sum(0)


class Poisson(ObservationModel):
    """Spike counts. ``params[..., 0]`` is the log expected count per bin, log(lambda).

    nll = lambda - x log(lambda) + log(x!), the full log-pmf including the log(x!) term, so
    values are comparable across models and convertible to bits per spike.
    """

    n_params = 1

    def nll(self, params: Tensor, target: Tensor) -> Tensor:
        log_rate = params[..., 0]
        x = target.nan_to_num(0.0)
        return torch.exp(log_rate) - x * log_rate + torch.lgamma(x + 1.0)

    @torch.no_grad()
    def init_from_data(self, target: Tensor) -> None:
        """Bias = log(mean count per bin) of each neuron (floored at 1e-4 for silent neurons)."""
        mean = _channel_nanmean(target)
        self._readout_or_raise().bias.copy_(torch.log(mean.clamp_min(1e-4)))

    def mean(self, params: Tensor) -> Tensor:
        return torch.exp(params[..., 0])


class Gaussian(ObservationModel):
    """Continuous signals. ``params[..., 0]`` is the mean, ``params[..., 1]`` the log variance.

    nll = 0.5 (log(2 pi) + log var + (x - mean)^2 / var).
    """

    n_params = 2

    def nll(self, params: Tensor, target: Tensor) -> Tensor:
        mean, logvar = params[..., 0], params[..., 1]
        x = target.nan_to_num(0.0)
        return 0.5 * (math.log(2 * math.pi) + logvar + (x - mean) ** 2 * torch.exp(-logvar))

    @torch.no_grad()
    def init_from_data(self, target: Tensor) -> None:
        """Mean bias = each channel's mean; log-variance bias = log of its variance (floored at 1e-6)."""
        mean = _channel_nanmean(target)
        var = _channel_nanmean((target - mean) ** 2)
        bias = self._readout_or_raise().bias.view(self.n_neurons, 2)
        bias[:, 0], bias[:, 1] = mean, torch.log(var.clamp_min(1e-6))

    def mean(self, params: Tensor) -> Tensor:
        return params[..., 0]


class Gamma(ObservationModel):
    """Non-negative continuous signals (rectified EMG envelopes).

    ``params = (log alpha, log beta)``: alpha (shape) and beta (rate) are positive through exp,
    as in lfads-torch; the mean is alpha / beta.

    nll = -(alpha log beta - lgamma(alpha) + (alpha - 1) log x - beta x).

    Zeros: the Gamma density at x = 0 is 0 or infinite, so targets are clamped from below at
    ``eps`` (default 1e-4, in the data's units) before the log. Choose ``eps`` well below the
    smallest meaningful signal value; it only changes the loss of entries below it.
    """

    n_params = 2

    def __init__(self, n_neurons: int, fac_dim: int | None = None, eps: float = 1e-4):
        super().__init__(n_neurons, fac_dim)
        if not eps > 0:
            raise ConfigError(f"Gamma eps must be > 0 (it replaces zeros in the target), got {eps!r}.")
        self.eps = float(eps)

    def nll(self, params: Tensor, target: Tensor) -> Tensor:
        log_alpha, log_beta = params[..., 0], params[..., 1]
        alpha, beta = torch.exp(log_alpha), torch.exp(log_beta)
        x = target.nan_to_num(0.0).clamp_min(self.eps)
        return -(alpha * log_beta - torch.lgamma(alpha) + (alpha - 1.0) * torch.log(x) - beta * x)

    @torch.no_grad()
    def init_from_data(self, target: Tensor) -> None:
        """Each channel's Gamma by the method of moments: alpha = mean^2 / var, beta = mean / var
        (mean and variance floored at 1e-6), so the model starts at every channel's mean and spread."""
        mean = _channel_nanmean(target).clamp_min(1e-6)
        var = _channel_nanmean((target - mean) ** 2).clamp_min(1e-6)
        bias = self._readout_or_raise().bias.view(self.n_neurons, 2)
        bias[:, 0], bias[:, 1] = torch.log(mean**2 / var), torch.log(mean / var)

    def mean(self, params: Tensor) -> Tensor:
        return torch.exp(params[..., 0] - params[..., 1])


class ZeroInflatedGamma(ObservationModel):
    """Deconvolved calcium events: mostly exact zeros, otherwise an event of size >= s_min.

    ``params = (a, b, c)`` per entry, with a per-neuron learnable ``scale`` of shape (2, N)
    (initialised to ``scale_init`` = 20):

    - alpha = max(sigmoid(a), 1e-5) * scale[0], beta = max(sigmoid(b), 1e-5) * scale[1]
      (the floor keeps lgamma(alpha) finite when a sigmoid underflows),
    - q = sigmoid(c), the probability of an event.

    p(x = 0) = 1 - q;  for x > 0:  p(x) = q * Gamma(x - s_min; alpha, beta).

    So nll(0) = -log(1 - q) and nll(x) = -log q - log Gamma(x - s_min; alpha, beta), with
    log q and log(1 - q) computed as logsigmoid(c) and logsigmoid(-c) (exact, never log 0).
    Events must be 0 or at least ``s_min``; a positive value below ``s_min`` is treated as an
    event of size s_min + ``eps`` (x - s_min is clamped at eps, default 1e-4).
    mean = q (alpha / beta + s_min).  penalty = 0.5 * scale_penalty * sum((scale - scale_init)^2),
    the L2 pull of the scales back to their initial value (weight 1e-4).
    """

    n_params = 3

    def __init__(
        self,
        n_neurons: int,
        fac_dim: int | None = None,
        s_min: float = 0.1,
        scale_init: float = 20.0,
        scale_penalty: float = 1e-4,
        eps: float = 1e-4,
    ):
        super().__init__(n_neurons, fac_dim)
        if not s_min >= 0:
            raise ConfigError(f"ZIG s_min (smallest event size) must be >= 0, got {s_min!r}.")
        if not scale_init > 0:
            raise ConfigError(f"ZIG scale_init must be > 0, got {scale_init!r}.")
        if not scale_penalty >= 0:
            raise ConfigError(f"ZIG scale_penalty must be >= 0, got {scale_penalty!r}.")
        if not eps > 0:
            raise ConfigError(f"ZIG eps must be > 0, got {eps!r}.")
        self.s_min, self.scale_init = float(s_min), float(scale_init)
        self.scale_penalty, self.eps = float(scale_penalty), float(eps)
        self.scale = nn.Parameter(torch.full((2, n_neurons), self.scale_init))

    def _alpha_beta(self, params: Tensor) -> tuple[Tensor, Tensor]:
        sig = torch.sigmoid(params[..., :2]).clamp_min(1e-5)
        return sig[..., 0] * self.scale[0], sig[..., 1] * self.scale[1]

    def nll(self, params: Tensor, target: Tensor) -> Tensor:
        alpha, beta = self._alpha_beta(params)
        logit_q = params[..., 2]
        x = target.nan_to_num(0.0)
        y = (x - self.s_min).clamp_min(self.eps)
        gamma_logpdf = alpha * torch.log(beta) - torch.lgamma(alpha) + (alpha - 1.0) * torch.log(y) - beta * y
        nll_event = -nn.functional.logsigmoid(logit_q) - gamma_logpdf
        nll_zero = -nn.functional.logsigmoid(-logit_q)
        return torch.where(x > 0, nll_event, nll_zero)

    def mean(self, params: Tensor) -> Tensor:
        alpha, beta = self._alpha_beta(params)
        return torch.sigmoid(params[..., 2]) * (alpha / beta + self.s_min)

    def penalty(self) -> Tensor:
        return 0.5 * self.scale_penalty * ((self.scale - self.scale_init) ** 2).sum()


OBSERVATIONS = {
    "poisson": Poisson,
    "gaussian": Gaussian,
    "gamma": Gamma,
    "zig": ZeroInflatedGamma,
}


def _option_defaults(name: str) -> dict[str, object]:
    """The options of the observation model ``name`` and their defaults, read off its ``__init__``
    (every parameter after ``n_neurons`` and ``fac_dim``), e.g. ``{'eps': 0.0001}`` for 'gamma'."""
    params = list(inspect.signature(OBSERVATIONS[name].__init__).parameters.values())[3:]  # self, n_neurons, fac_dim
    return {p.name: p.default for p in params}


def _name_and_options(spec, extra: Mapping) -> tuple[str, dict]:
    """The model name and options of ``spec`` (with ``extra`` options added), checked; option
    values become Python floats or strings."""
    if isinstance(spec, Mapping):
        options = dict(spec)
        name = options.pop("name", None)
        if name is None:
            raise ConfigError(
                f"The observation spec {dict(spec)!r} has no 'name'; give one, e.g. {{'name': 'zig', 's_min': 0.1}}."
            )
    else:
        name, options = spec, {}
    if not isinstance(name, str) or name not in OBSERVATIONS:
        raise ConfigError(
            f"Unknown observation model {name!r}; choose one of {sorted(OBSERVATIONS)} "
            "('poisson' for spike counts, 'gamma' for EMG, 'zig' for calcium events)."
        )
    options.update(extra)
    valid = _option_defaults(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"Unknown option(s) {unknown} for the {name!r} observation model; its options are "
            f"{valid or 'none'} (shown with their defaults)."
        )
    for key, value in options.items():
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            options[key] = float(value)
        elif not isinstance(value, str):
            raise ConfigError(
                f"Observation option {key}={value!r} ({type(value).__name__}) must be a number or a string, "
                "so that checkpoints can store it."
            )
    return name, options


def observation_spec(spec) -> str | dict:
    """Check an observation spec and return it in its plain form.

    A spec is a name from ``OBSERVATIONS`` (``'zig'``) or a mapping of the name and options
    (``{'name': 'zig', 's_min': 0.1}``). The plain form is the name alone when there are no
    options, else a new dict whose option values are Python floats (or strings), so that it
    survives ``dataclasses.asdict`` and ``torch.load(weights_only=True)``. Unknown names,
    unknown options and values that are not numbers or strings raise :class:`ConfigError`.
    """
    name, options = _name_and_options(spec, {})
    return {"name": name, **options} if options else name


def make_observation(spec, n_neurons: int, fac_dim: int | None = None, **options) -> ObservationModel:
    """Build the observation model ``spec`` for ``n_neurons`` channels.

    ``spec`` is a name (``'poisson'``) or a mapping of the name and options, as
    ``LFADSConfig.observation`` holds it (see :func:`observation_spec`); keyword ``options``
    are added to the spec's and override them. ``fac_dim`` is the width of the factors it
    reads out (LFADS passes its ``fac_dim``); ``None`` builds the likelihood alone. Unknown
    names and options raise :class:`ConfigError` listing the valid ones.
    """
    name, options = _name_and_options(spec, options)
    return OBSERVATIONS[name](n_neurons, fac_dim, **options)
