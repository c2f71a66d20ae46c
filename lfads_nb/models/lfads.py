"""LFADS: latent factor analysis via dynamical systems (Pandarinath et al., Nature Methods 2018).

One file, top to bottom in the order the data flows. Notation (shapes):

    B trials in a batch, T time bins, N neurons read out, E = encod_dim encoder input width
    x        (B, T, E)        encoder input (spikes, already masked / rescaled by the caller)
    g0       (B, ic_dim)      initial condition; posterior N(ic_mean, ic_std^2)
    e_t      (B, 2 ci_enc)    controller input: CI-encoder outputs, forward lagged / backward led by 1
    c_t      (B, con_dim)     controller state
    u_t      (B, co_dim)      inferred input; posterior N(co_mean_t, co_std_t^2)
    g_t      (B, gen_dim)     generator state
    f_t      (B, fac_dim)     factors
    params   (B, T, N, k)     observation parameters (Poisson: log expected count per bin)

Data flow:

    x --dropout--> IC encoder (bidirectional GRU) --final fwd+bwd states--> dropout --> linear
      --> ic_mean, ic_logvar --> g0 = ic_mean + ic_std * eps   (eps = 0 when sample=False)
    x --dropout--> CI encoder (bidirectional GRU) --lag by 1--> e_t
    g_{-1} = linear(g0);  f_{-1} = W_fac dropout(g_{-1});  c_{-1} = learnable vector
    for t in 0..T-1:
        c_t = GRU_con(dropout([e_t, f_{t-1}]), c_{t-1});   co_mean_t, co_logvar_t = linear(c_t)
        u_t = co_mean_t + co_std_t * eps_t                  (eps_t = 0 when sample=False)
        g_t = GRU_gen([u_t, dropout(ext_t)], g_{t-1});     f_t = W_fac dropout(g_t)
    params = observation readout(f)

Priors and KL terms (nats per trial): p(g0) = N(learnable mean, ic_prior_var I), KL(q(g0) || p(g0))
in closed form; p(u) = AR(1) per input dimension with learnable time constant and noise variance,
KL(q(u) || p(u)) estimated from the sampled u (closed form when sample=False).

All recurrent cells are the TF-style GRU of the original LFADS (reset gate applied to the state
before the candidate matmul, no recurrent bias, state clipped to +-cell_clip), as in lfads-torch.
The decoder above is ``LFADS.decode``'s step loop, written as the paper reads; the generator is a
module with a ``step`` (``GRUGenerator``), the seam where other dynamics plug in: ``LFADSConfig(generator=
"node")`` makes it a neural ODE (``NeuralODEGenerator``: an MLP vector field integrated by fixed-step
Euler or RK4, Sedler et al. 2023). Like nanoGPT's
flash-attention flag, ``LFADS(config, fused=True)`` (the default) runs the same recurrences as
hand-written fused kernels instead (``lfads_nb.models._fused_gru``: the encoders and an autonomous
generator as one scan, controller and generator as one coupled recurrence;
``lfads_nb.models._fused_node``: an autonomous neural ODE); the tests check both paths against
each other in value and gradient.

Randomness is an input: every dropout mask and posterior sample of a forward pass is a field of
a ``Noise`` (``draw_noise``), drawn from torch's global generator when none is passed, so
``torch.manual_seed`` makes runs reproducible and a test can feed two models the same numbers.
A population of models is ``torch.func.vmap`` of this one model over stacked weights
(``lfads_nb.tune.population``); the fused kernels carry vmap rules for it.

The model owns its objective (``objective``, ``loss``); what the encoder sees and what the
loss counts travel in a ``lfads_nb.transforms.Batch``.
"""
from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.schema import heldin_mask
from ..errors import ConfigError, DataError
from ..transforms import Batch, encoder_input, masked_mean
from ._fused_gru import DecoderWeights, clipped_gru_scan, controlled_decode
from ._fused_node import node_scan
from .observations import ObservationModel, make_observation, observation_spec

# --------------------------------------------------------------------------------------------
# Configuration and outputs
# --------------------------------------------------------------------------------------------


@dataclass
class LFADSConfig:
    """Architecture hyperparameters (sizes are widths; times are in bins).

    Defaults follow lfads-torch's configs for single-session data. ``co_dim = 0`` removes the
    controller and its encoder (an autonomous generator, plus external inputs if any);
    ``ci_enc_dim`` and ``con_dim`` are then unused. ``observation`` is an observation model's
    name or a name with options, ``{'name': 'zig', 's_min': 0.1}``; it is kept in the plain form
    of ``observations.observation_spec`` (name alone without options, option values as floats).
    """

    n_neurons: int
    encod_dim: int | None = None
    ext_input_dim: int = 0
    ic_enc_dim: int = 64
    ci_enc_dim: int = 64
    con_dim: int = 64
    co_dim: int = 4
    ic_dim: int = 64
    gen_dim: int = 100
    fac_dim: int = 20
    dropout: float = 0.05
    cell_clip: float = 5.0
    ic_post_var_min: float = 1e-4
    ic_post_var_init: float = 1.0  # the IC posterior's variance at initialisation (the bias of its log-variance)
    ic_prior_var: float = 0.1
    co_prior_tau: float = 10.0
    co_prior_var: float = 0.1
    observation: str | dict = "poisson"
    generator: str = "gru"       # the generator's dynamics: "gru" (a clipped GRU) or "node" (a neural ODE)
    node_hidden: int = 128       # "node": width of the vector field's hidden tanh layer
    node_solver: str = "euler"   # "node": fixed-step "euler" or "rk4"
    node_substeps: int = 1       # "node": solver steps per time bin
    node_step: float = 0.1       # "node": the vector field's time per bin (Sedler et al.'s Euler cell: 0.1)
    log1p_encoder_input: bool = False  # the encoders read log(1 + data): counts of hundreds per bin saturate their GRUs

    def __post_init__(self):
        if self.encod_dim is None:
            self.encod_dim = self.n_neurons
        sizes = ["n_neurons", "encod_dim", "ext_input_dim", "ic_enc_dim", "ci_enc_dim", "con_dim", "co_dim"]
        sizes += ["ic_dim", "gen_dim", "fac_dim", "node_hidden", "node_substeps"]
        positive = ["n_neurons", "encod_dim", "ic_enc_dim", "ic_dim", "gen_dim", "fac_dim", "node_hidden"]
        positive += ["node_substeps"]
        positive += ["ci_enc_dim", "con_dim"] if self.co_dim else []
        for name in sizes:
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise ConfigError(f"LFADSConfig.{name} must be an integer, got {value!r}.")
            value = int(value)
            setattr(self, name, value)
            if name in positive and value < 1:
                controller = name in ("ci_enc_dim", "con_dim")
                hint = " when co_dim > 0 (or set co_dim=0 for no controller)" if controller else ""
                raise ConfigError(f"LFADSConfig.{name} must be > 0{hint}, got {value}.")
            if value < 0:
                raise ConfigError(f"LFADSConfig.{name} must be >= 0, got {value}.")
        for name in ["dropout", "cell_clip", "ic_post_var_min", "ic_post_var_init", "ic_prior_var", "co_prior_tau",
                     "co_prior_var", "node_step"]:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ConfigError(f"LFADSConfig.{name} must be a finite number, got {value!r}.")
            setattr(self, name, float(value))
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LFADSConfig.dropout is a drop probability in [0, 1), got {self.dropout}.")
        for name in ["cell_clip", "ic_post_var_min", "ic_post_var_init", "ic_prior_var", "co_prior_tau", "co_prior_var",
                     "node_step"]:
            if getattr(self, name) <= 0:
                raise ConfigError(f"LFADSConfig.{name} must be > 0, got {getattr(self, name)}.")
        if not isinstance(self.log1p_encoder_input, bool):
            raise ConfigError(f"LFADSConfig.log1p_encoder_input must be True or False, got {self.log1p_encoder_input!r}.")
        if self.generator not in GENERATORS:
            raise ConfigError(f"LFADSConfig.generator must be one of {sorted(GENERATORS)}, got {self.generator!r}.")
        if self.node_solver not in ODE_SOLVERS:
            raise ConfigError(f"LFADSConfig.node_solver must be one of {sorted(ODE_SOLVERS)}, "
                              f"got {self.node_solver!r}.")
        self.observation = observation_spec(self.observation)


