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
Without a controller (co_dim = 0) the generator's inputs do not depend on its state, so the whole
generator recurrence runs as one fused autograd Function with a hand-written backward pass
(``clipped_gru_scan``); the encoders, whose inputs never depend on their state, always use it
(they use the same clipped cell as the generator, as in lfads-torch, rather than torch.nn.GRU).
With a controller, controller and generator are coupled step by step through u_t and f_t; they
run together as a second fused Function (``controlled_decode``). The step loop in
``LFADS._decode_loop`` is the plain-autograd reference; the tests check that both fused paths
agree with it in value and gradient.

Sampling uses the global torch RNG, so ``torch.manual_seed`` makes runs reproducible.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError, DataError
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
    ic_prior_var: float = 0.1
    co_prior_tau: float = 10.0
    co_prior_var: float = 0.1
    observation: str | dict = "poisson"

    def __post_init__(self):
        if self.encod_dim is None:
            self.encod_dim = self.n_neurons
        sizes = ["n_neurons", "encod_dim", "ext_input_dim", "ic_enc_dim", "ci_enc_dim", "con_dim", "co_dim"]
        sizes += ["ic_dim", "gen_dim", "fac_dim"]
        positive = ["n_neurons", "encod_dim", "ic_enc_dim", "ic_dim", "gen_dim", "fac_dim"]
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
        for name in ["dropout", "cell_clip", "ic_post_var_min", "ic_prior_var", "co_prior_tau", "co_prior_var"]:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ConfigError(f"LFADSConfig.{name} must be a finite number, got {value!r}.")
            setattr(self, name, float(value))
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LFADSConfig.dropout is a drop probability in [0, 1), got {self.dropout}.")
        for name in ["cell_clip", "ic_post_var_min", "ic_prior_var", "co_prior_tau", "co_prior_var"]:
            if getattr(self, name) <= 0:
                raise ConfigError(f"LFADSConfig.{name} must be > 0, got {getattr(self, name)}.")
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
# The recurrent cell: TF-style clipped GRU, a step (reference) and a fused scan (fast)
# --------------------------------------------------------------------------------------------


def gru_step(xp_t: Tensor, h: Tensor, w_hh: Tensor, clip: float) -> Tensor:
    """One step of the TF-style GRU. Plain autograd; the reference for ``clipped_gru_scan``.

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


class _GRUBuffers(NamedTuple):
    """What a fused recurrence of D GRUs over T steps computes and keeps for its backward pass."""

    hs: Tensor  # (T + 1, D, B, H) states h_0 .. h_T
    rz: Tensor  # (T, D, B, 2H) the input projections, then the gates r | z
    n: Tensor  # (T, D, B, H) the input projection, then the candidate n
    rh: Tensor  # (T, D, B, H) r * h_{t-1}, the input of the candidate matmul
    pre: Tensor  # (T, D, B, H) state before clipping (its mask gates the gradient)

    @staticmethod
    def start(xp: Tensor, h0: Tensor) -> _GRUBuffers:
        """Buffers for input projections xp (T, D, B, 3H) and initial state h0 (D, B, H). The gate
        buffers start as the input projections; each step adds its matmul in place."""
        T, D, B, H3 = xp.shape
        H = H3 // 3
        hs = xp.new_empty(T + 1, D, B, H)
        hs[0] = h0
        return _GRUBuffers(
            hs,
            xp[..., : 2 * H].clone(memory_format=torch.contiguous_format),
            xp[..., 2 * H :].clone(memory_format=torch.contiguous_format),
            xp.new_empty(T, D, B, H),
            xp.new_empty(T, D, B, H),
        )

    def steps(self) -> _GRUBuffers:
        """The same buffers as tuples of per-step views (unbind once: no per-step Python slicing)."""
        return _GRUBuffers(*(b.unbind(0) for b in self))


def _gru_step_(b: _GRUBuffers, t: int, w_rz_t: Tensor, w_n_t: Tensor, clip: float) -> None:
    """Step t of ``gru_step`` for D GRUs without a graph, in place in ``b`` (per-step views): from
    h_t and the input projections in rz[t], n[t] to the gates, the candidate, rh[t], pre[t] and
    h_{t+1}. w_rz_t (D, H, 2H), w_n_t (D, H, H): the recurrent weights' blocks, transposed."""
    h, rz, n, pre = b.hs[t], b.rz[t], b.n[t], b.pre[t]
    H = h.shape[-1]
    rz.baddbmm_(h, w_rz_t).sigmoid_()
    torch.mul(rz[..., :H], h, out=b.rh[t])
    # tanh(a) = 2 sigmoid(2a) - 1: CPU sigmoid is several times faster than tanh
    n.baddbmm_(b.rh[t], w_n_t, beta=2, alpha=2).sigmoid_().mul_(2).sub_(1)
    torch.addcmul(n, rz[..., H:], torch.sub(h, n, out=pre), out=pre)  # n + z (h - n)
    torch.clamp(pre, -clip, clip, out=b.hs[t + 1])


