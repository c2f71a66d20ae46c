"""The fused kernels under LFADS: whole GRU recurrences in one autograd node, hand-written backprop.

``lfads_nb.models.lfads`` reads like the paper and runs a step loop (``gru_step``, ``LFADS.decode``);
these are the same computations, several times faster, chosen there by ``LFADS(fused=...)``.
Two paths, tested against the loop in value and gradient (float64) and by gradcheck:

- ``clipped_gru_scan``: D independent GRUs whose inputs are known in advance (encoders, a
  generator without a controller).
- ``controlled_decode``: controller and generator coupled step by step through u_t and f_t.

Both run without recording a graph, in place in preallocated buffers (``_GRUBuffers``), and
turn the weight gradients into a few large matmuls over all steps. On one CPU thread a step
costs about as much in per-call overhead as in arithmetic, so each step is a handful of
in-place kernels on views made once per call, with no autograd bookkeeping (``_bare_steps``). Both carry a ``vmap`` rule
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

    hs: Tensor  # (D, T + 1, B, H) states h_0 .. h_T
    rz: Tensor  # (D, T, B, 2H) the input projections, then the gates r | z
    n: Tensor  # (D, T, B, H) twice the candidate's input projection, then the candidate n
    rh: Tensor  # (D, T, B, H) r * h_{t-1}, the input of the candidate matmul
    pre: Tensor  # (D, T, B, H) state before clipping (its mask gates the gradient)

    @staticmethod
    def start(xp: Tensor, h0: Tensor) -> _GRUBuffers:
        """Buffers for input projections xp (T, D, B, 3H) and initial state h0 (D, B, H). The gate
        buffers start as the input projections (the candidate's doubled, exactly: see ``_gru_step_``);
        each step adds its matmuls in place. All are indexed model first (D, T, ...); hs and rh, the
        inputs of the weight gradients, are stored so (each model's steps and trials are the rows of
        one matrix), the rest step first, because an in-place matmul into a step's slice is faster
        when that slice is contiguous."""
        T, D, B, H3 = xp.shape
        H = H3 // 3
        hs = xp.new_empty(D, T + 1, B, H)
        hs[:, 0] = h0
        xp_n = xp[..., 2 * H :]
        return _GRUBuffers(
            hs,
            xp[..., : 2 * H].clone(memory_format=torch.contiguous_format).transpose(0, 1),
            torch.add(xp_n, xp_n, out=xp.new_empty(T, D, B, H)).transpose(0, 1),
            xp.new_empty(D, T, B, H),
            xp.new_empty(T, D, B, H).transpose(0, 1),
        )


class _GRUSteps(NamedTuple):
    """Per-step views of ``_GRUBuffers``, each a tuple over steps of (D, B, k) views, made once per
    call: indexing or slicing a tensor in Python costs about as much as a small kernel."""

    h: tuple  # h_0 .. h_T
    rz: tuple
    r: tuple
    z: tuple
    n: tuple
    rh: tuple
    pre: tuple

    @staticmethod
    def of(b: _GRUBuffers) -> _GRUSteps:
        H = b.n.shape[-1]
        return _GRUSteps(b.hs.unbind(1), b.rz.unbind(1), b.rz[..., :H].unbind(1), b.rz[..., H:].unbind(1),
                         b.n.unbind(1), b.rh.unbind(1), b.pre.unbind(1))


def _step_weights(w: Tensor, H: int) -> tuple[Tensor, Tensor]:
    """A GRU's weights w (D, 3H, k) for the forward steps: the (r, z) block and twice the n block,
    each transposed to (D, k, 2H) / (D, k, H) and contiguous (once per call, not per step)."""
    return w[:, : 2 * H].transpose(1, 2).contiguous(), (2 * w[:, 2 * H :]).transpose(1, 2).contiguous()


def _gru_step_(s: _GRUSteps, t: int, w_rz_t: Tensor, w_n2_t: Tensor, clip: float, minus_one: Tensor) -> None:
    """Step t of ``gru_step`` for D GRUs without a graph, in place (``s``: per-step views): from h_t
    and the input projections in rz[t], n[t] to the gates, the candidate, rh[t], pre[t] and h_{t+1}.
    w_rz_t, w_n2_t: ``_step_weights`` of the recurrent weights; minus_one: a 0-d tensor (a Python
    number argument costs a conversion on every call).

    tanh(a) = 2 sigmoid(2a) - 1, because CPU sigmoid is several times faster than tanh; the n buffer
    and the n weights hold twice the input projection and twice the weights, so the matmul yields 2a
    directly (scaling by 2 is exact in floating point)."""
    h, rz, n, rh, pre = s.h[t], s.rz[t], s.n[t], s.rh[t], s.pre[t]
    rz.baddbmm_(h, w_rz_t).sigmoid_()
    torch.mul(s.r[t], h, out=rh)
    n.baddbmm_(rh, w_n2_t).sigmoid_()
    torch.add(minus_one, n, alpha=2, out=n)
    torch.lerp(n, h, s.z[t], out=pre)  # n + z (h - n)
    torch.clamp(pre, -clip, clip, out=s.h[t + 1])


def _bare_steps():
    """The step loops run in inference mode: no autograd bookkeeping on each in-place operation
    (about 5 % of a loop). Every buffer is made outside it, so they stay ordinary tensors that
    backward can save."""
    return torch.inference_mode()


def _gru_local_grads(b: _GRUBuffers) -> tuple[Tensor, Tensor]:
    """Local derivatives of all T steps of a ``_gru_step_`` recurrence, vectorised.

    Returns coef (D, T, B, 3, H) and mz (D, T, B, H). With the clip mask m = 1 where the clamp
    left pre unchanged (|pre| <= clip, torch.clamp's rule) folded in, for the gate blocks (r, z, n):
        dL/d(r pre-act) = dL/d(r h) * coef_r,   coef_r = h r (1 - r)
        dL/d(z pre-act) = dL/dh' * coef_z,      coef_z = m (h - n) z (1 - z)
        dL/d(n pre-act) = dL/dh' * coef_n,      coef_n = m (1 - z) (1 - n^2)
    and mz = m z, the derivative dh'/dh through the z h term. Written into one preallocated
    tensor (fresh multi-MB temporaries cost page faults).
    """
    h_prev, n = b.hs[:, :-1], b.n
    D, T, B, H = n.shape
    r, z = b.rz[..., :H], b.rz[..., H:]
    blocks = n.new_empty(3, T, D, B, H)  # one contiguous block per gate, step first like n and pre
    c_r, c_z, c_n = (c.transpose(0, 1) for c in blocks.unbind(0))
    m = torch.eq(b.pre, b.hs[:, 1:], out=c_n)  # 1.0 / 0.0: the clamp left pre as it was, i.e. |pre| <= clip
    mz = m * z
    c_n.sub_(mz)  # m (1 - z)
    torch.sub(h_prev, n, out=c_z).mul_(z).mul_(c_n)
    c_n.mul_(torch.addcmul(n.new_ones(()), n, n, value=-1, out=c_r))  # 1 - n^2, c_r as scratch
    torch.sub(r, torch.mul(r, r, out=c_r), out=c_r).mul_(h_prev)  # (r - r^2) h
    coef = blocks.permute(2, 1, 3, 0, 4)
    return coef, mz


class _GRUGradSteps(NamedTuple):
    """Per-step views for backpropagating a ``_gru_step_`` recurrence (tuples over steps): slices
    of the gate-gradient buffer d_xp (D, T, B, 3H) and of the local derivatives."""

    d_zn: tuple  # (D, B, 2, H) gradients of the z and n pre-activations
    d_r: tuple  # (D, B, H) of the r pre-activation
    d_n: tuple  # (D, B, H) of the n pre-activation
    d_rz: tuple  # (D, B, 2H) of the r and z pre-activations
    coef_zn: tuple  # (D, B, 2, H)
    coef_r: tuple  # (D, B, H)
    mz: tuple  # (D, B, H)
    r: tuple  # (D, B, H) the reset gate

    @staticmethod
    def of(d_xp: Tensor, b: _GRUBuffers) -> _GRUGradSteps:
        D, T, B, H3 = d_xp.shape
        H = H3 // 3
        coef, mz = _gru_local_grads(b)
        return _GRUGradSteps(
            d_xp.view(D, T, B, 3, H)[..., 1:, :].unbind(1), d_xp[..., :H].unbind(1), d_xp[..., 2 * H :].unbind(1),
            d_xp[..., : 2 * H].unbind(1), coef[..., 1:, :].unbind(1), coef[..., 0, :].unbind(1), mz.unbind(1),
            b.rz[..., :H].unbind(1),
        )


class _Adjoint:
    """dL/dh of a recurrence during backpropagation: two (D, B, H) buffers used in turn (this step's
    and the previous step's), their (D, B, 1, H) views, and a scratch for dL/d(r h)."""

    def __init__(self, like: Tensor, D: int, B: int, H: int):
        self.now, self.prev = like.new_zeros(D, B, H), like.new_empty(D, B, H)
        self.now_u, self.prev_u = self.now.unsqueeze(-2), self.prev.unsqueeze(-2)
        self.d_rh = like.new_empty(D, B, H)

    def step_back(self, g: _GRUGradSteps, t: int, w_rz: Tensor, w_n: Tensor, d_out_prev: Tensor | None = None):
        """Backpropagate step t: from dL/dh_{t+1} (``now``) write step t's gate gradients into d_xp and
        dL/dh_t into ``prev`` (plus d_out_prev, a gradient arriving at h_t from outside the recurrence),
        then swap. w_rz (D, 2H, H), w_n (D, H, H): the recurrent weights' blocks."""
        dh, dh_prev = self.now, self.prev
        torch.mul(self.now_u, g.coef_zn[t], out=g.d_zn[t])
        torch.bmm(g.d_n[t], w_n, out=self.d_rh)
        torch.mul(self.d_rh, g.coef_r[t], out=g.d_r[t])
        if d_out_prev is None:
            torch.mul(dh, g.mz[t], out=dh_prev)
        else:
            torch.addcmul(d_out_prev, dh, g.mz[t], out=dh_prev)
        dh_prev.addcmul_(self.d_rh, g.r[t]).baddbmm_(g.d_rz[t], w_rz)
        self.now, self.prev, self.now_u, self.prev_u = self.prev, self.now, self.prev_u, self.now_u


def _flat_steps(x: Tensor) -> Tensor:
    """(D, T, B, k) -> (D, T*B, k): all steps and trials of each of the D models as rows (a view
    for the kernels' model-major buffers)."""
    D, T, B, k = x.shape
    return x.reshape(D, T * B, k)


def _weight_grad(d_out: Tensor, inputs: Tensor) -> Tensor:
    """dL/dW (D, k, j) of y = x W^T summed over all steps and trials: d_out (D, T, B, k), inputs x
    (D, T, B, j). One large matmul per model instead of T small ones; per model rather than one
    bmm because batched kernels can round batch entries differently at odd sizes, and population
    training relies on a copied member taking exactly the original's step. When x is the narrower,
    (x^T d_out)^T: BLAS is up to ten times slower at a product with few output columns (W_gu: 4)."""
    d_out, inputs = _flat_steps(d_out), _flat_steps(inputs)
    if inputs.shape[-1] < d_out.shape[-1]:
        return torch.stack([(inputs[d].T @ d_out[d]).T for d in range(d_out.shape[0])])
    return torch.stack([d_out[d].T @ inputs[d] for d in range(d_out.shape[0])])


def _gru_weight_grad(d_xp: Tensor, b: _GRUBuffers) -> Tensor:
    """dL/dW_hh (D, 3H, H) from all steps' gate gradients d_xp (D, T, B, 3H) and the recurrence's
    states h_{t-1} and r * h_{t-1}."""
    H = b.n.shape[-1]
    return torch.cat([_weight_grad(d_xp[..., : 2 * H], b.hs[:, :-1]), _weight_grad(d_xp[..., 2 * H :], b.rh)], dim=1)


class _ClippedGRUScan(torch.autograd.Function):
    """The whole recurrence h_1..h_T of D independent GRUs in one autograd node.

    Forward runs ``gru_step`` T times without recording a graph, in place in preallocated
    buffers; backward is hand-written backpropagation through time. This replaces ~20
    autograd nodes per step with eight in-place kernels, and turns the weight gradient
    into two large matmuls over all steps instead of 2T small ones.
    Shapes: xp (T, D, B, 3H), h0 (D, B, H), w_hh (D, 3H, H) -> states (T, D, B, H) and the
    last state (D, B, H) (a separate output so that users of the last state alone, like the
    IC encoder, send no gradient for the other T - 1 states).
    """

    @staticmethod
    def forward(xp: Tensor, h0: Tensor, w_hh: Tensor, clip: float):
        T, D, B, H3 = xp.shape
        b = _GRUBuffers.start(xp, h0)
        steps, weights, minus_one = _GRUSteps.of(b), _step_weights(w_hh, H3 // 3), xp.new_full((), -1.0)
        with _bare_steps():
            for t in range(T):
                _gru_step_(steps, t, *weights, clip, minus_one)
        return b.hs[:, 1:].transpose(0, 1), b.hs[:, T].clone(), *b  # buffers: outputs for setup_context to save

    @staticmethod
    def setup_context(ctx, inputs, output):
        w_hh = inputs[2]
        buffers = output[2:]
        ctx.mark_non_differentiable(*buffers)
        ctx.save_for_backward(w_hh, *buffers)
        ctx.set_materialize_grads(False)

    @staticmethod
    def vmap(info, in_dims, xp, h0, w_hh, clip):
        args = _fold_members(info, in_dims, (xp, h0, w_hh), (1, 0, 0))
        states, last, *buffers = _ClippedGRUScan.apply(*args, clip)
        return _unfold_members(info, (states, last, *buffers), (1, 0) + (0,) * len(buffers))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_states: Tensor | None, d_last: Tensor | None, *_buffers):
        w_hh, *saved = ctx.saved_tensors
        b = _GRUBuffers(*saved)
        D, T, B, H = b.n.shape
        d_xp = b.n.new_empty(D, T, B, 3 * H)  # gradients of the gate pre-activations (r, z, n)
        g = _GRUGradSteps.of(d_xp, b)
        w_rz, w_n = w_hh[:, : 2 * H], w_hh[:, 2 * H :]
        dh = _Adjoint(d_xp, D, B, H)  # dL/dh_t in total, from the outputs and from step t + 1
        d_out = d_states.unbind(0) if d_states is not None else (None,) * T
        if d_last is not None:
            dh.now.copy_(d_last)
        if d_states is not None:
            dh.now.add_(d_out[T - 1])
        with _bare_steps():
            for t in range(T - 1, -1, -1):
                dh.step_back(g, t, w_rz, w_n, d_out[t - 1] if t > 0 else None)
        d_w = _gru_weight_grad(d_xp, b) if ctx.needs_input_grad[2] else None
        return d_xp.transpose(0, 1), dh.now, d_w, None


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
        C, G, K, F = h0.shape[-1], g0.shape[-1], w_gu.shape[-1], f0.shape[-1]
        con, gen = _GRUBuffers.start(ci, h0), _GRUBuffers.start(ge, g0)
        con_, gen_ = _GRUSteps.of(con), _GRUSteps.of(gen)
        fs = ci.new_empty(D, T + 1, B, F)  # f_{-1} .. f_{T-1}; all buffers model-major, like _GRUBuffers
        fs[:, 0] = f0
        f_in = ci.new_empty(D, T, B, F) if fm is not None else fs[:, :-1]  # f_{t-1} fm_t, the controller's input
        mo = ci.new_empty(D, T, B, 2 * K)  # m_t | l_t / 2 (the log-variance rows of W_co, b_co halved: exact)
        s = ci.new_empty(D, T, B, K)
        u = ci.new_empty(D, T, B, K) if eps is not None else mo[..., :K]
        w_con_t, w_gen_t, w_cf_t, w_gu_t = (_step_weights(w_con, C), _step_weights(w_gen, G), _step_weights(w_cf, C),
                                            _step_weights(w_gu, G))
        halve = torch.cat([w_co.new_ones(K), w_co.new_full((K,), 0.5)])
        w_co_t = (w_co * halve[:, None]).transpose(1, 2)  # a transposed view: faster for BLAS at 2K output columns
        b_co_ = (b_co * halve).unsqueeze(1)
        w_fac_t = w_fac.transpose(1, 2).contiguous()
        g_read = ci.new_empty(D, B, G)  # g_t gm_t
        minus_one = ci.new_full((), -1.0)
        fs_, f_in_, mo_, m_, half_l_, s_, u_ = (x.unbind(1) for x in (fs, f_in, mo, mo[..., :K], mo[..., K:], s, u))
        fm_, gm_, eps_ = (x.unbind(0) if x is not None else None for x in (fm, gm, eps))
        with _bare_steps():
            for t in range(T):
                if fm is not None:
                    torch.mul(fs_[t], fm_[t], out=f_in_[t])
                con_.rz[t].baddbmm_(f_in_[t], w_cf_t[0])
                con_.n[t].baddbmm_(f_in_[t], w_cf_t[1])
                _gru_step_(con_, t, *w_con_t, clip, minus_one)
                torch.baddbmm(b_co_, con_.h[t + 1], w_co_t, out=mo_[t])
                torch.exp(half_l_[t], out=s_[t])
                if eps is not None:
                    torch.addcmul(m_[t], s_[t], eps_[t], out=u_[t])
                gen_.rz[t].baddbmm_(u_[t], w_gu_t[0])
                gen_.n[t].baddbmm_(u_[t], w_gu_t[1])
                _gru_step_(gen_, t, *w_gen_t, clip, minus_one)
                read = gen_.h[t + 1] if gm is None else torch.mul(gen_.h[t + 1], gm_[t], out=g_read)
                torch.bmm(read, w_fac_t, out=fs_[t + 1])
        if eps is None:
            u = u.clone()  # an output of its own, not a view of m
        outputs = (gen.hs[:, 1:], fs[:, 1:], u, mo[..., :K], s)
        return *(o.transpose(0, 1) for o in outputs), f_in, *con, *gen  # buffers last, saved by setup_context

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, _, _, _, _, w_con, w_cf, w_co, _, w_gu, w_gen, w_fac, fm, gm, eps, _ = inputs
        _, _, u, _, s, *buffers = output
        ctx.mark_non_differentiable(*buffers)
        ctx.save_for_backward(w_con, w_cf, w_co, w_gu, w_gen, w_fac, fm, gm, eps, s, u, *buffers)
        ctx.set_materialize_grads(False)

    @staticmethod
    def vmap(info, in_dims, *args):
        *tensors, clip = args
        folded = _fold_members(info, in_dims[:-1], tensors, (1, 1) + (0,) * 10 + (1, 1, 1))
        outputs = _ControlledDecoder.apply(*folded, clip)
        return _unfold_members(info, outputs, (1,) * 5 + (0,) * (len(outputs) - 5))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_g, d_f, d_u, d_m, d_s, *_buffers):
        w_con, w_cf, w_co, w_gu, w_gen, w_fac, fm, gm, eps, s, u, f_in, *rest = ctx.saved_tensors
        w_cf, w_co, w_fac = (w.contiguous() for w in (w_cf, w_co, w_fac))  # slices of larger weights
        w_gu = w_gu.transpose(1, 2).contiguous().transpose(1, 2)  # (D, 3G, K) stored K-major: few output columns
        con, gen = _GRUBuffers(*rest[:5]), _GRUBuffers(*rest[5:])
        s, u = s.transpose(0, 1), u.transpose(0, 1)  # model-major, as the buffers
        D, T, B, C = con.n.shape
        G, K, F = gen.n.shape[-1], u.shape[-1], w_fac.shape[1]
        d_a, d_b = u.new_empty(D, T, B, 3 * C), u.new_empty(D, T, B, 3 * G)  # gate pre-activation grads
        con_g, gen_g = _GRUGradSteps.of(d_a, con), _GRUGradSteps.of(d_b, gen)
        w_con_rz, w_con_n = w_con[:, : 2 * C], w_con[:, 2 * C :]
        w_gen_rz, w_gen_n = w_gen[:, : 2 * G], w_gen[:, 2 * G :]
        d_mo = u.new_empty(D, T, B, 2 * K)
        # dL/df_t in total: from the output, plus (in the loop) from the controller input at t + 1
        d_f_all = u.new_zeros(D, T, B, F)
        if d_f is not None:
            d_f_all.copy_(d_f.transpose(0, 1))
        s_half = s * 0.5  # ds/dl = s / 2
        dh, dg = _Adjoint(u, D, B, C), _Adjoint(u, D, B, G)  # dL/dh_t (controller), dL/dg_t (generator)
        d_read, d_f_con = u.new_empty(D, B, G), u.new_empty(D, B, F)  # scratch
        d_a_, d_b_, d_f_all_, dm_, dl_, d_mo_, s_half_ = (
            x.unbind(1) for x in (d_a, d_b, d_f_all, d_mo[..., :K], d_mo[..., K:], d_mo, s_half))
        d_g_, d_u_, d_m_, d_s_, fm_, gm_, eps_ = (
            x.unbind(0) if x is not None else None for x in (d_g, d_u, d_m, d_s, fm, gm, eps))
        with _bare_steps():
            for t in range(T - 1, -1, -1):
                if t < T - 1:  # the controller read f_t at step t + 1
                    if fm is not None:
                        d_f_all_[t].addcmul_(torch.bmm(d_a_[t + 1], w_cf, out=d_f_con), fm_[t + 1])
                    else:
                        d_f_all_[t].baddbmm_(d_a_[t + 1], w_cf)
                if d_g is not None:
                    dg.now.add_(d_g_[t])
                if gm is not None:  # through f_t = (g_t gm_t) W_fac^T
                    dg.now.addcmul_(torch.bmm(d_f_all_[t], w_fac, out=d_read), gm_[t])
                else:
                    dg.now.baddbmm_(d_f_all_[t], w_fac)
                dg.step_back(gen_g, t, w_gen_rz, w_gen_n)
                dm, dl = dm_[t], dl_[t]
                if d_u is not None:  # du, in dm's place until d_m is added
                    torch.baddbmm(d_u_[t], d_b_[t], w_gu, out=dm)
                else:
                    torch.bmm(d_b_[t], w_gu, out=dm)
                if eps is not None:
                    if d_s is not None:
                        torch.addcmul(d_s_[t], dm, eps_[t], out=dl)
                    else:
                        torch.mul(dm, eps_[t], out=dl)
                elif d_s is not None:
                    dl.copy_(d_s_[t])
                else:
                    dl.zero_()
                dl.mul_(s_half_[t])
                if d_m is not None:
                    dm.add_(d_m_[t])
                dh.now.baddbmm_(d_mo_[t], w_co)
                dh.step_back(con_g, t, w_con_rz, w_con_n)
        d_f0 = torch.bmm(d_a_[0], w_cf)
        if fm is not None:
            d_f0.mul_(fm[0])
        g_read = gen.hs[:, 1:] * gm.transpose(0, 1) if gm is not None else gen.hs[:, 1:]
        grads = {
            "w_con": _gru_weight_grad(d_a, con),
            "w_cf": _weight_grad(d_a, f_in),
            "w_co": _weight_grad(d_mo, con.hs[:, 1:]),
            "b_co": d_mo.sum((1, 2)),
            "w_gu": _weight_grad(d_b, u),
            "w_gen": _gru_weight_grad(d_b, gen),
            "w_fac": _weight_grad(d_f_all, g_read),
        }
        return (d_a.transpose(0, 1), d_b.transpose(0, 1), dh.now, dg.now, d_f0, *grads.values(), None, None, None, None)


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
