"""The fused neural-ODE generator: a whole fixed-step integration in one autograd node, hand-written backprop.

``lfads_nb.models.lfads.NeuralODEGenerator.step`` integrates the MLP vector field one bin at a
time in plain autograd (``euler_step``, ``rk4_step``: the reference, read like the textbook).
``node_scan`` is the same computation over all T bins when the generator's inputs are known in
advance (no controller): it runs without recording a graph, in preallocated buffers, and its
backward is hand-written backpropagation through the solver's stages, with the weight gradients
as a few large matmuls over all stages. Tested against the step loop in value and gradient
(float64) and by gradcheck; like ``_fused_gru`` it carries a ``vmap`` rule that folds a
population's members into its D axis.

One explicit Runge-Kutta step of size h with tableau (a, b) (``TABLEAUS``: Euler, classical RK4)
over the field f(y) = W_out tanh(W_hh y + x) + b_out, x the bin's input projection W_ih v + b:

    y_i = g + h sum_{j<i} a_ij k_j,     z_i = tanh(W_hh y_i + x),     k_i = W_out z_i + b_out
    g'  = g + h sum_i b_i k_i

Backward, from dL/dg' (adjoints written d.): dk_i = h b_i dg' for every stage, then for i from
the last stage to the first

    dpre_i = (W_out^T dk_i) * (1 - z_i^2),     dy_i = W_hh^T dpre_i,
    dg += dy_i,     dk_j += h a_ij dy_i  (j < i),

and dW_out = sum dk_i z_i^T, db_out = sum dk_i, dW_hh = sum dpre_i y_i^T, dx = sum_i dpre_i.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._fused_gru import _fold_members, _unfold_members

# Butcher tableaus of the fixed-step solvers: (a: the stage coefficients, row i lists a_ij for j < i; b: the weights)
TABLEAUS = {
    "euler": ((), (1.0,)),
    "rk4": (((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6)),
}


def _stage_rows(a) -> list[tuple[float, ...]]:
    """Row i of the stage coefficients (empty for the first stage)."""
    return [()] + [tuple(row) for row in a]


class _NODEScan(torch.autograd.Function):
    """States g_1..g_T of D neural ODEs, each bin integrated by ``substeps`` steps of a tableau.

    Shapes (H = gen_dim, M = the field's hidden width, T bins): xp (T, D, B, M) the input
    projection of each bin (held over the bin), or (D, M) one for every bin and trial (a generator
    without inputs: its bias); g0 (D, B, H), w_hh (D, M, H), w_out (D, H, M), b_out (D, H); h the step
    (bin duration / substeps). Returns states (T, D, B, H) and the buffers backward needs: the
    stage inputs ys (E + 1, D, B, H) (the last: the final state) and ss (E, D, B, M),
    E = T * substeps * stages.

    tanh is computed as 2 sigmoid(2a) - 1 (on CPU torch's sigmoid is several times faster than
    its tanh), with the 2 and the -1 folded into the weights: the buffers hold s = sigmoid(2a),
    k = 2 W_out s + (b_out - W_out 1), and tanh'(a) = 1 - z^2 = 4 s (1 - s).
    """

    @staticmethod
    def forward(xp: Tensor, g0: Tensor, w_hh: Tensor, w_out: Tensor, b_out: Tensor, h: float, substeps: int,
                solver: str, n_bins: int):
        a, b = TABLEAUS[solver]
        rows, n_stages = _stage_rows(a), len(b)
        D, B, H = g0.shape
        T, M = (xp.shape[0] if xp.dim() == 4 else n_bins), xp.shape[-1]
        E = T * substeps * n_stages
        # ys[e]: the input of stage e; the first stage of each step is the step's start g, so the
        # next step's start is written straight into its slot (ys has one more: the last state).
        ys, ss = g0.new_empty(E + 1, D, B, H), xp.new_empty(E, D, B, M)
        ys[0] = g0
        w_in = w_hh.transpose(1, 2)  # (D, H, M) view: y W_hh^T
        w_k = (2 * w_out).transpose(1, 2)  # (D, M, H) view of a contiguous (D, H, M): a fast matmul layout
        b_k = (b_out - w_out.sum(-1)).unsqueeze(1).expand(D, B, H)
        ys_, ss_ = ys.unbind(0), ss.unbind(0)
        x_all = None if xp.dim() == 4 else xp.unsqueeze(1)  # (D, 1, M): the same for every bin and trial
        e = 0
        for t in range(T):
            x_t = xp[t] if x_all is None else x_all
            for _ in range(substeps):
                g, ks = ys_[e], []
                for i in range(n_stages):
                    terms = [(a_ij, k_j) for a_ij, k_j in zip(rows[i], ks) if a_ij]
                    for n, (a_ij, k_j) in enumerate(terms):  # y_i = g + h sum_j a_ij k_j
                        torch.add(g if n == 0 else ys_[e + i], k_j, alpha=h * a_ij, out=ys_[e + i])
                    torch.baddbmm(x_t, ys_[e + i], w_in, beta=2.0, alpha=2.0, out=ss_[e + i]).sigmoid_()
                    ks.append(torch.baddbmm(b_k, ss_[e + i], w_k))
                nxt = ys_[e + n_stages]  # g' = g + h sum_i b_i k_i
                for n, (b_i, k_i) in enumerate(zip(b, ks)):
                    torch.add(g if n == 0 else nxt, k_i, alpha=h * b_i, out=nxt)
                e += n_stages
        per_bin = substeps * n_stages
        return ys[per_bin::per_bin].clone(), ys, ss

    @staticmethod
    def setup_context(ctx, inputs, output):
        xp, _, w_hh, w_out, _, h, substeps, solver, _ = inputs
        _, ys, ss = output
        ctx.mark_non_differentiable(ys, ss)
        ctx.save_for_backward(w_hh, w_out, ys, ss)
        ctx.h, ctx.substeps, ctx.solver, ctx.per_bin = h, substeps, solver, xp.dim() == 4
        ctx.set_materialize_grads(False)

    @staticmethod
    def vmap(info, in_dims, xp, g0, w_hh, w_out, b_out, h, substeps, solver, n_bins):
        args = _fold_members(info, in_dims[:5], (xp, g0, w_hh, w_out, b_out), (1 if xp.dim() > 3 else 0, 0, 0, 0, 0))
        outputs = _NODEScan.apply(*args, h, substeps, solver, n_bins)
        return _unfold_members(info, outputs, (1, 1, 1))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_states: Tensor | None, *_buffers):
        w_hh, w_out, ys, ss = ctx.saved_tensors
        h, substeps = ctx.h, ctx.substeps
        a, b = TABLEAUS[ctx.solver]
        rows, n_stages = _stage_rows(a), len(b)
        E, D, B, M = ss.shape
        H, T = ys.shape[-1], E // (substeps * n_stages)
        # One stage (Euler): dk = h dg, so dg itself stands for dk and h scales the sums at the end.
        # Several: each stage's dk_i = h b_i dg (plus what later stages add) is its own tensor.
        scale = h * b[0] if n_stages == 1 else 1.0
        w_u = 4 * scale * w_out  # dk -> 4 W_out^T dk, the 4 of tanh' = 4 s (1 - s)
        w_dy = w_hh.transpose(1, 2).contiguous().transpose(1, 2)  # (D, M, H): a fast matmul layout
        # Weight gradients accumulate per stage and per model: (H, B) x (B, M) products are fast, one
        # product over all stages is not, and a population member then rounds as it would alone.
        d_w_out_s, d_w_hh_t = w_out.new_zeros(D, H, M), w_out.new_zeros(D, H, M)  # sum dk s^T, sum y dpre^T
        sum_dk = ys.new_zeros(D, B, H)
        d_xp = ss.new_empty(T, D, B, M) if ctx.per_bin else ss.new_zeros(D, B, M)
        d_pre = ss.new_empty(D, B, M)
        dg = ys.new_zeros(D, B, H)
        ys_, ss_ = ys.unbind(0), ss.unbind(0)
        e = E
        for t in range(T - 1, -1, -1):
            if d_states is not None:
                dg.add_(d_states[t])
            first = ctx.per_bin  # the first stage reached in a bin writes d_xp[t], the others add to it
            for _ in range(substeps):
                e -= n_stages
                dks = [dg] if n_stages == 1 else [dg * (h * b_i) for b_i in b]
                for i in range(n_stages - 1, -1, -1):  # dg accumulates dL/dg of the step's start
                    s, y, dk = ss_[e + i], ys_[e + i], dks[i]
                    for d in range(D):
                        d_w_out_s[d].addmm_(dk[d].T, s[d])
                    sum_dk.add_(dk)
                    u = torch.bmm(dk, w_u)
                    out = d_xp[t] if first else d_pre
                    torch.addcmul(s, s, s, value=-1.0, out=out).mul_(u)  # dpre = 4 (W_out^T dk) s (1 - s)
                    if not first:
                        (d_xp[t] if ctx.per_bin else d_xp).add_(d_pre)
                    for d in range(D):
                        d_w_hh_t[d].addmm_(y[d].T, out[d])
                    dy = torch.bmm(out, w_dy)
                    dg.add_(dy)
                    for j, a_ij in enumerate(rows[i]):
                        if a_ij:
                            dks[j].add_(dy, alpha=h * a_ij)
                    first = False
        d_b_out = sum_dk.sum(1) * scale
        d_w_out = (2 * scale) * d_w_out_s - d_b_out.unsqueeze(-1)  # k = 2 W_out s + b_out - W_out 1
        return (d_xp if ctx.per_bin else d_xp.sum(1)), dg, d_w_hh_t.transpose(1, 2), d_w_out, d_b_out, \
            None, None, None, None


def node_scan(xp: Tensor, g0: Tensor, w_hh: Tensor, w_out: Tensor, b_out: Tensor, h: float, substeps: int,
              solver: str, n_bins: int | None = None) -> Tensor:
    """Integrate dg/dt = W_out tanh(W_hh g + x_t) + b_out over T bins, each by ``substeps`` steps
    of size h of ``solver`` ("euler" or "rk4"), x_t held over bin t. Shapes as ``_NODEScan``
    (``n_bins`` = T is needed when xp is one (D, M) projection for all bins); returns the states at
    the end of each bin, (T, D, B, H). Equal to looping ``NeuralODEGenerator.step`` (tested in
    value and gradient) and several times faster."""
    if xp.dim() == 2 and n_bins is None:
        raise ValueError("node_scan needs n_bins when xp is one (D, M) projection for every bin.")
    states, _, _ = _NODEScan.apply(xp, g0, w_hh, w_out, b_out, h, substeps, solver, n_bins or xp.shape[0])
    return states