def _gru_local_grads(b: _GRUBuffers, clip: float) -> tuple[Tensor, Tensor]:
    """Local derivatives of all T steps of a ``_gru_step_`` recurrence, vectorised.

    Returns coef (T, D, B, 3, H) and mz (T, D, B, H). With the clip mask m = 1 where
    |pre| <= clip (torch.clamp's rule) folded in, for the gate blocks (r, z, n):
        dL/d(r pre-act) = dL/d(r h) * coef_r,   coef_r = h r (1 - r)
        dL/d(z pre-act) = dL/dh' * coef_z,      coef_z = m (h - n) z (1 - z)
        dL/d(n pre-act) = dL/dh' * coef_n,      coef_n = m (1 - z) (1 - n^2)
    and mz = m z, the derivative dh'/dh through the z h term. Written into one preallocated
    tensor (fresh multi-MB temporaries cost page faults).
    """
    h_prev, n = b.hs[:-1], b.n
    H = n.shape[-1]
    r, z = b.rz[..., :H], b.rz[..., H:]
    coef = n.new_empty(*n.shape[:-1], 3, H)
    c_r, c_z, c_n = coef.unbind(-2)
    m = torch.abs(b.pre, out=c_n).le_(clip)  # 1.0 / 0.0
    mz = m * z
    c_n.sub_(mz)  # m (1 - z)
    torch.sub(h_prev, n, out=c_z).mul_(z).mul_(c_n)
    torch.mul(n, n, out=c_r).neg_().add_(1)  # 1 - n^2, c_r as scratch
    c_n.mul_(c_r)
    torch.mul(r, r, out=c_r).neg_().add_(r).mul_(h_prev)
    return coef, mz


def _gru_step_backward(dh: Tensor, d_xp: Tensor, dh_prev: Tensor, coef: Tensor, mz: Tensor, r: Tensor,
                       w_rz: Tensor, w_n: Tensor) -> None:
    """Backpropagate one step: dh = dL/dh_t (D, B, H) -> writes d_xp (D, B, 3H), the gradients of
    the gate pre-activations, and dh_prev (D, B, H), dL/dh_{t-1} through this step. coef, mz, r:
    this step's slices of ``_gru_local_grads`` and of the gates; w_rz (D, 2H, H), w_n (D, H, H)."""
    D, B, H = dh.shape
    blocks = d_xp.view(D, B, 3, H)
    torch.mul(dh.unsqueeze(-2), coef[..., 1:, :], out=blocks[..., 1:, :])
    d_rh = torch.bmm(d_xp[..., 2 * H :], w_n)
    torch.mul(d_rh, coef[..., 0, :], out=blocks[..., 0, :])
    torch.mul(dh, mz, out=dh_prev)
    dh_prev.addcmul_(d_rh, r).baddbmm_(d_xp[..., : 2 * H], w_rz)


def _flat_steps(x: Tensor) -> Tensor:
    """(T, D, B, k) -> (D, T*B, k): all steps and trials of each of the D models as rows."""
    T, D, B, k = x.shape
    return x.transpose(0, 1).reshape(D, T * B, k)


def _weight_grad(d_out: Tensor, inputs: Tensor) -> Tensor:
    """dL/dW (D, k, j) of y = x W^T summed over all steps and trials: d_out (T, D, B, k), inputs x
    (T, D, B, j). One large matmul per model instead of T small ones; per model rather than one
    bmm because batched kernels can round batch entries differently at odd sizes, and population
    training relies on a copied member taking exactly the original's step."""
    d_out, inputs = _flat_steps(d_out), _flat_steps(inputs)
    return torch.stack([d_out[d].T @ inputs[d] for d in range(d_out.shape[0])])


