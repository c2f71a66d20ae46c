"""A population of LFADS models trained as one: the engine under population-based training.

P members share an architecture (``LFADSConfig``) but each has its own weights, its own
hyperparameters and its own optimiser state. Rather than P models stepped one after another,
the population is one model whose every weight carries a leading member dimension, so one
forward and one backward pass (batched matmuls, the fused GRU scan with its D dimension holding
the members) train all members at once.

The pieces, top to bottom:

1. ``PopulationLFADS``: the weights of P ``LFADS`` models, stacked (same parameter names as
   ``LFADS``, shape ``(P, *shape)``), and the batched forward pass. Shapes are LFADS's with a
   leading P: encoder input ``(P, B, T, E)``, factors ``(P, B, T, fac_dim)``, ...
2. ``PopulationNoise`` / ``draw_noise``: every random number of one training step (dropout
   masks, coordinated-dropout mask, posterior samples) drawn up front, one tensor per site for
   all members and time steps. The forward pass only consumes them, so a test can feed the same
   numbers to P separate ``LFADS`` models.
3. ``population_loss``: ``lfads_nb.training``'s loss, per member, with per-member coordinated
   dropout rate and KL / L2 weights.
4. ``PopulationAdam`` and ``clip_grad_norms_``: ``torch.optim.Adam`` and
   ``torch.nn.utils.clip_grad_norm_`` with one learning rate, step count and clipping norm per
   member (the member's gradient norm is over all of its own weights).
5. ``Population``: the training unit PBT drives: model, hyperparameter tensors, optimiser, noise
   generator; ``train_step``, ``validate``, ``copy_members`` (exploit), ``member_model``
   (export one member as an ordinary ``LFADS``), ``state_dict`` / ``load_state_dict``.

Members never interact: no operation reduces over the member dimension, so a member whose
weights became NaN does not affect the others (tested).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from .errors import ConfigError, DataError
from .model import LFADS, LFADSConfig, LFADSOutput, clipped_gru_scan, controlled_decode
from .training import TrainConfig, _Tensors, _validation_batches

# Hyperparameters a member can hold on its own, as (P,) tensors. The rest of TrainConfig /
# LFADSConfig is shared by the whole population.
MEMBER_HPS = ("lr", "grad_clip", "dropout", "cd_rate", "kl_ic_scale", "kl_co_scale", "l2_gen_scale", "l2_con_scale")


# --------------------------------------------------------------------------------------------
# Random numbers of one step
# --------------------------------------------------------------------------------------------


class PopulationNoise(NamedTuple):
    """Every random number of one training step, P members, B trials, T bins.

    Dropout and coordinated-dropout entries are uniforms u in [0, 1): an entry is kept where
    u >= rate (so with probability 1 - rate). Sites absent from the architecture are None.
    """

    cd: Tensor  # (P, B, T, N) coordinated-dropout uniforms over the data entries
    x: Tensor  # (P, B, T, E) dropout of the encoder input
    ic_enc: Tensor  # (P, B, 2 ic_enc_dim) dropout of the IC encoder's final states
    ext: Tensor | None  # (P, B, T, ext_input_dim) dropout of the external inputs
    ci: Tensor | None  # (P, B, T, 2 ci_enc_dim) dropout of the controller inputs
    g_init: Tensor | None  # (P, B, gen_dim) dropout of linear(g0) before f_{-1} (controller only)
    factors_in: Tensor | None  # (P, B, T, fac_dim) dropout of f_{t-1} fed to the controller at t
    gen_states: Tensor  # (P, B, T, gen_dim) dropout of g_t before the factor readout
    ic_eps: Tensor  # (P, B, ic_dim) standard normals: g0 = ic_mean + ic_std * ic_eps
    co_eps: Tensor | None  # (P, B, T, co_dim) standard normals: u_t = co_mean + co_std * co_eps


def draw_noise(config: LFADSConfig, P: int, B: int, T: int, generator: torch.Generator,
               dtype: torch.dtype = torch.float32, device=None) -> PopulationNoise:
    """Draw a step's ``PopulationNoise`` from ``generator``, one call per site, in field order."""
    c = config

    def u(*shape):
        return torch.rand(shape, generator=generator, dtype=dtype, device=device)

    def n(*shape):
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)

    ctrl = c.co_dim > 0
    return PopulationNoise(
        cd=u(P, B, T, c.n_neurons),
        x=u(P, B, T, c.encod_dim),
        ic_enc=u(P, B, 2 * c.ic_enc_dim),
        ext=u(P, B, T, c.ext_input_dim) if c.ext_input_dim else None,
        ci=u(P, B, T, 2 * c.ci_enc_dim) if ctrl else None,
        g_init=u(P, B, c.gen_dim) if ctrl else None,
        factors_in=u(P, B, T, c.fac_dim) if ctrl else None,
        gen_states=u(P, B, T, c.gen_dim),
        ic_eps=n(P, B, c.ic_dim),
        co_eps=n(P, B, T, c.co_dim) if ctrl else None,
    )


