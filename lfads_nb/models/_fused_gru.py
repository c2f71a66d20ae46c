"""The fused kernels under LFADS: whole GRU recurrences in one autograd node, hand-written backprop.

``lfads_nb.models.lfads`` reads like the paper and runs a step loop (``gru_step``, ``LFADS.decode``);
these are the same computations, several times faster, chosen there by ``LFADSConfig.fused``.
Two paths, tested against the loop in value and gradient (float64) and by gradcheck:

- ``clipped_gru_scan``: D independent GRUs whose inputs are known in advance (encoders, a
  generator without a controller).
- ``controlled_decode``: controller and generator coupled step by step through u_t and f_t.

Both run without recording a graph, in place in preallocated buffers (``_GRUBuffers``), and
turn the weight gradients into a few large matmuls over all steps. Both carry a ``vmap`` rule
that folds a mapped axis (population members) into their D axis, so ``torch.func.vmap`` of one
``LFADS`` runs a whole population through one kernel call.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


def _fold_members(info, in_dims, args, d_axes):
    """vmap rule helper: move each argument's mapped axis next to its D axis (``d_axes``) and
    merge the two, member-major; unmapped arguments are repeated for every member."""
    folded = []
    for x, bdim, axis in zip(args, in_dims, d_axes):
        if x is None:
            folded.append(None)
            continue
        if bdim is None:
            x = x.unsqueeze(axis).expand(*x.shape[:axis], info.batch_size, *x.shape[axis:])
        else:
            x = x.movedim(bdim, axis)
        folded.append(x.flatten(axis, axis + 1))
    return folded


def _unfold_members(info, outputs, d_axes):
    """vmap rule helper: split each output's D axis back into (members, D); returns (outputs, out_dims)."""
    return tuple(o.unflatten(axis, (info.batch_size, -1)) for o, axis in zip(outputs, d_axes)), tuple(d_axes)


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
    def forward(xp: Tensor, h0: Tensor, w_hh: Tensor, clip: float):
        T, D, B, H3 = xp.shape
        H = H3 // 3
        w_rz_t, w_n_t = w_hh[:, : 2 * H].transpose(1, 2), w_hh[:, 2 * H :].transpose(1, 2)
        b = _GRUBuffers.start(xp, h0)
        steps = b.steps()
        for t in range(T):
            _gru_step_(steps, t, w_rz_t, w_n_t, clip)
        return b.hs[1:], b.hs[T].clone(), *b  # the buffers are outputs so that setup_context can save them

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, _, w_hh, clip = inputs
        buffers = output[2:]
        ctx.mark_non_differentiable(*buffers)
        ctx.save_for_backward(w_hh, *buffers)
        ctx.clip = clip
        ctx.set_materialize_grads(False)

    @staticmethod
    def vmap(info, in_dims, xp, h0, w_hh, clip):
        args = _fold_members(info, in_dims, (xp, h0, w_hh), (1, 0, 0))
        states, last, *buffers = _ClippedGRUScan.apply(*args, clip)
        return _unfold_members(info, (states, last, *buffers), (1, 0) + (1,) * len(buffers))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_states: Tensor | None, d_last: Tensor | None, *_buffers):
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
    states, last, *_ = _ClippedGRUScan.apply(xp, h0, w_hh, clip)
    return states, last


class _ControlledDecoder(torch.autograd.Function):
    """Controller and generator (co_dim > 0) of D models over all T steps in one autograd node.

    The two recurrences are coupled through u_t and f_t, so they run step by step together,
    without a graph, in preallocated buffers (``_GRUBuffers``, ``_gru_step_``); backward is
    hand-written backpropagation through time. ``LFADS.decode`` (its step loop) is the same computation in
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
    def forward(ci, ge, h0, g0, f0, w_con, w_cf, w_co, b_co, w_gu, w_gen, w_fac, fm, gm, eps, clip):
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
        return gen.hs[1:], fs[1:], u, mo[..., :K], s, f_in, *con, *gen  # buffers last, saved by setup_context

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, _, _, _, _, w_con, w_cf, w_co, _, w_gu, w_gen, w_fac, fm, gm, eps, clip = inputs
        _, _, u, _, s, *buffers = output
        ctx.mark_non_differentiable(*buffers)
        ctx.save_for_backward(w_con, w_cf, w_co, w_gu, w_gen, w_fac, fm, gm, eps, s, u, *buffers)
        ctx.clip = clip
        ctx.set_materialize_grads(False)

    @staticmethod
    def vmap(info, in_dims, *args):
        *tensors, clip = args
        folded = _fold_members(info, in_dims[:-1], tensors, (1, 1) + (0,) * 10 + (1, 1, 1))
        outputs = _ControlledDecoder.apply(*folded, clip)
        return _unfold_members(info, outputs, (1,) * len(outputs))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_g, d_f, d_u, d_m, d_s, *_buffers):
        w_con, w_cf, w_co, w_gu, w_gen, w_fac, fm, gm, eps, s, u, f_in, *rest = ctx.saved_tensors
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


class DecoderWeights(NamedTuple):
    """The weights ``controlled_decode`` reads, for D models (K = co_dim, C = con_dim, G = gen_dim,
    F = fac_dim); gate blocks ordered (r, z, n) as in ``ClippedGRU``."""

    controller: Tensor  # (D, 3C, C) controller recurrent weights
    controller_factors: Tensor  # (D, 3C, F) controller input weights of f_{t-1}
    co_weight: Tensor  # (D, 2K, C) controller state -> posterior mean | log-variance of u_t
    co_bias: Tensor  # (D, 2K)
    generator_inputs: Tensor  # (D, 3G, K) generator input weights of u_t
    generator: Tensor  # (D, 3G, G) generator recurrent weights
    factors: Tensor  # (D, F, G) factor readout (rows already normalised)


def controlled_decode(ci: Tensor, ge: Tensor, h0: Tensor, g0: Tensor, f0: Tensor, weights: DecoderWeights,
                      fm: Tensor | None, gm: Tensor | None, eps: Tensor | None, clip: float):
    """Run ``_ControlledDecoder`` (shapes there): returns g, f, u, m, s. Equal to the step loop of
    ``LFADS.decode`` in value and gradient (tested) and several times faster. Under
    ``torch.func.vmap`` the mapped axis joins D (the population's members)."""
    g, f, u, m, s, *_ = _ControlledDecoder.apply(ci, ge, h0, g0, f0, *weights, fm, gm, eps, clip)
    return g, f, u, m, s