def _gru_weight_grad(d_xp: Tensor, b: _GRUBuffers) -> Tensor:
    """dL/dW_hh (D, 3H, H) from all steps' gate gradients d_xp (T, D, B, 3H) and the recurrence's
    states h_{t-1} and r * h_{t-1}."""
    H = b.n.shape[-1]
    return torch.cat([_weight_grad(d_xp[..., : 2 * H], b.hs[:-1]), _weight_grad(d_xp[..., 2 * H :], b.rh)], dim=1)


class _ClippedGRUScan(torch.autograd.Function):
    """The whole recurrence h_1..h_T of D independent GRUs in one autograd node.

    Forward runs ``gru_step`` T times without recording a graph, in place in preallocated
    buffers; backward is hand-written backpropagation through time. This replaces ~20
    autograd nodes per step with about ten in-place kernels, and turns the weight gradient
    into two large matmuls over all steps instead of 2T small ones.
    Shapes: xp (T, D, B, 3H), h0 (D, B, H), w_hh (D, 3H, H) -> states (T, D, B, H) and the
    last state (D, B, H) (a separate output so that users of the last state alone, like the
    IC encoder, send no gradient for the other T - 1 states).
    """

    @staticmethod
    def forward(ctx, xp: Tensor, h0: Tensor, w_hh: Tensor, clip: float) -> tuple[Tensor, Tensor]:
        T, D, B, H3 = xp.shape
        H = H3 // 3
        w_rz_t, w_n_t = w_hh[:, : 2 * H].transpose(1, 2), w_hh[:, 2 * H :].transpose(1, 2)
        b = _GRUBuffers.start(xp, h0)
        steps = b.steps()
        for t in range(T):
            _gru_step_(steps, t, w_rz_t, w_n_t, clip)
        ctx.save_for_backward(w_hh, *b)
        ctx.clip = clip
        ctx.set_materialize_grads(False)
        return b.hs[1:], b.hs[T].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_states: Tensor | None, d_last: Tensor | None):
        w_hh, *saved = ctx.saved_tensors
        b = _GRUBuffers(*saved)
        T, D, B, H = b.n.shape
        coef, mz = _gru_local_grads(b, ctx.clip)
        w_rz, w_n = w_hh[:, : 2 * H], w_hh[:, 2 * H :]
        d_xp = b.n.new_empty(T, D, B, 3 * H)  # gradients of the gate pre-activations (r, z, n)
        d_xp_, coef_, mz_, r_ = d_xp.unbind(0), coef.unbind(0), mz.unbind(0), b.rz[..., :H].unbind(0)
        # dh = dL/dh_t in total (from the output at t and from step t + 1): two buffers in turn.
        dh, nxt = b.n.new_zeros(D, B, H), b.n.new_empty(D, B, H)
        if d_last is not None:
            dh.copy_(d_last)
        for t in range(T - 1, -1, -1):
            if d_states is not None:
                dh.add_(d_states[t])
            _gru_step_backward(dh, d_xp_[t], nxt, coef_[t], mz_[t], r_[t], w_rz, w_n)
            dh, nxt = nxt, dh
        d_w = _gru_weight_grad(d_xp, b) if ctx.needs_input_grad[2] else None
        return d_xp, dh, d_w, None


def clipped_gru_scan(xp: Tensor, h0: Tensor, w_hh: Tensor, clip: float) -> tuple[Tensor, Tensor]:
    """Run ``gru_step`` over all T steps of D independent GRUs.

    xp (T, D, B, 3H), h0 (D, B, H), w_hh (D, 3H, H) -> (states (T, D, B, H), last state (D, B, H)).
    Equal to looping ``gru_step`` (tested in value and gradient) but several times faster.
    Only valid when the inputs xp do not depend on the states (encoders; generator without
    a controller).
    """
    return _ClippedGRUScan.apply(xp, h0, w_hh, clip)