# --------------------------------------------------------------------------------------------
# The batched model
# --------------------------------------------------------------------------------------------


class _Method(nn.Module):
    """Calls ``module.<method>(*args)``, so that ``torch.func.functional_call`` (which calls
    ``forward``) can run any method of an ``LFADS`` submodule with one member's weights."""

    def __init__(self, module: nn.Module, method: str):
        super().__init__()
        self.module, self.method = module, method

    def forward(self, *args):
        return getattr(self.module, self.method)(*args)


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Per-member ``F.linear``: x (P, ..., in), weight (P, out, in), bias (P, out) -> (P, ..., out)."""
    P, mid = x.shape[0], x.shape[1:-1]
    xs = x.reshape(P, math.prod(mid), x.shape[-1])
    out = torch.bmm(xs, weight.transpose(1, 2)) if bias is None else torch.baddbmm(bias.unsqueeze(1), xs, weight.transpose(1, 2))
    return out.view(P, *mid, weight.shape[1])


def _project(x: Tensor, weight_ih: Tensor, bias_ih: Tensor) -> Tensor:
    """``ClippedGRU.project`` for D stacked GRUs: x (T, D, B, in) -> (T, D, B, 3H)."""
    T, D, B, _ = x.shape
    xs = x.transpose(0, 1).reshape(D, T * B, -1)
    out = torch.baddbmm(bias_ih.unsqueeze(1), xs, weight_ih.transpose(1, 2))
    return out.view(D, T, B, -1).transpose(0, 1)


class PopulationLFADS(nn.Module):
    """The weights of P ``LFADS(config)`` models, stacked, and their batched forward pass.

    ``weights`` is an ``LFADS`` used as a container: each of its parameters and buffers holds
    all members, shape ``(P, *LFADS shape)``, under LFADS's own name, so member i's state dict
    is ``{name: value[i]}`` (``member_state_dict``). It is never called itself; ``forward``
    does the batched computation. Member i is initialised exactly as ``LFADS(config)`` after
    ``torch.manual_seed(seeds[i])``.

    The recurrences run on ``clipped_gru_scan`` with D = 2P (encoders) or P (generator without
    controller) and on ``controlled_decode`` with D = P (controller and generator); the priors, the factor
    readout's normalisation, the L2 penalties and the observation model are LFADS's own
    methods, run for every member at once with ``torch.func.vmap``.
    """

    def __init__(self, config: LFADSConfig, seeds: Sequence[int]):
        super().__init__()
        if not isinstance(config, LFADSConfig):
            raise ConfigError(f"PopulationLFADS needs an LFADSConfig, got {type(config).__name__}.")
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ConfigError("A population needs at least one member (one seed).")
        self.config, self.population = config, len(seeds)
        members = []
        for s in seeds:
            torch.manual_seed(s)
            members.append(LFADS(config))
        self.weights = members[0]
        for name, module in list(self.weights.named_modules()):
            for key in list(module._parameters):
                full = f"{name}.{key}" if name else key
                stacked = torch.stack([m.get_parameter(full).detach() for m in members])
                module._parameters[key] = nn.Parameter(stacked)
            for key in list(module._buffers):
                full = f"{name}.{key}" if name else key
                module._buffers[key] = torch.stack([m.get_buffer(full) for m in members])
        # One unstacked LFADS (not a submodule) whose methods vmap runs with each member's weights.
        object.__setattr__(self, "_single", members[1] if len(members) > 1 else LFADS(config))

    # ---- per-member calls of LFADS's own methods -------------------------------------------

    def _each(self, path: str, method: str, *args, in_dims=0):
        """``weights.<path>.<method>(*args)`` for every member (vmap over dim 0 of weights and args)."""
        module = self._single.get_submodule(path) if path else self._single
        stacked = self.weights.get_submodule(path) if path else self.weights
        state = {f"module.{k}": v for k, v in stacked.named_parameters()}
        state.update({f"module.{k}": v for k, v in stacked.named_buffers()})
        call = _Method(module, method)
        dims = in_dims if isinstance(in_dims, tuple) else (in_dims,) * len(args)
        return vmap(lambda s, *a: functional_call(call, s, a), in_dims=(0, *dims))(state, *args)

    def member_state_dict(self, i: int) -> dict[str, Tensor]:
        """Member i's weights as an ordinary ``LFADS`` state dict (copies)."""
        return {k: v[i].detach().clone() for k, v in self.weights.state_dict().items()}

    def l2_penalties(self) -> dict[str, Tensor]:
        """``LFADS.l2_penalties`` of every member: each value (P,)."""
        return self._each("", "l2_penalties")

    def observation_penalty(self) -> Tensor:
        """``observation.penalty()`` of every member, (P,)."""
        return self._each("observation", "penalty")

    def observation_nll(self, params: Tensor, target: Tensor) -> Tensor:
        """Per-entry NLL (P, B, T, N) of params (P, B, T, N, k) against the shared target (B, T, N)."""
        return self._each("observation", "nll", params, target, in_dims=(0, None))

    def observation_mean(self, params: Tensor) -> Tensor:
        return self._each("observation", "mean", params)

    # ---- forward ---------------------------------------------------------------------------

    def _encoder(self, name: str, x: Tensor) -> tuple[Tensor, Tensor]:
        """Both directions of every member's encoder in one scan (D = 2P).

        x (P, B, T, E) -> states (T, P, 2, B, H), last states (P, 2, B, H).
        """
        enc = self.weights.get_submodule(name)
        P, B, T, _ = x.shape
        xt = x.permute(2, 0, 1, 3)  # (T, P, B, E)
        xs = torch.stack([xt, xt.flip(0)], dim=2).flatten(1, 2)  # (T, 2P, B, E): backward reads reversed time
        xp = _project(xs, enc.gru.weight_ih.flatten(0, 1), enc.gru.bias_ih.flatten(0, 1))
        h0 = enc.h0.flatten(0, 1).expand(-1, B, -1)
        states, last = clipped_gru_scan(xp, h0, enc.gru.weight_hh.flatten(0, 1), self.config.cell_clip)
        H = states.shape[-1]
        return states.view(T, P, 2, B, H), last.view(P, 2, B, H)

    def forward(self, encoder_input: Tensor, ext_input: Tensor | None = None, *,
                noise: PopulationNoise | None = None, dropout: Tensor | None = None) -> LFADSOutput:
        """Infer everything for a batch, every member at once.

        encoder_input (P, B, T, encod_dim): each member's masked / rescaled input (a shared input
        may be ``expand``ed). ext_input (B, T, ext_input_dim) shared by all members, or None.
        With ``noise`` (training): dropout at rate ``dropout`` (P,) from the noise's uniforms,
        g0 and u_t sampled with its normals, kl_co the one-sample estimate, as ``LFADS`` in train
        mode with ``sample=True``. Without (validation): no dropout, posterior means, closed-form
        kl_co, as ``LFADS`` in eval mode with ``sample=False``.
        Returns an ``LFADSOutput`` whose every field has a leading P.
        """
        c, P = self.config, self.population
        self._check_inputs(encoder_input, ext_input, noise, dropout)
        _, B, T, _ = encoder_input.shape
        sample = noise is not None

        def drop(v: Tensor, uniforms: Tensor | None) -> Tensor:
            if not sample:
                return v
            rate = dropout.view(P, *([1] * (v.dim() - 1)))
            return v * (uniforms >= rate) / (1 - rate)

        x = drop(encoder_input, noise.x if sample else None)
        _, last = self._encoder("ic_encoder", x)
        h = drop(torch.cat([last[:, 0], last[:, 1]], dim=-1), noise.ic_enc if sample else None)
        w = self.weights
        ic_mean, ic_logvar = _linear(h, w.ic_linear.weight, w.ic_linear.bias).chunk(2, dim=-1)
        ic_std = torch.sqrt(torch.exp(ic_logvar) + c.ic_post_var_min)
        g0 = ic_mean + ic_std * noise.ic_eps if sample else ic_mean
        kl_ic = self._each("ic_prior", "kl", ic_mean, ic_std)
        g_init = _linear(g0, w.ic_to_g0.weight, w.ic_to_g0.bias)
        if c.ext_input_dim:
            ext = drop(ext_input.expand(P, -1, -1, -1), noise.ext if sample else None)
        else:
            ext = x.new_zeros(P, B, T, 0)
        w_fac = self._each("factor_readout", "normalized_weight")  # (P, fac_dim, gen_dim)
        if c.co_dim:
            states, factors, u, co_mean, co_std = self._decode_controlled(x, g_init, ext, w_fac, noise, drop)
            if sample:
                kl_co = self._each("co_prior", "kl_sample", co_mean, co_std, u)
            else:
                kl_co = self._each("co_prior", "kl_expected", co_mean, co_std)
        else:
            gen = w.generator
            xp = _project(ext.permute(2, 0, 1, 3), gen.weight_ih[:, 0], gen.bias_ih[:, 0])  # (T, P, B, 3G)
            states, _ = clipped_gru_scan(xp, g_init, gen.weight_hh[:, 0], c.cell_clip)
            states = states.permute(1, 2, 0, 3)  # (P, B, T, G)
            factors = _linear(drop(states, noise.gen_states if sample else None), w_fac)
            u = co_mean = co_std = x.new_zeros(P, B, T, 0)
            kl_co = x.new_zeros(P, B)
        obs_params = self._each("observation", "forward", factors)
        return LFADSOutput(obs_params, factors, states, u, ic_mean, ic_std, co_mean, co_std, kl_ic, kl_co)

    def _decode_controlled(self, x, g_init, ext, w_fac, noise, drop):
        """``LFADS._decode_controlled`` with a leading P; dropout and eps from ``noise`` (if any)."""
        c, w = self.config, self.weights
        P, B, T, _ = x.shape
        sample = noise is not None
        states, _ = self._encoder("ci_encoder", x)  # controller inputs, lagged as LFADS.encode_controller_inputs
        fwd = states[:, :, 0].permute(1, 2, 0, 3)
        bwd = states[:, :, 1].flip(0).permute(1, 2, 0, 3)
        fwd = nn.functional.pad(fwd, (0, 0, 1, 0))[:, :, :-1]
        bwd = nn.functional.pad(bwd, (0, 0, 0, 1))[:, :, 1:]
        ci = torch.cat([fwd, bwd], dim=-1)  # (P, B, T, 2 ci_enc_dim)
        gen, con = w.generator, w.controller
        n_ci = 2 * c.ci_enc_dim
        gen_xp_ext = _linear(ext, gen.weight_ih[:, 0, :, c.co_dim:], gen.bias_ih[:, 0])  # (P, B, T, 3G)
        con_xp_ci = _linear(drop(ci, noise.ci if sample else None), con.weight_ih[:, 0, :, :n_ci], con.bias_ih[:, 0])
        f_init = _linear(drop(g_init, noise.g_init if sample else None), w_fac)  # f_{-1}

        def keep(uniforms: Tensor) -> Tensor:  # dropout multipliers of all steps at once
            return drop(torch.ones_like(uniforms), uniforms)

        def steps(v: Tensor | None) -> Tensor | None:  # (P, B, T, k) -> (T, P, B, k)
            return None if v is None else v.permute(2, 0, 1, 3)

        masks = (keep(noise.factors_in), keep(noise.gen_states), noise.co_eps) if sample else (None,) * 3
        outputs = controlled_decode(
            steps(con_xp_ci), steps(gen_xp_ext), w.con_h0.unsqueeze(1).expand(-1, B, -1), g_init, f_init,
            con.weight_hh[:, 0], con.weight_ih[:, 0, :, n_ci:], w.co_linear.weight, w.co_linear.bias,
            gen.weight_ih[:, 0, :, : c.co_dim], gen.weight_hh[:, 0], w_fac, *map(steps, masks), c.cell_clip,
        )
        return tuple(o.permute(1, 2, 0, 3) for o in outputs)

    def _check_inputs(self, encoder_input, ext_input, noise, dropout) -> None:
        c, P = self.config, self.population
        dtype = self.weights.generator.weight_hh.dtype
        if not isinstance(encoder_input, Tensor) or encoder_input.dim() != 4 or encoder_input.shape[0] != P \
                or encoder_input.shape[-1] != c.encod_dim:
            shape = tuple(encoder_input.shape) if isinstance(encoder_input, Tensor) else type(encoder_input).__name__
            raise DataError(f"encoder_input must be a tensor (member={P}, trial, time, {c.encod_dim}); got {shape}.")
        if encoder_input.dtype != dtype:
            raise DataError(f"encoder_input has dtype {encoder_input.dtype}, the population {dtype}; convert with .to({dtype}).")
        if encoder_input.shape[2] == 0:
            raise DataError("encoder_input has zero time bins; LFADS needs at least one.")
        if c.ext_input_dim:
            expected = (*encoder_input.shape[1:3], c.ext_input_dim)
            if ext_input is None or tuple(ext_input.shape) != expected:
                got = None if ext_input is None else tuple(ext_input.shape)
                raise DataError(f"ext_input must have shape {expected} (trial, time, ext_input_dim); got {got}.")
        if noise is not None and (dropout is None or tuple(dropout.shape) != (P,)):
            raise ConfigError(f"Training with noise needs the members' dropout rates as a tensor of shape ({P},).")