class LFADSOutput(NamedTuple):
    """Everything one forward pass infers (B trials, T bins, N neurons)."""

    obs_params: Tensor  # (B, T, N, n_params) raw observation parameters
    factors: Tensor  # (B, T, fac_dim)
    gen_states: Tensor  # (B, T, gen_dim) generator state after consuming step t
    inputs: Tensor  # (B, T, co_dim) inferred inputs u_t (samples, or posterior means if sample=False)
    ic_mean: Tensor  # (B, ic_dim) posterior mean of g0
    ic_std: Tensor  # (B, ic_dim) posterior std of g0
    co_mean: Tensor  # (B, T, co_dim) posterior mean of u_t
    co_std: Tensor  # (B, T, co_dim) posterior std of u_t
    kl_ic: Tensor  # (B,) KL(q(g0) || p(g0)) in nats
    kl_co: Tensor  # (B,) KL(q(u) || p(u)) in nats (0 without a controller)


# --------------------------------------------------------------------------------------------
# The recurrent cell: TF-style clipped GRU (the fused kernels are in _fused_gru.py)
# --------------------------------------------------------------------------------------------


def gru_step(xp_t: Tensor, h: Tensor, w_hh: Tensor, clip: float) -> Tensor:
    """One step of the TF-style GRU in plain autograd (``clipped_gru_scan`` fuses T of them).

    xp_t: (..., B, 3H) input projection x_t W_ih^T + b, gate blocks ordered (r, z, n) as in
    torch.nn.GRU.  h: (..., B, H) previous state.  w_hh: (..., 3H, H) recurrent weights (no
    recurrent bias).

        r = sigmoid(xr + h Wr^T)          reset gate
        z = sigmoid(xz + h Wz^T)          update gate
        n = tanh(xn + (r * h) Wn^T)       candidate: reset applied to h BEFORE the matmul (TF style)
        h' = clamp(z * h + (1 - z) * n, -clip, clip)
    """
    H = h.shape[-1]
    rz = torch.sigmoid(xp_t[..., : 2 * H] + h @ w_hh[..., : 2 * H, :].transpose(-1, -2))
    r, z = rz[..., :H], rz[..., H:]
    n = torch.tanh(xp_t[..., 2 * H :] + (r * h) @ w_hh[..., 2 * H :, :].transpose(-1, -2))
    return torch.clamp(z * h + (1 - z) * n, -clip, clip)



class ClippedGRU(nn.Module):
    """Weights of D side-by-side TF-style GRUs (D = 2: the two directions of an encoder).

    weight_ih (D, 3H, in), bias_ih (D, 3H), weight_hh (D, 3H, H); gate blocks (r, z, n).
    Initialisation as lfads-torch: weights N(0, 1/fan_in), where the encoders use
    fan_in = in + H for both matrices; r and z biases 1 (gates start mostly open, the state
    mostly kept), candidate bias 0.
    """

    def __init__(self, input_size: int, hidden_size: int, clip: float, directions: int = 1, encoder: bool = False):
        super().__init__()
        D, H = directions, hidden_size
        self.clip = clip
        self.weight_ih = nn.Parameter(torch.empty(D, 3 * H, input_size))
        self.bias_ih = nn.Parameter(torch.zeros(D, 3 * H))
        self.weight_hh = nn.Parameter(torch.empty(D, 3 * H, H))
        ih_fan, hh_fan = (input_size + H, input_size + H) if encoder else (input_size, H)
        if input_size:
            nn.init.normal_(self.weight_ih, std=1 / math.sqrt(ih_fan))
        nn.init.normal_(self.weight_hh, std=1 / math.sqrt(hh_fan))
        with torch.no_grad():
            self.bias_ih[:, : 2 * H] = 1.0