class _ControlledDecoder(torch.autograd.Function):
    """Controller and generator (co_dim > 0) of D models over all T steps in one autograd node.

    The two recurrences are coupled through u_t and f_t, so they run step by step together,
    without a graph, in preallocated buffers (``_GRUBuffers``, ``_gru_step_``); backward is
    hand-written backpropagation through time. ``LFADS._decode_loop`` is the same computation in
    plain autograd. At step t, with dropout multipliers fm_t, gm_t (0 or 1 / (1 - rate)):

        a_t = ci_t + (f_{t-1} fm_t) W_cf^T               controller input (f_{-1}: f0)
        h_t = GRU_con(a_t, h_{t-1})
        m_t | l_t = h_t W_co^T + b_co,   s_t = exp(l_t / 2)
        u_t = m_t + s_t eps_t                            (u_t = m_t without eps: posterior means)
        g_t = GRU_gen(ge_t + u_t W_gu^T, g_{t-1})
        f_t = (g_t gm_t) W_fac^T

    Shapes (K = co_dim, C = con_dim, G = gen_dim, F = fac_dim): ci (T, D, B, 3C) and ge
    (T, D, B, 3G) the input projections known in advance (encoded inputs, external inputs,
    biases); h0 (D, B, C), g0 (D, B, G), f0 (D, B, F); w_con (D, 3C, C), w_cf (D, 3C, F),
    w_co (D, 2K, C), b_co (D, 2K), w_gu (D, 3G, K), w_gen (D, 3G, G), w_fac (D, F, G);
    fm (T, D, B, F), gm (T, D, B, G), eps (T, D, B, K), each or None.
    Returns g, f (T, D, B, G / F) and u, m, s (T, D, B, K).
    """

    @staticmethod
    def forward(ctx, ci, ge, h0, g0, f0, w_con, w_cf, w_co, b_co, w_gu, w_gen, w_fac, fm, gm, eps, clip):
        T, D, B, _ = ci.shape
        C, G, K = h0.shape[-1], g0.shape[-1], w_gu.shape[-1]
        con, gen = _GRUBuffers.start(ci, h0), _GRUBuffers.start(ge, g0)
        f_in = ci.new_empty(T, D, B, f0.shape[-1])  # f_{t-1} fm_t, the controller's factor input
        fs = ci.new_empty(T + 1, D, B, f0.shape[-1])  # f_{-1} .. f_{T-1}
        fs[0] = f0
        mo = ci.new_empty(T, D, B, 2 * K)  # m_t | l_t
        s, u = ci.new_empty(T, D, B, K), ci.new_empty(T, D, B, K)

        def blocks_t(w, H):  # gate blocks (r|z, n) of w, transposed; contiguous once, not per step
            return w[:, : 2 * H].transpose(1, 2).contiguous(), w[:, 2 * H :].transpose(1, 2).contiguous()

        w_con_t, w_gen_t, w_cf_t, w_gu_t = blocks_t(w_con, C), blocks_t(w_gen, G), blocks_t(w_cf, C), blocks_t(w_gu, G)
        w_co_t, w_fac_t = w_co.transpose(1, 2).contiguous(), w_fac.transpose(1, 2).contiguous()
        b_co_ = b_co.unsqueeze(1)
        con_, gen_ = con.steps(), gen.steps()
        for t in range(T):
            if fm is not None:
                torch.mul(fs[t], fm[t], out=f_in[t])
            else:
                f_in[t].copy_(fs[t])
            con_.rz[t].baddbmm_(f_in[t], w_cf_t[0])
            con_.n[t].baddbmm_(f_in[t], w_cf_t[1])
            _gru_step_(con_, t, *w_con_t, clip)
            torch.baddbmm(b_co_, con_.hs[t + 1], w_co_t, out=mo[t])
            torch.exp(mo[t, ..., K:].mul(0.5), out=s[t])
            if eps is not None:
                torch.addcmul(mo[t, ..., :K], s[t], eps[t], out=u[t])
            else:
                u[t].copy_(mo[t, ..., :K])
            gen_.rz[t].baddbmm_(u[t], w_gu_t[0])
            gen_.n[t].baddbmm_(u[t], w_gu_t[1])
            _gru_step_(gen_, t, *w_gen_t, clip)
            g_read = gen_.hs[t + 1] * gm[t] if gm is not None else gen_.hs[t + 1]
            torch.bmm(g_read, w_fac_t, out=fs[t + 1])
        ctx.save_for_backward(w_con, w_cf, w_co, w_gu, w_gen, w_fac, fm, gm, eps, f_in, s, u, *con, *gen)
        ctx.clip = clip
        ctx.set_materialize_grads(False)
        return gen.hs[1:], fs[1:], u, mo[..., :K], s

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_g, d_f, d_u, d_m, d_s):
        w_con, w_cf, w_co, w_gu, w_gen, w_fac, fm, gm, eps, f_in, s, u, *rest = ctx.saved_tensors
        w_cf, w_co, w_gu, w_fac = (w.contiguous() for w in (w_cf, w_co, w_gu, w_fac))  # slices of larger weights
        con, gen = _GRUBuffers(*rest[:5]), _GRUBuffers(*rest[5:])
        T, D, B, C = con.n.shape
        G, K = gen.n.shape[-1], u.shape[-1]
        (coef_c, mz_c), (coef_g, mz_g) = _gru_local_grads(con, ctx.clip), _gru_local_grads(gen, ctx.clip)
        r_c, r_g = con.rz[..., :C], gen.rz[..., :G]
        w_con_rz, w_con_n = w_con[:, : 2 * C], w_con[:, 2 * C :]
        w_gen_rz, w_gen_n = w_gen[:, : 2 * G], w_gen[:, 2 * G :]
        d_a, d_b = u.new_empty(T, D, B, 3 * C), u.new_empty(T, D, B, 3 * G)  # gate pre-activation grads
        d_mo, d_f_all = u.new_empty(T, D, B, 2 * K), u.new_empty(T, D, B, w_fac.shape[1])
        dh, dh_nxt = u.new_zeros(D, B, C), u.new_empty(D, B, C)  # dL/dh_t, controller
        dg, dg_nxt = u.new_zeros(D, B, G), u.new_empty(D, B, G)  # dL/dg_t, generator
        df = u.new_zeros(D, B, w_fac.shape[1])  # dL/df_t through the controller input at t + 1
        for t in range(T - 1, -1, -1):
            if d_f is not None:
                df.add_(d_f[t])
            d_f_all[t] = df
            if d_g is not None:
                dg.add_(d_g[t])
            d_read = torch.bmm(df, w_fac)  # dL/d(g_t gm_t) through f_t
            if gm is not None:
                d_read.mul_(gm[t])
            dg.add_(d_read)
            _gru_step_backward(dg, d_b[t], dg_nxt, coef_g[t], mz_g[t], r_g[t], w_gen_rz, w_gen_n)
            dg, dg_nxt = dg_nxt, dg
            du = torch.bmm(d_b[t], w_gu)
            if d_u is not None:
                du.add_(d_u[t])
            dm, dl = d_mo[t, ..., :K], d_mo[t, ..., K:]
            dm.copy_(du)
            if d_m is not None:
                dm.add_(d_m[t])
            if eps is not None:
                torch.mul(du, eps[t], out=dl)
            else:
                dl.zero_()
            if d_s is not None:
                dl.add_(d_s[t])
            dl.mul_(s[t]).mul_(0.5)  # ds/dl = s / 2
            dh.baddbmm_(d_mo[t], w_co)
            _gru_step_backward(dh, d_a[t], dh_nxt, coef_c[t], mz_c[t], r_c[t], w_con_rz, w_con_n)
            dh, dh_nxt = dh_nxt, dh
            df = torch.bmm(d_a[t], w_cf)
            if fm is not None:
                df.mul_(fm[t])
        g_read = gen.hs[1:] * gm if gm is not None else gen.hs[1:]
        grads = {
            "w_con": _gru_weight_grad(d_a, con),
            "w_cf": _weight_grad(d_a, f_in),
            "w_co": _weight_grad(d_mo, con.hs[1:]),
            "b_co": d_mo.sum((0, 2)),
            "w_gu": _weight_grad(d_b, u),
            "w_gen": _gru_weight_grad(d_b, gen),
            "w_fac": _weight_grad(d_f_all, g_read),
        }
        return (d_a, d_b, dh, dg, df, *grads.values(), None, None, None, None)