# --------------------------------------------------------------------------------------------
# The loss: lfads_nb.training._batch_loss, per member
# --------------------------------------------------------------------------------------------


def population_loss(model: PopulationLFADS, tensors: _Tensors, idx: Tensor, hps: Mapping[str, Tensor],
                    sv_fraction: float, kl_ramp: float, l2_ramp: float, noise: PopulationNoise):
    """Training loss of every member on the batch ``idx``: (P,) and its parts, each (P,).

    Exactly ``lfads_nb.training._batch_loss`` per member, with that member's ``cd_rate``,
    ``dropout``, KL and L2 weights from ``hps`` (each (P,)); a member with ``cd_rate`` 0 has no
    coordinated dropout. ``tensors`` as ``training._to_tensors`` builds them.
    """
    P = model.population
    raw = tensors.spikes[idx]
    observed = ~torch.isnan(raw)
    x = raw.nan_to_num(0.0)
    sv_keep = tensors.sv_keep[idx]
    visible = observed & sv_keep
    cd = hps["cd_rate"].view(P, 1, 1, 1)
    cd_keep = noise.cd >= cd  # (P, B, T, N); all True where cd_rate = 0
    keep_prob = (1.0 - sv_fraction) * (1.0 - cd)
    # With CD, held-in entries count only where the encoder did not see them; held-out neurons always.
    loss_mask = visible & torch.where(cd > 0, ~cd_keep | ~tensors.heldin, True)
    encoder_input = (x * (sv_keep & cd_keep) / keep_prob)[..., tensors.heldin]
    ext = None if tensors.ext_input is None else tensors.ext_input[idx]
    out = model(encoder_input, ext, noise=noise, dropout=hps["dropout"])
    nll = model.observation_nll(out.obs_params, x)
    recon = (nll * loss_mask).sum((1, 2, 3)) / loss_mask.sum((1, 2, 3)).clamp(min=1)
    kl_ic, kl_co = out.kl_ic.mean(1), out.kl_co.mean(1)
    l2 = model.l2_penalties()
    loss = (
        recon
        + kl_ramp * (hps["kl_ic_scale"] * kl_ic + hps["kl_co_scale"] * kl_co)
        + l2_ramp * (hps["l2_gen_scale"] * l2["l2_gen"] + hps["l2_con_scale"] * l2["l2_con"])
        + model.observation_penalty()
    )
    parts = {"train_recon": recon, "kl_ic": kl_ic, "kl_co": kl_co, "l2": l2["l2_gen"] + l2["l2_con"]}
    return loss, parts