class BidirectionalEncoder(nn.Module):
    """Bidirectional clipped GRU over the whole trial, with learnable initial states.

    ``forward(x)`` (x: (B, T, in)) returns (fwd, bwd), each (B, T, H): fwd[:, t] has read
    x_0..x_t, bwd[:, t] has read x_t..x_{T-1}. ``final_states(x)`` returns only
    [fwd[:, -1], bwd[:, 0]] (B, 2H), the summaries of the whole trial.
    """

    def __init__(self, input_size: int, hidden_size: int, clip: float):
        super().__init__()
        self.gru = ClippedGRU(input_size, hidden_size, clip, directions=2, encoder=True)
        self.h0 = nn.Parameter(torch.zeros(2, 1, hidden_size))

    def _scan(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return bidirectional_scans([self], x)[0]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.directions(self._scan(x)[0])

    def final_states(self, x: Tensor) -> Tensor:
        return self.summary(self._scan(x)[1])

    @staticmethod
    def directions(states: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """(fwd, bwd), each (B, T, H) (views of time-first tensors), from the scan's states of the two
        directions, each (T, B, H) (bwd's in reversed time)."""
        fwd, bwd = states
        return fwd.transpose(0, 1), bwd.flip(0).transpose(0, 1)

    @staticmethod
    def summary(last: Tensor) -> Tensor:
        """[fwd[:, -1], bwd[:, 0]] (B, 2H) from the scan's last states (2, B, H)."""
        return torch.cat([last[0], last[1]], dim=-1)


def bidirectional_scans(encoders: list[BidirectionalEncoder], x: Tensor) -> list[tuple[tuple[Tensor, Tensor], Tensor]]:
    """Bidirectional encoders of one width run over the same input x (B, T, in) as one fused scan:
    each encoder's two directions, and the encoders, side by side (the D axis of
    ``clipped_gru_scan``), so the per-step kernels run once for all of them. The backward
    direction reads time reversed. Per encoder: ((forward states, backward states), each
    (T, B, H), last states (2, B, H)).
    """
    x = x.transpose(0, 1)  # (T, B, in)
    T, B, _ = x.shape
    k = len(encoders)

    def joined(name: str, module=lambda e: e.gru) -> Tensor:  # (2k, ...): the encoders' weights along D
        weights = [getattr(module(e), name) for e in encoders]
        return torch.cat(weights) if k > 1 else weights[0]

    directions = torch.stack([x, x.flip(0)]).reshape(2, T * B, -1)
    directions = directions.repeat(k, 1, 1) if k > 1 else directions
    xp = torch.baddbmm(joined("bias_ih").unsqueeze(1), directions, joined("weight_ih").transpose(1, 2))
    xp = xp.view(2 * k, T, B, -1).transpose(0, 1)  # (T, 2k, B, 3H): every input projection, one matmul
    states, last = clipped_gru_scan(xp, joined("h0", lambda e: e).expand(-1, B, -1), joined("weight_hh"),
                                    encoders[0].gru.clip)
    steps = states.unbind(1)  # unbind's gradient is one stack, where slices would each zero-fill all D
    return [((steps[2 * i], steps[2 * i + 1]), last[2 * i : 2 * i + 2]) for i in range(k)]


# --------------------------------------------------------------------------------------------
# Priors
# --------------------------------------------------------------------------------------------


class GaussianPrior(nn.Module):
    """p(g0) = N(mean, var I) with a learnable mean (init 0) and a fixed variance."""

    def __init__(self, dim: int, var: float):
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(dim))
        self.register_buffer("logvar", torch.full((dim,), math.log(var)))

    def kl(self, post_mean: Tensor, post_std: Tensor) -> Tensor:
        """Analytic KL(N(post_mean, post_std^2) || prior) summed over dims: (B, dim) -> (B,).

        KL = sum_i [ log(s_p / s_q) + (s_q^2 + (m_q - m_p)^2) / (2 s_p^2) - 1/2 ].
        """
        var_p = torch.exp(self.logvar)
        kl = 0.5 * self.logvar - torch.log(post_std) + (post_std**2 + (post_mean - self.mean) ** 2) / (2 * var_p) - 0.5
        return kl.sum(-1)


class AR1Prior(nn.Module):
    """Autoregressive prior on the inferred inputs, independent per input dimension d.

        a = exp(-1 / tau)                                 (tau in bins, learnable via log tau)
        u_0       ~ N(0, s^2 / (1 - a^2))                 the stationary (process) variance
        u_t | u_{t-1} ~ N(a u_{t-1}, s^2)                 s^2: learnable noise variance

    Starting from the stationary distribution makes every u_t have variance s^2 / (1 - a^2).
    """

    def __init__(self, dim: int, tau: float, noise_var: float):
        super().__init__()
        self.log_tau = nn.Parameter(torch.full((dim,), math.log(tau)))
        self.log_noise_var = nn.Parameter(torch.full((dim,), math.log(noise_var)))

    def _coefficients(self) -> tuple[Tensor, Tensor, Tensor]:
        alpha = torch.exp(-torch.exp(-self.log_tau))
        log_process_var = self.log_noise_var - torch.log1p(-alpha**2)
        return alpha, self.log_noise_var, log_process_var

    def log_prob(self, u: Tensor) -> Tensor:
        """log p(u) summed over time and dims: (B, T, D) -> (B,)."""
        alpha, log_nvar, log_pvar = self._coefficients()
        first = -0.5 * (math.log(2 * math.pi) + log_pvar + u[:, 0] ** 2 * torch.exp(-log_pvar))
        resid = u[:, 1:] - alpha * u[:, :-1]
        rest = -0.5 * (math.log(2 * math.pi) + log_nvar + resid**2 * torch.exp(-log_nvar))
        return first.sum(-1) + rest.sum((1, 2))

    def kl_sample(self, post_mean: Tensor, post_std: Tensor, u: Tensor) -> Tensor:
        """One-sample estimate log q(u) - log p(u) at a sample u ~ q: (B, T, D) -> (B,)."""
        log_q = -0.5 * (math.log(2 * math.pi) + 2 * torch.log(post_std) + ((u - post_mean) / post_std) ** 2)
        return log_q.sum((1, 2)) - self.log_prob(u)

    def kl_expected(self, post_mean: Tensor, post_std: Tensor) -> Tensor:
        """Closed-form KL(q || p) for the factorised Gaussian q: (B, T, D) -> (B,).

        The expectation of ``kl_sample``. Under q the u_t are independent, so
        E(u_t - a u_{t-1})^2 = (m_t - a m_{t-1})^2 + s_t^2 + a^2 s_{t-1}^2.
        """
        alpha, log_nvar, log_pvar = self._coefficients()
        m, v = post_mean, post_std**2
        neg_entropy = -0.5 * (math.log(2 * math.pi) + torch.log(v) + 1).sum((1, 2))
        first = -0.5 * (math.log(2 * math.pi) + log_pvar + (m[:, 0] ** 2 + v[:, 0]) * torch.exp(-log_pvar))
        sq = (m[:, 1:] - alpha * m[:, :-1]) ** 2 + v[:, 1:] + alpha**2 * v[:, :-1]
        rest = -0.5 * (math.log(2 * math.pi) + log_nvar + sq * torch.exp(-log_nvar))
        return neg_entropy - first.sum(-1) - rest.sum((1, 2))


# --------------------------------------------------------------------------------------------
# Factor readout
# --------------------------------------------------------------------------------------------


class FactorReadout(nn.Module):
    """f_t = W g_t with no bias, each row of W rescaled to unit L2 norm (in forward, not in place).

    Normalising the rows fixes the scale of the factors: otherwise any scale could shift freely
    between W and the observation readout, and factors of different runs would not compare.
    """

    def __init__(self, gen_dim: int, fac_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fac_dim, gen_dim) / math.sqrt(gen_dim))

    def normalized_weight(self) -> Tensor:
        return F.normalize(self.weight, p=2, dim=1)

    def forward(self, g: Tensor) -> Tensor:
        return F.linear(g, self.normalized_weight())


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


def encoder_read_in(read_in: nn.Module, batch: Batch, log1p: bool) -> Tensor:
    """``read_in`` of what the encoders may read (``transforms.encoder_input``), log(1 + x) first when
    ``log1p`` (``LFADSConfig.log1p_encoder_input``): a few bins of hundreds of counts, such as
    Rossler's z excursions, would otherwise saturate the encoders' gates. The likelihood still
    scores the counts themselves."""
    x = encoder_input(batch)
    return read_in(torch.log1p(x) if log1p else x)