def controlled_decode(ci, ge, h0, g0, f0, w_con, w_cf, w_co, b_co, w_gu, w_gen, w_fac, fm, gm, eps, clip):
    """Run ``_ControlledDecoder`` (shapes there); equal to ``LFADS._decode_loop`` in value and
    gradient (tested) and several times faster."""
    return _ControlledDecoder.apply(ci, ge, h0, g0, f0, w_con, w_cf, w_co, b_co, w_gu, w_gen, w_fac, fm, gm, eps, clip)


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

    def project(self, x: Tensor) -> Tensor:
        """Input projections of all T steps, one batched matmul for the D GRUs.

        x (T, D, B, in) -> (T, D, B, 3H) = x W_ih^T + b (a transposed view of the matmul output).
        """
        T, D, B, _ = x.shape
        xs = x.transpose(0, 1).reshape(D, T * B, -1)
        out = torch.baddbmm(self.bias_ih.unsqueeze(1), xs, self.weight_ih.transpose(1, 2))
        return out.view(D, T, B, -1).transpose(0, 1)


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
        x = x.transpose(0, 1)  # (T, B, in)
        xp = self.gru.project(torch.stack([x, x.flip(0)], dim=1))  # backward direction reads time reversed
        return clipped_gru_scan(xp, self.h0.expand(-1, x.shape[1], -1), self.gru.weight_hh, self.gru.clip)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        states, _ = self._scan(x)  # (T, 2, B, H)
        return states[:, 0].transpose(0, 1), states[:, 1].flip(0).transpose(0, 1)

    def final_states(self, x: Tensor) -> Tensor:
        _, last = self._scan(x)  # (2, B, H)
        return torch.cat([last[0], last[1]], dim=-1)


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