# --------------------------------------------------------------------------------------------
# Per-member gradient clipping and Adam
# --------------------------------------------------------------------------------------------


def _per_member(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


@torch.no_grad()
def clip_grad_norms_(params: Sequence[Tensor], max_norm: Tensor) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for each member: params (P, ...), max_norm (P,).

    Member i's norm is over the slices [i] of all gradients; its gradients are scaled by
    min(1, max_norm / (norm + 1e-6)), as torch does. Returns the norms before clipping, (P,).
    """
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads], 1), dim=1)
    coef = torch.clamp(max_norm / (norms + 1e-6), max=1.0)
    for g in grads:
        g.mul_(_per_member(coef, g))
    return norms


class PopulationAdam:
    """``torch.optim.Adam`` (betas (0.9, 0.999), eps 1e-8, no weight decay) with a learning rate
    and a step count per member. Parameters are stacked (P, ...); state is created on the
    first step, as torch does. ``state_dict`` holds plain tensors."""

    betas = (0.9, 0.999)
    eps = 1e-8

    def __init__(self, params: Sequence[Tensor]):
        self.params = list(params)
        P = self.params[0].shape[0]
        self.steps = torch.zeros(P, dtype=self.params[0].dtype, device=self.params[0].device)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self, lr: Tensor) -> None:
        """One Adam update of every member, member i with learning rate lr[i]."""
        beta1, beta2 = self.betas
        self.steps += 1
        step_size = lr / (1 - beta1 ** self.steps)
        bias_correction2_sqrt = torch.sqrt(1 - beta2 ** self.steps)
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            if p.grad is None:
                continue
            g = p.grad
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v.sqrt() / _per_member(bias_correction2_sqrt, v)).add_(self.eps)
            p.sub_(m / denom * _per_member(step_size, p))

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict:
        return {"steps": self.steps, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    @torch.no_grad()
    def load_state_dict(self, state: Mapping) -> None:
        self.steps.copy_(state["steps"])
        for mine, saved in zip(self.exp_avg + self.exp_avg_sq, list(state["exp_avg"]) + list(state["exp_avg_sq"])):
            mine.copy_(saved)

    @torch.no_grad()
    def copy_members(self, dst: Tensor, src: Tensor) -> None:
        self.steps[dst] = self.steps[src]
        for t in self.exp_avg + self.exp_avg_sq:
            t[dst] = t[src]


# --------------------------------------------------------------------------------------------
# The training unit
# --------------------------------------------------------------------------------------------


class Population:
    """P LFADS members trained together: what population-based training steps, copies and saves.

    ``model_config`` fixes the architecture; ``train_config`` the shared settings (batch size,
    ramps, sample validation); ``hparams`` maps names in ``MEMBER_HPS`` to P values (missing
    names take ``train_config``'s value, or ``model_config.dropout``); ``seeds`` one per member
    (initial weights). ``noise_seed`` seeds the generator of every step's random numbers.
    """

    def __init__(self, model_config: LFADSConfig, train_config: TrainConfig, hparams: Mapping[str, Sequence[float]],
                 seeds: Sequence[int], *, noise_seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32):
        unknown = sorted(set(hparams) - set(MEMBER_HPS))
        if unknown:
            raise ConfigError(
                f"{unknown} cannot differ between population members; per-member hyperparameters are {list(MEMBER_HPS)}. "
                "Set the others in the TrainConfig / LFADSConfig shared by the population."
            )
        P = len(seeds)
        self.model_config, self.train_config = model_config, train_config
        self.device = torch.device(device)
        self.model = PopulationLFADS(model_config, seeds).to(device=self.device, dtype=dtype)
        self.hps: dict[str, Tensor] = {}
        for name in MEMBER_HPS:
            default = model_config.dropout if name == "dropout" else getattr(train_config, name)
            values = hparams.get(name, [default] * P)
            if len(values) != P:
                raise ConfigError(f"hparams[{name!r}] has {len(values)} values for {P} members.")
            self.hps[name] = torch.tensor([float(v) for v in values], dtype=dtype, device=self.device)
        self.optimizer = PopulationAdam(list(self.model.parameters()))
        self.generator = torch.Generator(self.device).manual_seed(int(noise_seed))

    @property
    def size(self) -> int:
        return self.model.population

    def train_step(self, tensors: _Tensors, idx: Tensor, kl_ramp: float, l2_ramp: float,
                   noise: PopulationNoise | None = None) -> dict[str, Tensor]:
        """One optimiser step of every member on the trials ``idx``; returns (P,) losses and parts.

        ``noise``: this step's random numbers (default: drawn from the population's generator).
        """
        B, T = len(idx), tensors.spikes.shape[1]
        dtype = self.hps["lr"].dtype
        if noise is None:
            noise = draw_noise(self.model_config, self.size, B, T, self.generator, dtype, self.device)
        loss, parts = population_loss(self.model, tensors, idx, self.hps, self.train_config.sv_fraction,
                                      kl_ramp, l2_ramp, noise)
        self.optimizer.zero_grad()
        loss.sum().backward()  # members share no weights: the sum's gradient is each member's own
        parts["grad_norm"] = clip_grad_norms_(self.optimizer.params, self.hps["grad_clip"])
        self.optimizer.step(self.hps["lr"])
        return {"train_loss": loss.detach(), **{k: v.detach() for k, v in parts.items()}}

    @torch.no_grad()
    def validate(self, tensors: _Tensors, idx: Tensor, batch_size: int = 256) -> dict[str, Tensor]:
        """Per-member validation NLL per entry, (P,) each: ``valid_recon`` on the visible entries
        and, with sample validation, ``valid_sv_nll`` on the held-out ones (as ``training``)."""
        P, sv = self.size, self.train_config.sv_fraction
        sums = torch.zeros(4, P, dtype=self.hps["lr"].dtype, device=self.device)
        for enc, ext, x, seen, held in _validation_batches(tensors, idx, sv, batch_size):
            ext = None if ext is None else ext.to(sums.dtype)
            out = self.model(enc.to(sums.dtype).expand(P, -1, -1, -1), ext)
            nll = self.model.observation_nll(out.obs_params, x.to(sums.dtype))
            sums += torch.stack([(nll * seen).sum((1, 2, 3)), seen.sum().expand(P),
                                 (nll * held).sum((1, 2, 3)), held.sum().expand(P)])
        metrics = {"valid_recon": sums[0] / sums[1].clamp(min=1)}
        if sv > 0:
            metrics["valid_sv_nll"] = sums[2] / sums[3].clamp(min=1)
        return metrics

    @torch.no_grad()
    def copy_members(self, dst: Sequence[int], src: Sequence[int]) -> None:
        """Exploit: member dst[k] becomes a copy of member src[k]: weights, Adam state, hyperparameters."""
        dst = torch.as_tensor(list(dst), dtype=torch.long, device=self.device)
        src = torch.as_tensor(list(src), dtype=torch.long, device=self.device)
        for t in list(self.model.parameters()) + list(self.model.buffers()) + list(self.hps.values()):
            t[dst] = t[src]
        self.optimizer.copy_members(dst, src)

    def member_config(self, i: int) -> LFADSConfig:
        """Member i's architecture as an ordinary ``LFADSConfig`` (its own dropout rate)."""
        return dataclasses.replace(self.model_config, dropout=float(self.hps["dropout"][i]))

    def member_hparams(self, i: int) -> dict[str, float]:
        return {k: float(v[i]) for k, v in self.hps.items()}

    def member_model(self, i: int) -> LFADS:
        """Member i as an ordinary ``LFADS`` (on the CPU, float32, eval mode), ready for ``infer``."""
        model = LFADS(self.member_config(i))
        model.load_state_dict({k: v.float().cpu() for k, v in self.model.member_state_dict(i).items()})
        return model.eval()

    def state_dict(self) -> dict:
        """Everything that changes in training, as plain tensors (loads with weights_only=True)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "hps": dict(self.hps),
            "generator": self.generator.get_state(),
        }

    @torch.no_grad()
    def load_state_dict(self, state: Mapping) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for k, v in state["hps"].items():
            self.hps[k].copy_(v)
        self.generator.set_state(state["generator"])


__all__ = ["MEMBER_HPS", "Population", "PopulationAdam", "PopulationLFADS", "PopulationNoise", "clip_grad_norms_",
           "draw_noise", "population_loss"]