def _linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """F.linear, with the bias alone (broadcast, not materialised) when x has no features: a
    generator without external inputs then adds its bias with no matmul, copy or gradient pass."""
    return bias.expand(*x.shape[:-1], -1) if x.shape[-1] == 0 else F.linear(x, weight, bias)


def _fan_in_linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.normal_(layer.weight, std=1 / math.sqrt(in_features))
    nn.init.zeros_(layer.bias)
    return layer



# --------------------------------------------------------------------------------------------
# Session ends: what is specific to one recording, around the shared core
# --------------------------------------------------------------------------------------------


class HeldInReadIn(nn.Module):
    """A session's read-in: its held-in channels, in order, as the encoder's input.

    heldin (N,) bool -> forward maps (..., N) to (..., E), E = heldin.sum(). The held-out
    channels (co-bps) are predicted from the factors but never shown to the encoder.
    """

    def __init__(self, heldin: Tensor):
        super().__init__()
        self.register_buffer("index", torch.as_tensor(heldin, dtype=torch.bool).nonzero().squeeze(-1))

    def forward(self, x: Tensor) -> Tensor:
        return x.index_select(-1, self.index)


class SessionEnds(nn.Module):
    """One session's ends around the shared LFADS core (lfads-torch's read-in / read-out):
    ``read_in`` maps the session's N channels to the core's encod_dim inputs, ``observation``
    maps the core's factors to the session's observation parameters and likelihood. ``LFADS`` has
    one; ``lfads_nb.models.multisession.StitchedLFADS`` gives each recording its own."""

    def __init__(self, read_in: nn.Module, observation: ObservationModel):
        super().__init__()
        self.read_in, self.observation = read_in, observation


# --------------------------------------------------------------------------------------------
# The generator: the dynamics seam
# --------------------------------------------------------------------------------------------


class GRUGenerator(ClippedGRU):
    """The generator's dynamics, g_t = GRU([u_t, ext_t], g_{t-1}): a ``ClippedGRU`` with a step.

    A generator is a module with ``step(g, inputs) -> g`` (g: (B, gen_dim), inputs: (B, co_dim
    + ext_input_dim)), which the decoder's step loop calls once per bin, and may have
    ``scan(g, inputs)``, the same over all bins at once when the inputs are known in advance (no
    controller), which ``LFADS(fused=True)`` then runs instead of the loop. ``fusable`` says whether the fused
    controller-and-generator kernel (``lfads_nb.models._fused_gru.controlled_decode``) implements
    its recurrence; another cell (e.g. a neural ODE) sets it False and runs on the step loop when
    there is a controller.
    """

    fusable = True

    def __init__(self, input_size: int, hidden_size: int, clip: float):
        super().__init__(input_size, hidden_size, clip)

    def step(self, g: Tensor, inputs: Tensor) -> Tensor:
        return gru_step(F.linear(inputs, self.weight_ih[0], self.bias_ih[0]), g, self.weight_hh[0], self.clip)

    def scan(self, g: Tensor, inputs: Tensor) -> Tensor:
        """``step`` over all T bins at once (``clipped_gru_scan``), for inputs known in advance:
        g (B, gen_dim), inputs (B, T, input_size) -> states (B, T, gen_dim)."""
        xp = _linear(inputs, self.weight_ih[0], self.bias_ih[0]).transpose(0, 1).unsqueeze(1)
        states, _ = clipped_gru_scan(xp, g[None], self.weight_hh, self.clip)
        return states[:, 0].transpose(0, 1)


def euler_step(field, g: Tensor, h: float) -> Tensor:
    """One forward-Euler step of dg/dt = field(g) over time h."""
    return g + h * field(g)


def rk4_step(field, g: Tensor, h: float) -> Tensor:
    """One classical Runge-Kutta 4 step of dg/dt = field(g) over time h."""
    k1 = field(g)
    k2 = field(g + 0.5 * h * k1)
    k3 = field(g + 0.5 * h * k2)
    k4 = field(g + h * k3)
    return g + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


ODE_SOLVERS = {"euler": euler_step, "rk4": rk4_step}


def integrate_fixed_step(field, g: Tensor, duration: float, substeps: int, solver: str) -> Tensor:
    """g(duration) for dg/dt = field(g), g(0) = g, by ``substeps`` equal steps of ``solver``
    ("euler": error O(h), "rk4": error O(h^4) per unit time, h = duration / substeps). Plain
    autograd, no ODE library: the gradient backpropagates through the steps."""
    step, h = ODE_SOLVERS[solver], duration / substeps
    for _ in range(substeps):
        g = step(field, g, h)
    return g


class NeuralODEGenerator(nn.Module):
    """The generator's dynamics as a neural ODE (Sedler, Versteeg & Pandarinath 2023):

        dg/dt = f(g, v) = W_out tanh(W_hh g + W_ih v + b) + b_out,      v = [u_t, ext_t]

    integrated over each bin (time ``step``) by fixed-step ``solver`` with ``substeps`` steps,
    the bin's inputs held constant (zero-order hold). Euler with one substep of 0.1 is the
    paper's discrete "Euler-MLP" cell, g_t = g_{t-1} + 0.1 f(g_{t-1}). The vector field is
    bounded (|f| <= |W_out| + |b_out|), so the state cannot blow up in finite time and needs no
    clip. The same ``step(g, inputs)`` and ``scan(g, inputs)`` as ``GRUGenerator``: ``scan`` is
    the fused kernel ``lfads_nb.models._fused_node.node_scan`` (the same integration over all
    bins with a hand-written backward); ``fusable`` is False, so with a controller ``LFADS``
    runs it on the step loop. ``weight_hh`` (hidden, gen_dim) is the state's weight, the one the
    generator's L2 penalty applies to.
    """

    fusable = False

    def __init__(self, input_size: int, hidden_size: int, mlp_size: int, solver: str, substeps: int, step: float):
        super().__init__()
        self.solver, self.substeps, self.duration = solver, substeps, step
        self.weight_hh = nn.Parameter(torch.empty(mlp_size, hidden_size))
        self.weight_ih = nn.Parameter(torch.empty(mlp_size, input_size))
        self.bias = nn.Parameter(torch.zeros(mlp_size))
        self.weight_out = nn.Parameter(torch.empty(hidden_size, mlp_size))
        self.bias_out = nn.Parameter(torch.zeros(hidden_size))
        nn.init.normal_(self.weight_hh, std=1 / math.sqrt(hidden_size + input_size))
        nn.init.normal_(self.weight_ih, std=1 / math.sqrt(hidden_size + input_size))
        nn.init.normal_(self.weight_out, std=1 / math.sqrt(mlp_size))

    def vector_field(self, g: Tensor, inputs: Tensor) -> Tensor:
        """f(g, v): g (B, gen_dim), inputs v (B, input_size) -> dg/dt (B, gen_dim)."""
        hidden = torch.tanh(F.linear(g, self.weight_hh) + F.linear(inputs, self.weight_ih, self.bias))
        return F.linear(hidden, self.weight_out, self.bias_out)

    def step(self, g: Tensor, inputs: Tensor) -> Tensor:
        return integrate_fixed_step(lambda state: self.vector_field(state, inputs), g, self.duration, self.substeps,
                                    self.solver)

    def scan(self, g: Tensor, inputs: Tensor) -> Tensor:
        """``step`` over all T bins at once, for inputs known in advance: g (B, gen_dim), inputs
        (B, T, input_size) -> states (B, T, gen_dim)."""
        T = inputs.shape[1]
        if inputs.shape[-1]:
            xp = F.linear(inputs, self.weight_ih, self.bias).transpose(0, 1).unsqueeze(1)  # (T, 1, B, hidden)
        else:
            xp = self.bias[None]  # no inputs: one projection, the bias, for every bin and trial
        states = node_scan(xp, g[None], self.weight_hh[None], self.weight_out[None], self.bias_out[None],
                           self.duration / self.substeps, self.substeps, self.solver, T)
        return states[:, 0].transpose(0, 1)