def _fan_in_linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.normal_(layer.weight, std=1 / math.sqrt(in_features))
    nn.init.zeros_(layer.bias)
    return layer


class LFADS(nn.Module):
    """Sequential VAE: encoders infer g0 (and inputs u_t), a GRU generator produces the factors.

    Submodules in data-flow order: ``ic_encoder``, ``ic_linear``, ``ic_prior``, ``ci_encoder``,
    ``controller`` / ``con_h0`` / ``co_linear`` / ``co_prior`` (only with co_dim > 0),
    ``ic_to_g0``, ``generator``, ``factor_readout``, ``observation`` (readout to the
    observation parameters, plus the likelihood).

    Initial states: the encoders' and the controller's (``con_h0``) are learnable vectors
    (init 0). The controller's first input uses the factors of the generator's initial
    state, f_{-1} = W_fac dropout(linear(g0)), as lfads-torch does.
    """

    def __init__(self, config: LFADSConfig):
        super().__init__()
        if not isinstance(config, LFADSConfig):
            raise ConfigError(f"LFADS needs an LFADSConfig, got {type(config).__name__}.")
        self.config = c = config
        self.dropout = nn.Dropout(c.dropout)
        self.ic_encoder = BidirectionalEncoder(c.encod_dim, c.ic_enc_dim, c.cell_clip)
        self.ic_linear = _fan_in_linear(2 * c.ic_enc_dim, 2 * c.ic_dim)
        self.ic_prior = GaussianPrior(c.ic_dim, c.ic_prior_var)
        if c.co_dim:
            self.ci_encoder = BidirectionalEncoder(c.encod_dim, c.ci_enc_dim, c.cell_clip)
            self.controller = ClippedGRU(2 * c.ci_enc_dim + c.fac_dim, c.con_dim, c.cell_clip)
            self.con_h0 = nn.Parameter(torch.zeros(c.con_dim))
            self.co_linear = _fan_in_linear(c.con_dim, 2 * c.co_dim)
            self.co_prior = AR1Prior(c.co_dim, c.co_prior_tau, c.co_prior_var)
        self.ic_to_g0 = _fan_in_linear(c.ic_dim, c.gen_dim)
        self.generator = ClippedGRU(c.co_dim + c.ext_input_dim, c.gen_dim, c.cell_clip)
        self.factor_readout = FactorReadout(c.gen_dim, c.fac_dim)
        self.observation: ObservationModel = make_observation(c.observation, c.n_neurons, c.fac_dim)

    # ---- encoders ---------------------------------------------------------------------------

    def encode_ic(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior of g0 from the (dropped-out) input x (B, T, E): mean, std, each (B, ic_dim).

        std = sqrt(exp(logvar) + ic_post_var_min): the floor keeps the posterior from collapsing.
        """
        h = self.dropout(self.ic_encoder.final_states(x))
        mean, logvar = self.ic_linear(h).chunk(2, dim=-1)
        return mean, torch.sqrt(torch.exp(logvar) + self.config.ic_post_var_min)

    def encode_controller_inputs(self, x: Tensor) -> Tensor:
        """Controller inputs e (B, T, 2 ci_enc_dim) from the (dropped-out) input x (B, T, E).

        Lag of one step (as the original LFADS and lfads-torch): e_t = [fwd_{t-1}, bwd_{t+1}],
        zeros past the edges. So e_t summarises x_0..x_{t-1} and x_{t+1}..x_{T-1} but never x_t
        itself, and u_t cannot copy the spikes it is asked to reconstruct at t.
        """
        fwd, bwd = self.ci_encoder(x)
        fwd = F.pad(fwd, (0, 0, 1, 0))[:, :-1]
        bwd = F.pad(bwd, (0, 0, 0, 1))[:, 1:]
        return torch.cat([fwd, bwd], dim=-1)

    # ---- decoders (controller + generator) --------------------------------------------------

    def _decode_scan(self, g_init: Tensor, ext: Tensor) -> tuple[Tensor, Tensor]:
        """Generator without a controller: inputs (ext only) known in advance, one fused scan.

        g_init (B, gen_dim), ext (B, T, ext_input_dim) already dropped out -> states, factors.
        """
        xp = self.generator.project(ext.transpose(0, 1).unsqueeze(1))  # (T, 1, B, 3H)
        states, _ = clipped_gru_scan(xp, g_init[None], self.generator.weight_hh, self.config.cell_clip)
        states = states[:, 0].transpose(0, 1)  # (B, T, gen_dim)
        return states, self.factor_readout(self.dropout(states))

    def _decode_controlled(self, g_init: Tensor, ci: Tensor, ext: Tensor, sample: bool):
        """Controller + generator as one fused recurrence (``controlled_decode``); same arguments
        and returns as ``_decode_loop``. Dropout of f_{t-1} and g_t is drawn for all steps at once."""
        c = self.config
        B, T = ext.shape[:2]
        con, gen, n_ci = self.controller, self.generator, 2 * c.ci_enc_dim
        w_fac = self.factor_readout.normalized_weight()
        con_xp_ci = F.linear(self.dropout(ci), con.weight_ih[0, :, :n_ci], con.bias_ih[0])
        gen_xp_ext = F.linear(ext, gen.weight_ih[0, :, c.co_dim :], gen.bias_ih[0])
        f_init = F.linear(self.dropout(g_init), w_fac)  # f_{-1}
        factor_mask = self.dropout(ext.new_ones(B, T, c.fac_dim)) if self.training else None
        state_mask = self.dropout(ext.new_ones(B, T, c.gen_dim)) if self.training else None
        eps = torch.randn(B, T, c.co_dim, dtype=ext.dtype, device=ext.device) if sample else None

        def steps(x: Tensor | None) -> Tensor | None:  # (B, T, k) -> (T, D=1, B, k)
            return None if x is None else x.transpose(0, 1).unsqueeze(1)

        outputs = controlled_decode(
            steps(con_xp_ci), steps(gen_xp_ext), self.con_h0.expand(1, B, -1), g_init[None], f_init[None],
            con.weight_hh, con.weight_ih[:, :, n_ci:], self.co_linear.weight[None], self.co_linear.bias[None],
            gen.weight_ih[:, :, : c.co_dim], gen.weight_hh, w_fac[None],
            steps(factor_mask), steps(state_mask), steps(eps), c.cell_clip,
        )
        return tuple(o[:, 0].transpose(0, 1) for o in outputs)

    def _decode_loop(self, g_init: Tensor, ci: Tensor | None, ext: Tensor, sample: bool):
        """Step-by-step decoder in plain autograd: the readable reference for ``_decode_scan`` and
        ``_decode_controlled``, which ``forward`` runs (tested equal in value and gradient).

        g_init (B, gen_dim); ci (B, T, 2 ci_enc_dim) or None without controller;
        ext (B, T, ext_input_dim) already dropped out.
        Returns states (B, T, gen_dim), factors (B, T, fac_dim), u, co_mean, co_std (B, T, co_dim).
        """
        c = self.config
        B, T = ext.shape[:2]
        gen, w_fac = self.generator, self.factor_readout.normalized_weight()
        # The parts of every input projection that do not depend on the recurrence, all steps at once.
        gen_xp_ext = F.linear(ext, gen.weight_ih[0, :, c.co_dim :], gen.bias_ih[0])  # (B, T, 3 gen_dim)
        g = g_init
        outputs = {"states": [], "factors": [], "u": [], "co_mean": [], "co_std": []}
        if self.config.co_dim:
            con = self.controller
            n_ci = 2 * c.ci_enc_dim
            # dropout([e_t, f_{t-1}]) == [dropout(e_t), dropout(f_{t-1})]: independent per element
            con_xp_ci = F.linear(self.dropout(ci), con.weight_ih[0, :, :n_ci], con.bias_ih[0])
            eps = torch.randn(B, T, c.co_dim, dtype=ext.dtype, device=ext.device).unbind(1) if sample else None
            h_con = self.con_h0.expand(B, -1)
            f = F.linear(self.dropout(g_init), w_fac)  # f_{-1}
        # Per-step views by unbind: indexing [:, t] would zero-fill a full-size gradient every step.
        gen_xp_steps = gen_xp_ext.unbind(1)
        if self.config.co_dim:
            con_xp_steps = con_xp_ci.unbind(1)
        for t in range(T):
            gen_xp = gen_xp_steps[t]
            if self.config.co_dim:
                con_xp = con_xp_steps[t] + F.linear(self.dropout(f), con.weight_ih[0, :, n_ci:])
                h_con = gru_step(con_xp, h_con, con.weight_hh[0], c.cell_clip)
                co_mean, co_logvar = self.co_linear(h_con).chunk(2, dim=-1)
                co_std = torch.exp(0.5 * co_logvar)
                u = co_mean + co_std * eps[t] if sample else co_mean
                gen_xp = gen_xp + F.linear(u, gen.weight_ih[0, :, : c.co_dim])
                outputs["u"].append(u), outputs["co_mean"].append(co_mean), outputs["co_std"].append(co_std)
            g = gru_step(gen_xp, g, gen.weight_hh[0], c.cell_clip)
            f = F.linear(self.dropout(g), w_fac)
            outputs["states"].append(g), outputs["factors"].append(f)
        empty = ext.new_zeros(B, T, 0)
        return tuple(torch.stack(v, dim=1) if v else empty for v in outputs.values())

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

    def forward(self, encoder_input: Tensor, ext_input: Tensor | None = None, *, sample: bool = True) -> LFADSOutput:
        """Infer everything for a batch.

        encoder_input (B, T, encod_dim): already masked / rescaled by the caller, NaN already 0.
        ext_input (B, T, ext_input_dim) or None. ``sample=True`` draws g0 and u_t from their
        posteriors (training, posterior sampling); ``sample=False`` uses the posterior means.
        kl_co is the one-sample estimate at the drawn u when sampling, and its closed-form
        expectation when not (so ``sample=False`` is deterministic in eval mode).
        """
        self._check_inputs(encoder_input, ext_input)
        c = self.config
        B, T, _ = encoder_input.shape
        x = self.dropout(encoder_input)
        ic_mean, ic_std = self.encode_ic(x)
        g0 = ic_mean + ic_std * torch.randn_like(ic_std) if sample else ic_mean
        kl_ic = self.ic_prior.kl(ic_mean, ic_std)
        g_init = self.ic_to_g0(g0)
        ext = self.dropout(ext_input) if c.ext_input_dim else x.new_zeros(B, T, 0)
        if c.co_dim:
            ci = self.encode_controller_inputs(x)
            states, factors, u, co_mean, co_std = self._decode_controlled(g_init, ci, ext, sample)
            if sample:
                kl_co = self.co_prior.kl_sample(co_mean, co_std, u)
            else:
                kl_co = self.co_prior.kl_expected(co_mean, co_std)
        else:
            states, factors = self._decode_scan(g_init, ext)
            u = co_mean = co_std = x.new_zeros(B, T, 0)
            kl_co = x.new_zeros(B)
        return LFADSOutput(
            self.observation(factors), factors, states, u, ic_mean, ic_std, co_mean, co_std, kl_ic, kl_co
        )

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