GENERATORS = ("gru", "node")


def make_generator(config: LFADSConfig) -> nn.Module:
    """The generator ``config.generator`` names, sized for the config's inputs and state."""
    c, inputs = config, config.co_dim + config.ext_input_dim
    if c.generator == "node":
        return NeuralODEGenerator(inputs, c.gen_dim, c.node_hidden, c.node_solver, c.node_substeps, c.node_step)
    return GRUGenerator(inputs, c.gen_dim, c.cell_clip)


# --------------------------------------------------------------------------------------------
# Randomness: an input of the forward pass
# --------------------------------------------------------------------------------------------


class Noise(NamedTuple):
    """Every random number of one forward pass. B trials, T bins; an optional leading member
    axis P when drawn for a population (``draw_noise(..., members=P)``).

    Dropout entries are uniforms in [0, 1): an entry is kept where uniform >= rate (so with
    probability 1 - rate) and scaled by 1 / (1 - rate). Sites absent from the architecture, or
    not drawn (``dropout=False`` / ``sample=False``), are None.
    """

    x: Tensor | None  # (B, T, E) dropout of the encoder input
    ic_enc: Tensor | None  # (B, 2 ic_enc_dim) dropout of the IC encoder's final states
    ext: Tensor | None  # (B, T, ext_input_dim) dropout of the external inputs
    ci: Tensor | None  # (B, T, 2 ci_enc_dim) dropout of the controller inputs
    g_init: Tensor | None  # (B, gen_dim) dropout of linear(g0) before f_{-1} (controller only)
    factors_in: Tensor | None  # (B, T, fac_dim) dropout of f_{t-1} fed to the controller at t
    gen_states: Tensor | None  # (B, T, gen_dim) dropout of g_t before the factor readout
    ic_eps: Tensor | None  # (B, ic_dim) standard normals: g0 = ic_mean + ic_std * ic_eps
    co_eps: Tensor | None  # (B, T, co_dim) standard normals: u_t = co_mean + co_std * co_eps


def draw_noise(config: LFADSConfig, B: int, T: int, *, members: int | None = None,
               generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32, device=None,
               dropout: bool = True, sample: bool = True) -> Noise:
    """Draw a ``Noise`` from ``generator`` (default: torch's global generator), one call per
    site in field order. ``members``: a leading population axis. ``dropout`` / ``sample``: draw
    the dropout uniforms / the posterior normals, else leave them None."""
    c, lead, ctrl = config, () if members is None else (members,), config.co_dim > 0

    def u(*shape, when=True):
        return torch.rand(lead + shape, generator=generator, dtype=dtype, device=device) if dropout and when else None

    def n(*shape, when=True):
        return torch.randn(lead + shape, generator=generator, dtype=dtype, device=device) if sample and when else None

    return Noise(
        x=u(B, T, c.encod_dim),
        ic_enc=u(B, 2 * c.ic_enc_dim),
        ext=u(B, T, c.ext_input_dim, when=c.ext_input_dim > 0),
        ci=u(B, T, 2 * c.ci_enc_dim, when=ctrl),
        g_init=u(B, c.gen_dim, when=ctrl),
        factors_in=u(B, T, c.fac_dim, when=ctrl),
        gen_states=u(B, T, c.gen_dim),
        ic_eps=n(B, c.ic_dim),
        co_eps=n(B, T, c.co_dim, when=ctrl),
    )


def _keep(uniforms: Tensor, rate) -> Tensor:
    """Dropout multipliers: 1 / (1 - rate) where the uniform is >= rate, else 0, in the uniforms'
    dtype (one pass: a division of the bool mask would first convert it)."""
    scale = 1 / (1 - rate if isinstance(rate, Tensor) else uniforms.new_tensor(1 - rate))
    return torch.where(uniforms >= rate, scale, 0.0)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class LFADS(nn.Module):
    """Sequential VAE: encoders infer g0 (and inputs u_t), a generator produces the factors.

    Submodules in data-flow order: ``ic_encoder``, ``ic_linear``, ``ic_prior``, ``ci_encoder``,
    ``controller`` / ``con_h0`` / ``co_linear`` / ``co_prior`` (only with co_dim > 0),
    ``ic_to_g0``, ``generator`` (``GRUGenerator``, or ``NeuralODEGenerator`` with
    ``config.generator = "node"``), ``factor_readout``, and the session's ends
    ``session`` (``SessionEnds``: the read-in of the held-in channels ``heldin`` (N,) bool,
    default the first encod_dim, and ``observation``, the readout to the observation parameters
    plus the likelihood).

    The model protocol (``lfads_nb.models.registry.Model``) that ``train``, ``infer`` and the tuners
    use: ``loss(batch, weights)``, ``entry_nll(batch)``, ``infer_batch(batch, sample)`` with
    ``output_dims``, ``check_data(ds)``, ``check_training(train_config)`` and a dataclass
    ``config``. ``forward`` is LFADS's own: the core from the read-in encoder input. The Neural
    Data Transformer (``lfads_nb.models.ndt.NDT``) is a second model on this protocol.

    ``fused`` (default True) runs the generator's recurrence, and the controller's with it, as
    the fused kernels of ``lfads_nb.models._fused_gru`` (without a controller: the generator's
    ``scan``, for a neural ODE ``lfads_nb.models._fused_node``); with a controller, a generator
    that is not ``fusable`` (a neural ODE) runs on the step loop. ``fused=False`` runs the step loop of
    ``decode``, the same computation in plain autograd (slower; step through it in a debugger).
    The encoders always use the fused scan; ``fused=True`` runs the IC and CI encoders as one
    scan when they have one width.

    Initial states: the encoders' and the controller's (``con_h0``) are learnable vectors
    (init 0). The controller's first input uses the factors of the generator's initial
    state, f_{-1} = W_fac dropout(linear(g0)), as lfads-torch does.
    """

    output_dims = {"factors": ("trial", "time", "factor"), "inputs": ("trial", "time", "inferred_input"),
                   "ic_mean": ("trial", "ic"), "generator_states": ("trial", "time", "generator")}

    def __init__(self, config: LFADSConfig, *, fused: bool = True, heldin: Tensor | None = None):
        super().__init__()
        if not isinstance(config, LFADSConfig):
            raise ConfigError(f"LFADS needs an LFADSConfig, got {type(config).__name__}.")
        self.config = c = config
        self.fused = bool(fused)
        self.ic_encoder = BidirectionalEncoder(c.encod_dim, c.ic_enc_dim, c.cell_clip)
        self.ic_linear = _fan_in_linear(2 * c.ic_enc_dim, 2 * c.ic_dim)
        with torch.no_grad():  # log-variance half: a wide start rewards dynamics that forget g0 (contraction)
            self.ic_linear.bias[c.ic_dim :] = math.log(c.ic_post_var_init)
        self.ic_prior = GaussianPrior(c.ic_dim, c.ic_prior_var)
        if c.co_dim:
            self.ci_encoder = BidirectionalEncoder(c.encod_dim, c.ci_enc_dim, c.cell_clip)
            self.controller = ClippedGRU(2 * c.ci_enc_dim + c.fac_dim, c.con_dim, c.cell_clip)
            self.con_h0 = nn.Parameter(torch.zeros(c.con_dim))
            self.co_linear = _fan_in_linear(c.con_dim, 2 * c.co_dim)
            self.co_prior = AR1Prior(c.co_dim, c.co_prior_tau, c.co_prior_var)
        self.ic_to_g0 = _fan_in_linear(c.ic_dim, c.gen_dim)
        self.generator = make_generator(c)
        self.factor_readout = FactorReadout(c.gen_dim, c.fac_dim)
        self.add_session_ends(heldin)

    def add_session_ends(self, heldin: Tensor | None) -> None:
        """The one session's ends: the read-in of the held-in channels and the observation model
        (``StitchedLFADS`` gives each of several sessions its own instead)."""
        c = self.config
        if heldin is None:
            heldin = torch.arange(c.n_neurons) < c.encod_dim
        if tuple(torch.as_tensor(heldin).shape) != (c.n_neurons,) or int(torch.as_tensor(heldin).sum()) != c.encod_dim:
            raise ConfigError(f"heldin must be a boolean mask over the {c.n_neurons} neurons with encod_dim = "
                              f"{c.encod_dim} True entries; build the model with lfads_nb.build_model(ds, ...).")
        self.session = SessionEnds(HeldInReadIn(heldin), make_observation(c.observation, c.n_neurons, c.fac_dim))

    @property
    def observation(self) -> ObservationModel:
        """The session's observation model (readout to the observation parameters, plus the likelihood)."""
        return self.session.observation

    # ---- encoders ---------------------------------------------------------------------------

    def encode_ic(self, x: Tensor, drop) -> tuple[Tensor, Tensor]:
        """Posterior of g0 from the (dropped-out) input x (B, T, E): mean, std, each (B, ic_dim)."""
        return self._ic_posterior(self.ic_encoder.final_states(x), drop)

    def _ic_posterior(self, final_states: Tensor, drop) -> tuple[Tensor, Tensor]:
        """mean, std of g0 from the IC encoder's final states (B, 2 ic_enc_dim).

        std = sqrt(exp(logvar) + ic_post_var_min): the floor keeps the posterior from collapsing.
        """
        mean, logvar = self.ic_linear(drop(final_states, "ic_enc")).chunk(2, dim=-1)
        return mean, torch.sqrt(torch.exp(logvar) + self.config.ic_post_var_min)

    def encode_controller_inputs(self, x: Tensor) -> Tensor:
        """Controller inputs e (B, T, 2 ci_enc_dim) from the (dropped-out) input x (B, T, E)."""
        return self._lagged(*self.ci_encoder(x))

    @staticmethod
    def _lagged(fwd: Tensor, bwd: Tensor) -> Tensor:
        """Controller inputs from the CI encoder's states fwd, bwd (B, T, ci_enc_dim).

        Lag of one step (as the original LFADS and lfads-torch): e_t = [fwd_{t-1}, bwd_{t+1}],
        zeros past the edges. So e_t summarises x_0..x_{t-1} and x_{t+1}..x_{T-1} but never x_t
        itself, and u_t cannot copy the spikes it is asked to reconstruct at t. Built time first
        (returned as a (B, T, .) view), the layout the decoder's kernels step through.
        """
        fwd, bwd = fwd.transpose(0, 1), bwd.transpose(0, 1)
        lagged = torch.cat([F.pad(fwd[:-1], (0, 0, 0, 0, 1, 0)), F.pad(bwd[1:], (0, 0, 0, 0, 0, 1))], dim=-1)
        return lagged.transpose(0, 1)

    def encode(self, x: Tensor, drop) -> tuple[Tensor, Tensor, Tensor | None]:
        """Both encoders over the (dropped-out) input x (B, T, E): ic_mean, ic_std (B, ic_dim) and the
        controller inputs (B, T, 2 ci_enc_dim), or None without a controller. When ``fused`` and the
        encoders have one width, they run as one scan (``bidirectional_scans``); otherwise
        ``encode_ic`` and ``encode_controller_inputs`` one after the other (the same numbers)."""
        c = self.config
        if not c.co_dim:
            return *self.encode_ic(x, drop), None
        if c.ic_enc_dim != c.ci_enc_dim or not self.fused:
            return *self.encode_ic(x, drop), self.encode_controller_inputs(x)
        (_, ic_last), (ci_states, _) = bidirectional_scans([self.ic_encoder, self.ci_encoder], x)
        ic_mean, ic_std = self._ic_posterior(BidirectionalEncoder.summary(ic_last), drop)
        return ic_mean, ic_std, self._lagged(*BidirectionalEncoder.directions(ci_states))

    # ---- decoder (controller + generator) ---------------------------------------------------

    def decode(self, g_init: Tensor, ci: Tensor | None, ext: Tensor, drop, masks, co_eps: Tensor | None):
        """Controller and generator over all T bins: the step loop, or the fused kernels.

        g_init (B, gen_dim); ci (B, T, 2 ci_enc_dim) or None without a controller; ext
        (B, T, ext_input_dim) already dropped out; ``drop(v, site)`` applies the dropout of a
        ``Noise`` site; ``masks(site)`` gives that site's dropout multipliers (or None);
        co_eps (B, T, co_dim) posterior normals, or None for posterior means.
        Returns states (B, T, gen_dim), factors (B, T, fac_dim), u, co_mean, co_std (B, T, co_dim).
        """
        c = self.config
        B, T = ext.shape[:2]
        w_fac = self.factor_readout.normalized_weight()
        scans = not c.co_dim and hasattr(self.generator, "scan")  # a generator with only a step runs the loop
        if self.fused and (self.generator.fusable or scans):
            return self._decode_fused(g_init, ci, ext, drop, masks, co_eps, w_fac)
        g = g_init
        outputs = {"states": [], "factors": [], "u": [], "co_mean": [], "co_std": []}
        ext_t, eps_t = ext.unbind(1), co_eps.unbind(1) if co_eps is not None else None
        if c.co_dim:
            con, n_ci = self.controller, 2 * c.ci_enc_dim
            # dropout([e_t, f_{t-1}]) == [dropout(e_t), dropout(f_{t-1})]: independent per element
            con_xp_ci = F.linear(drop(ci, "ci"), con.weight_ih[0, :, :n_ci], con.bias_ih[0]).unbind(1)
            factor_masks = masks("factors_in")
            h_con = self.con_h0.expand(B, -1)
            f = F.linear(drop(g_init, "g_init"), w_fac)  # f_{-1}
        state_masks = masks("gen_states")
        for t in range(T):
            if c.co_dim:
                f_in = f * factor_masks[:, t] if factor_masks is not None else f
                h_con = gru_step(con_xp_ci[t] + F.linear(f_in, con.weight_ih[0, :, n_ci:]), h_con, con.weight_hh[0],
                                 c.cell_clip)
                co_mean, co_logvar = self.co_linear(h_con).chunk(2, dim=-1)
                co_std = torch.exp(0.5 * co_logvar)
                u = co_mean + co_std * eps_t[t] if eps_t is not None else co_mean
                outputs["u"].append(u), outputs["co_mean"].append(co_mean), outputs["co_std"].append(co_std)
                g = self.generator.step(g, torch.cat([u, ext_t[t]], dim=-1))
            else:
                g = self.generator.step(g, ext_t[t])
            f = F.linear(g * state_masks[:, t] if state_masks is not None else g, w_fac)
            outputs["states"].append(g), outputs["factors"].append(f)
        empty = ext.new_zeros(B, T, 0)
        return tuple(torch.stack(v, dim=1) if v else empty for v in outputs.values())

    def _decode_fused(self, g_init, ci, ext, drop, masks, co_eps, w_fac):
        """``decode`` on the fused kernels: the generator's ``scan`` without a controller (its
        inputs are then known in advance), ``controlled_decode`` with one."""
        c, gen = self.config, self.generator
        B, T = ext.shape[:2]

        def steps(x: Tensor | None) -> Tensor | None:  # (B, T, k) -> (T, D=1, B, k)
            return None if x is None else x.transpose(0, 1).unsqueeze(1)

        def batch_first(x: Tensor) -> Tensor:  # (T, D=1, B, k) -> (B, T, k), a view
            return x.squeeze(1).transpose(0, 1)

        if not c.co_dim:
            states = gen.scan(g_init, ext)
            factors = F.linear(drop(states, "gen_states"), w_fac)
            empty = ext.new_zeros(B, T, 0)
            return states, factors, empty, empty, empty
        # Time-first products below (the kernels' layout), so no matmul or gradient copies to reorder.
        gen_xp_ext = _linear(ext, gen.weight_ih[0, :, c.co_dim :], gen.bias_ih[0])
        con, n_ci = self.controller, 2 * c.ci_enc_dim
        con_xp_ci = F.linear(drop(ci, "ci").transpose(0, 1), con.weight_ih[0, :, :n_ci], con.bias_ih[0])
        f_init = F.linear(drop(g_init, "g_init"), w_fac)  # f_{-1}
        weights = DecoderWeights(
            controller=con.weight_hh, controller_factors=con.weight_ih[:, :, n_ci:],
            co_weight=self.co_linear.weight[None], co_bias=self.co_linear.bias[None],
            generator_inputs=gen.weight_ih[:, :, : c.co_dim], generator=gen.weight_hh, factors=w_fac[None],
        )
        outputs = controlled_decode(
            con_xp_ci.unsqueeze(1), steps(gen_xp_ext), self.con_h0.expand(1, B, -1), g_init[None], f_init[None],
            weights, steps(masks("factors_in")), steps(masks("gen_states")), steps(co_eps), c.cell_clip,
        )
        return tuple(batch_first(o) for o in outputs)

    # ---- forward ----------------------------------------------------------------------------

    def _check_inputs(self, encoder_input: Tensor, ext_input: Tensor | None) -> None:
        c = self.config
        dtype = self.generator.weight_hh.dtype
        if not isinstance(encoder_input, Tensor) or encoder_input.dim() != 3 or encoder_input.shape[-1] != c.encod_dim:
            shape = tuple(encoder_input.shape) if isinstance(encoder_input, Tensor) else type(encoder_input).__name__
            raise DataError(
                f"encoder_input must be a tensor (trial, time, {c.encod_dim}); got {shape}. "
                "Set LFADSConfig.encod_dim (or n_neurons) to the number of input channels."
            )
        if encoder_input.dtype != dtype:
            raise DataError(
                f"encoder_input has dtype {encoder_input.dtype}, the model {dtype}; convert with .to({dtype})."
            )
        if encoder_input.shape[1] == 0:
            raise DataError("encoder_input has zero time bins; LFADS needs at least one.")
        if c.ext_input_dim == 0:
            if ext_input is not None and ext_input.shape[-1] != 0:
                raise DataError(
                    "ext_input was given but LFADSConfig.ext_input_dim is 0; set ext_input_dim to its width."
                )
            return
        expected = (*encoder_input.shape[:2], c.ext_input_dim)
        if ext_input is None or tuple(ext_input.shape) != expected:
            got = None if ext_input is None else tuple(ext_input.shape)
            raise DataError(f"ext_input must have shape {expected} (trial, time, ext_input_dim); got {got}.")
        if ext_input.dtype != dtype:
            raise DataError(f"ext_input has dtype {ext_input.dtype}, the model {dtype}; convert with .to({dtype}).")

    def forward(self, encoder_input: Tensor, ext_input: Tensor | None = None, *, sample: bool = True,
                noise: Noise | None = None, dropout: float | Tensor | None = None) -> LFADSOutput:
        """Infer everything for a batch.

        encoder_input (B, T, encod_dim): already masked, rescaled and read in by the caller
        (``encoder_view(batch)``). ext_input (B, T, ext_input_dim) or None.
        ``sample=True`` draws g0 and u_t from their posteriors (training, posterior sampling);
        ``sample=False`` uses the posterior means. kl_co is the one-sample estimate at the drawn
        u when sampling, and its closed-form expectation when not (so ``sample=False`` is
        deterministic in eval mode). Dropout applies in train mode only, at rate ``dropout``
        (default ``config.dropout``; a tensor under ``torch.func.vmap`` for per-member rates).
        ``noise``: the random numbers to use (``draw_noise``); drawn from torch's global
        generator when None.
        """
        out = self.core(encoder_input, ext_input, sample=sample, noise=noise, dropout=dropout)
        return out._replace(obs_params=self.observation(out.factors))

    def core(self, encoder_input: Tensor, ext_input: Tensor | None = None, *, sample: bool = True,
             noise: Noise | None = None, dropout: float | Tensor | None = None) -> LFADSOutput:
        """``forward`` up to the factors, shared by every session: ``obs_params`` is None (each
        session's observation model reads the factors out; ``StitchedLFADS`` splits them by session)."""
        self._check_inputs(encoder_input, ext_input)
        c = self.config
        B, T, _ = encoder_input.shape
        rate = c.dropout if dropout is None else dropout
        training = self.training
        if noise is None and (training or sample):
            noise = draw_noise(c, B, T, dtype=encoder_input.dtype, device=encoder_input.device,
                               dropout=training, sample=sample)

        def masks(site: str) -> Tensor | None:
            uniforms = getattr(noise, site) if training else None
            return None if uniforms is None else _keep(uniforms, rate)

        def drop(v: Tensor, site: str) -> Tensor:
            m = masks(site)
            return v if m is None else v * m

        x = drop(encoder_input, "x")
        ic_mean, ic_std, ci = self.encode(x, drop)
        g0 = ic_mean + ic_std * noise.ic_eps if sample else ic_mean
        kl_ic = self.ic_prior.kl(ic_mean, ic_std)
        g_init = self.ic_to_g0(g0)
        ext = drop(ext_input, "ext") if c.ext_input_dim else x.new_zeros(B, T, 0)
        co_eps = noise.co_eps if sample else None
        states, factors, u, co_mean, co_std = self.decode(g_init, ci, ext, drop, masks, co_eps)
        if not c.co_dim:
            kl_co = x.new_zeros(B)
        elif sample:
            kl_co = self.co_prior.kl_sample(co_mean, co_std, u)
        else:
            kl_co = self.co_prior.kl_expected(co_mean, co_std)
        return LFADSOutput(None, factors, states, u, ic_mean, ic_std, co_mean, co_std, kl_ic, kl_co)

    # ---- objective --------------------------------------------------------------------------

    def l2_penalties(self) -> dict[str, Tensor]:
        """0.5 ||W_hh||^2 / (number of entries of W_hh) for the generator and the controller.

        The training loss multiplies them by l2_gen_scale and l2_con_scale (and the L2 ramp).
        """

        def l2(w: Tensor) -> Tensor:
            return 0.5 * w.pow(2).sum() / w.numel()

        w_gen = self.generator.weight_hh
        return {
            "l2_gen": l2(w_gen),
            "l2_con": l2(self.controller.weight_hh) if self.config.co_dim else w_gen.new_zeros(()),
        }

    def objective(self, out: LFADSOutput, batch: Batch, weights: Mapping) -> tuple[Tensor, dict[str, Tensor]]:
        """The training loss of one batch (lfads-torch's scale) and its parts.

            loss = recon + kl_ramp (kl_ic_scale KL_ic + kl_co_scale KL_co)
                         + l2_ramp (l2_gen_scale L2_gen + l2_con_scale L2_con) + observation penalty

        recon: the mean per-entry NLL over ``batch.loss_mask``; KLs in nats per trial, averaged
        over the batch. ``weights`` maps those six names to numbers (0-d tensors under vmap).
        """
        w = weights
        recon = masked_mean(self.observation.nll(out.obs_params, batch.target), batch.loss_mask)
        kl_ic, kl_co = out.kl_ic.mean(), out.kl_co.mean()
        l2 = self.l2_penalties()
        loss = (
            recon
            + w["kl_ramp"] * (w["kl_ic_scale"] * kl_ic + w["kl_co_scale"] * kl_co)
            + w["l2_ramp"] * (w["l2_gen_scale"] * l2["l2_gen"] + w["l2_con_scale"] * l2["l2_con"])
            + self.observation.penalty()
        )
        return loss, {"train_recon": recon, "kl_ic": kl_ic, "kl_co": kl_co, "l2": l2["l2_gen"] + l2["l2_con"]}

    # ---- the model protocol: what train, infer and the tuners use -------------------------

    def encoder_view(self, batch: Batch) -> Tensor:
        """What the encoders read (B, T, encod_dim): ``encoder_read_in`` of the session's read-in."""
        return encoder_read_in(self.session.read_in, batch, self.config.log1p_encoder_input)

    def loss(self, batch: Batch, weights: Mapping, *, noise: Noise | None = None,
             dropout: float | Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """``objective`` of a training forward pass (posterior samples) on ``batch``."""
        out = self(self.encoder_view(batch), batch.ext, sample=True, noise=noise, dropout=dropout)
        return self.objective(out, batch, weights)

    def entry_nll(self, batch: Batch) -> Tensor:
        """(B, T, N) NLL of every entry of ``batch.target`` under the posterior means (nats)."""
        out = self(self.encoder_view(batch), batch.ext, sample=False)
        return self.observation.nll(out.obs_params, batch.target)

    def infer_batch(self, batch: Batch, *, sample: bool) -> dict[str, Tensor]:
        """What ``infer`` returns for a batch: ``mean``, the observation mean per bin (B, T, N)
        (the data kind names it and sets its units), and the outputs named in ``output_dims``."""
        out = self(self.encoder_view(batch), batch.ext, sample=sample)
        return {"mean": self.observation.mean(out.obs_params), "factors": out.factors, "inputs": out.inputs,
                "ic_mean": out.ic_mean, "generator_states": out.gen_states}

    def check_data(self, ds) -> None:
        """Raise DataError unless the model was built for these data's neurons, held-in neurons
        and external inputs."""
        c = self.config
        heldin = heldin_mask(ds)
        ext_dim = ds.sizes["ext_input_dim"] if "ext_input" in ds else 0
        same_heldin = self.session.read_in.index.tolist() == np.flatnonzero(heldin).tolist()
        if (c.n_neurons, c.ext_input_dim) != (ds.sizes["neuron"], ext_dim) or not same_heldin:
            n_heldin = int(heldin.sum())
            raise DataError(
                f"The model was built for {c.n_neurons} neurons ({c.encod_dim} held in) and {c.ext_input_dim} "
                f"external inputs, but the data have {ds.sizes['neuron']} neurons ({n_heldin} held in) and "
                f"{ext_dim} external inputs. Build the model for these data with lfads_nb.build_model(ds, ...)."
            )

    def check_training(self, train_config) -> None:
        """Warn about a training setup this model is known to fail with: a controller trained
        without coordinated dropout or temporal shift copies the data into its output (identity
        overfitting)."""
        if self.config.co_dim > 0 and train_config.cd_rate == 0 and train_config.shift_std == 0:
            warnings.warn("The model has a controller (co_dim > 0) but TrainConfig.cd_rate and shift_std are 0, so its "
                          "inferred inputs can copy spikes into the rates (identity overfitting, tutorial 03). Set "
                          "TrainConfig(cd_rate=0.3) (or, for EMG, shift_std=3), or co_dim=0 for an autonomous model.",
                          UserWarning, stacklevel=3)
