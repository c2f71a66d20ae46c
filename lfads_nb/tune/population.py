"""A population of LFADS models trained as one: the engine under population-based training.

P members share an architecture (``LFADSConfig``) but each has its own weights, its own
hyperparameters and its own optimiser state. The population is not a second model: it is
``torch.func.vmap`` of the one ``LFADS`` over weights stacked along a leading member axis
(equinox's principle: write the model for one example, get the batch by a transform). One
forward and one backward pass train all members at once; the fused GRU kernels fold the member
axis into their own D axis (their vmap rules), so the recurrences of all members run as one.

The pieces, top to bottom:

1. ``PopulationLFADS``: P ``LFADS`` members (each built by ``build_model``, so with the same
   data-dependent start as a single model), their weights stacked under LFADS's own names,
   shape ``(P, *shape)``; ``forward``, ``loss`` and ``validation_sums`` are LFADS's, vmapped.
2. ``StepNoise`` / ``draw_step_noise``: every random number of one training step drawn up
   front (the coordinated-dropout uniforms and a ``Noise`` per member), so a test can feed the
   same numbers to P separate ``LFADS`` models.
3. ``PopulationAdam`` and ``clip_grad_norms_``: ``torch.optim.Adam`` and
   ``torch.nn.utils.clip_grad_norm_`` with one learning rate, step count and clipping norm per
   member (the member's gradient norm is over all of its own weights).
4. ``Population``: the training unit PBT drives: model, hyperparameter tensors, optimiser, noise
   generator; ``train_step``, ``validate``, ``copy_members`` (exploit), ``member_model``
   (export one member as an ordinary ``LFADS``), ``state_dict`` / ``load_state_dict``.

Members never interact: no operation reduces over the member axis, so a member whose weights
became NaN does not affect the others (tested).
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from ..errors import ConfigError, DataError
from ..models.lfads import LFADS, LFADSConfig, LFADSOutput, Noise, draw_noise
from ..training.loop import (LOSS_WEIGHTS, TrainConfig, _Tensors, metrics_from_sums, training_batch, validation_batches,
                             validation_metrics)
from ..transforms import Batch, rounded_normal_shifts
from .hyperparameters import HYPERPARAMETERS, PER_MEMBER, by_owner


def _shared_read_in(name: str) -> bool:
    """The buffers the members share by construction: the held-in neurons of the data (one per
    session of a ``StitchedLFADS``)."""
    return name.endswith("read_in.index")


def _member_batch_dims(batch: Batch) -> Batch:
    """How a training batch maps onto members under vmap: the fields with a leading member axis
    (the masks of coordinated dropout; the data too under temporal shift) are mapped, the rest shared."""
    return Batch(*(0 if isinstance(v, Tensor) and v.dim() == 4 else None for v in batch))


# --------------------------------------------------------------------------------------------
# Random numbers of one step
# --------------------------------------------------------------------------------------------


class StepNoise(NamedTuple):
    """Every random number of one training step of P members, B trials, T bins, N channels."""

    cd: Tensor  # (P, B, T, N) coordinated-dropout uniforms (``transforms.coordinated_dropout``)
    model: Noise  # each field with a leading P (``model.draw_noise(..., members=P)``)
    shift: Tensor | None = None  # (2, P, B, N) temporal-shift normals (encoder, target), or None: no shift


def draw_step_noise(config: LFADSConfig, P: int, B: int, T: int, generator: torch.Generator,
                    dtype: torch.dtype = torch.float32, device=None, *, shift: bool = False) -> StepNoise:
    """Draw a step's ``StepNoise`` from ``generator``: the CD uniforms, the model's noise, then
    (with ``shift``) the temporal-shift normals."""
    cd = torch.rand((P, B, T, config.n_neurons), generator=generator, dtype=dtype, device=device)
    model = draw_noise(config, B, T, members=P, generator=generator, dtype=dtype, device=device)
    normals = (torch.randn((2, P, B, config.n_neurons), generator=generator, dtype=dtype, device=device)
               if shift else None)
    return StepNoise(cd, model, normals)


def draw_sessions_step_noise(config: LFADSConfig, P: int, sizes: Mapping[str, tuple[int, int]], T: int,
                             generator: torch.Generator, dtype: torch.dtype = torch.float32, device=None, *,
                             shift: bool = False) -> StepNoise:
    """``draw_step_noise`` for a step of stitched members over several sessions: ``sizes`` maps
    each session of the step to its (trials B_s, channels N_s). ``cd`` (and ``shift``) become
    ``{session: (P, B_s, T, N_s)}`` (``{session: (2, P, B_s, N_s)}``); the model's noise covers
    all the step's trials, in session order. Drawn in that order: CD per session, the model's
    noise, the shift normals per session."""
    cd = {name: torch.rand((P, B, T, N), generator=generator, dtype=dtype, device=device)
          for name, (B, N) in sizes.items()}
    model = draw_noise(config, sum(B for B, _ in sizes.values()), T, members=P, generator=generator, dtype=dtype,
                       device=device)
    normals = ({name: torch.randn((2, P, B, N), generator=generator, dtype=dtype, device=device)
                for name, (B, N) in sizes.items()} if shift else None)
    return StepNoise(cd, model, normals)


# --------------------------------------------------------------------------------------------
# The batched model
# --------------------------------------------------------------------------------------------


def _mapped(noise: Noise | None):
    """vmap in_dims for a per-member ``Noise``: axis 0 of each field that is drawn."""
    return None if noise is None else Noise(*(None if v is None else 0 for v in noise))


class _Call(nn.Module):
    """``fn(module, *args)`` as a module's forward, so ``torch.func.functional_call`` can run any
    method of an ``LFADS`` with one member's weights."""

    def __init__(self, module: nn.Module, fn: Callable):
        super().__init__()
        self.module, self.fn = module, fn

    def forward(self, *args):
        return self.fn(self.module, *args)


class PopulationLFADS(nn.Module):
    """P ``LFADS`` models run as one: their weights stacked, LFADS's own methods vmapped over them.

    ``weights`` is an ``LFADS`` used as a container: each of its parameters and buffers holds
    all members, shape ``(P, *LFADS shape)``, under LFADS's own name, so member i's state dict
    is ``{name: value[i]}`` (``member_state_dict``). It is never called itself: every
    computation is ``torch.func.vmap`` of ``functional_call`` on an unstacked template member.
    Shapes are LFADS's with a leading P, except inputs the members share.
    """

    def __init__(self, members: Sequence[LFADS]):
        super().__init__()
        members = list(members)
        if not members:
            raise ConfigError("A population needs at least one member.")
        if not all(isinstance(m, LFADS) for m in members):
            raise ConfigError("PopulationLFADS stacks LFADS models; build them with lfads_nb.build_model.")
        configs = {repr(dataclasses.asdict(m.config)) for m in members}
        if len(configs) > 1:
            raise ConfigError("Population members must share one LFADSConfig; build every member with the same sizes.")
        shared = [name for name, _ in members[0].named_buffers() if _shared_read_in(name)]
        if len({tuple(tuple(m.get_buffer(name).tolist()) for name in shared) for m in members}) > 1:
            raise ConfigError("Population members must read in the same held-in neurons; build every member from the "
                              "same Dataset with lfads_nb.build_model.")
        self.config, self.population = members[0].config, len(members)
        self.weights = copy.deepcopy(members[0])
        for name, module in list(self.weights.named_modules()):
            for key in list(module._parameters):
                full = f"{name}.{key}" if name else key
                stacked = torch.stack([m.get_parameter(full).detach() for m in members])
                # frozen weights (a stitched model's read-ins) stay frozen
                module._parameters[key] = nn.Parameter(stacked, requires_grad=module._parameters[key].requires_grad)
            for key in list(module._buffers):
                full = f"{name}.{key}" if name else key
                module._buffers[key] = torch.stack([m.get_buffer(full) for m in members])
        # The unstacked template (not a submodule) whose methods vmap runs with each member's weights.
        object.__setattr__(self, "_template", copy.deepcopy(members[0]))

    def _each_member(self, fn: Callable, *args, in_dims: tuple):
        """``fn(member, *args)`` for every member at once; ``in_dims`` as ``vmap``'s, per argument."""
        template = self._template.to(self.weights.generator.weight_hh.device).train(self.training)
        state = {f"module.{k}": v for k, v in self.weights.named_parameters()}
        # The read-in is the data's, the same for every member: the template's own, not mapped
        # (a mapped index would turn every read-in into a per-member gather).
        state.update({f"module.{k}": v for k, v in self.weights.named_buffers() if not _shared_read_in(k)})
        call = _Call(template, fn)
        return vmap(lambda s, *a: functional_call(call, s, a), in_dims=(0, *in_dims))(state, *args)

    def member_state_dict(self, i: int) -> dict[str, Tensor]:
        """Member i's weights as an ordinary ``LFADS`` state dict (copies)."""
        return {k: v[i].detach().clone() for k, v in self.weights.state_dict().items()}

    def forward(self, encoder_input: Tensor, ext_input: Tensor | None = None, *,
                noise: Noise | None = None, dropout: Tensor | None = None) -> LFADSOutput:
        """``LFADS.forward`` of every member: encoder_input (P, B, T, E), ext_input shared.

        With ``noise`` (each field (P, ...)) the members sample their posteriors with it and, in
        train mode, drop out at rates ``dropout`` (P,); without, posterior means, as ``LFADS``
        with ``sample=False``. Returns an ``LFADSOutput`` whose every field has a leading P.
        """
        self._check_members(encoder_input.shape[0] if isinstance(encoder_input, Tensor) else None, dropout)
        like = self.weights.generator.weight_hh
        rates = dropout if dropout is not None else like.new_full((self.population,), self.config.dropout)
        return self._each_member(
            lambda m, x, ext, eps, rate: m(x, ext, sample=eps is not None, noise=eps, dropout=rate),
            encoder_input, ext_input, noise, rates, in_dims=(0, None, _mapped(noise), 0),
        )

    def loss(self, batch: Batch, weights: Mapping[str, Tensor], noise: Noise, dropout: Tensor):
        """``LFADS.loss`` of every member on a training batch whose masks have a leading P
        (``training.loop.training_batch`` with per-member CD rates): (P,) loss and parts."""
        sessions = isinstance(batch, Mapping)  # a StitchedLFADS's {session: Batch}
        self._check_members(next(iter(batch.values())).encoder_mask.shape[0] if sessions else batch.encoder_mask.shape[0],
                            dropout)
        dims = {k: _member_batch_dims(b) for k, b in batch.items()} if sessions else _member_batch_dims(batch)
        return self._each_member(lambda m, b, w, eps, rate: m.loss(b, w, noise=eps, dropout=rate),
                                 batch, dict(weights), noise, dropout, in_dims=(dims, 0, _mapped(noise), 0))

    def validation_sums(self, batch: Batch, session: str | None = None) -> Tensor:
        """``LFADS.validation_sums`` of every member on one shared validation batch: (P, 4);
        of one ``session`` of stitched members."""
        if session is None:
            return self._each_member(lambda m, b: m.validation_sums(b), batch, in_dims=(None,))
        return self._each_member(lambda m, b: m.for_session(session).validation_sums(b), batch, in_dims=(None,))

    def l2_penalties(self) -> dict[str, Tensor]:
        """``LFADS.l2_penalties`` of every member: each value (P,)."""
        return self._each_member(lambda m: m.l2_penalties(), in_dims=())

    def _check_members(self, leading: int | None, dropout: Tensor | None) -> None:
        P = self.population
        if leading != P:
            raise DataError(f"A population of {P} members needs inputs with a leading member axis of size {P}; "
                            f"got {leading}.")
        if dropout is not None and (not isinstance(dropout, Tensor) or tuple(dropout.shape) != (P,)):
            raise ConfigError(f"The members' dropout rates must be a tensor of shape ({P},).")


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

    ``members``: the P ``LFADS`` models to start from, sharing one architecture (build each with
    ``lfads_nb.build_model(ds, seed=...)`` so it starts from the data); ``train_config`` the
    shared settings (batch size, ramps, sample validation); ``hparams`` maps per-member names
    (``hyperparameters.PER_MEMBER``) to P values; a missing name takes its owner's value: that of
    ``train_config`` or of the members' ``LFADSConfig``. The rest of both configs is shared by the
    population. ``noise_seed`` seeds the generator of every step's random numbers.
    """

    def __init__(self, members: Sequence[LFADS], train_config: TrainConfig, hparams: Mapping[str, Sequence[float]], *,
                 noise_seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32):
        unknown = sorted(set(hparams) - set(PER_MEMBER))
        if unknown:
            raise ConfigError(
                f"{unknown} cannot differ between population members; per-member hyperparameters are {list(PER_MEMBER)}. "
                "Set the others in the TrainConfig / LFADSConfig shared by the population."
            )
        self.model = PopulationLFADS(members)
        P, model_config = self.model.population, self.model.config
        self.model_config, self.train_config = model_config, train_config
        self.device = torch.device(device)
        self.model.to(device=self.device, dtype=dtype)
        self.hps: dict[str, Tensor] = {}
        configs = {"train": train_config, "model": model_config}
        for name in PER_MEMBER:
            default = getattr(configs[HYPERPARAMETERS[name].owner], name)
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
                   noise: StepNoise | None = None) -> dict[str, Tensor]:
        """One optimiser step of every member on the trials ``idx``; returns (P,) losses and parts.

        Each member's batch gets its own coordinated dropout at its ``cd_rate`` and, when any
        member's ``shift_std`` is > 0, its own temporal shifts at its std; the loss is
        ``LFADS.loss`` with its KL and L2 weights and dropout rate. ``noise``: this step's random
        numbers (default: drawn from the population's generator).
        """
        P, dtype = self.size, self.hps["lr"].dtype
        shifting = bool((self.hps["shift_std"] > 0).any())
        sessions = isinstance(tensors, Mapping)  # stitched members: {session: _Tensors}, {session: trials}
        if noise is None and sessions:
            sizes = {name: (len(i), tensors[name].data.shape[-1]) for name, i in idx.items()}
            noise = draw_sessions_step_noise(self.model_config, P, sizes, next(iter(tensors.values())).data.shape[1],
                                             self.generator, dtype, self.device, shift=shifting)
        elif noise is None:
            noise = draw_step_noise(self.model_config, P, len(idx), tensors.data.shape[1], self.generator, dtype,
                                    self.device, shift=shifting)
        if shifting and noise.shift is None:
            raise ConfigError("Members have shift_std > 0 but this step's noise has no temporal-shift normals; "
                              "draw it with draw_step_noise(..., shift=True).")

        def batch_of(t: _Tensors, i: Tensor, cd: Tensor, normals: Tensor | None) -> Batch:
            shifts = None if not shifting else tuple(
                rounded_normal_shifts(normals, self.hps["shift_std"].view(P, 1, 1), self.train_config.shift_max))
            return training_batch(t, i, self.train_config.sv_fraction, self.hps["cd_rate"].view(P, 1, 1, 1), cd, shifts)

        if sessions:
            batch = {name: batch_of(tensors[name], i, noise.cd[name], noise.shift[name] if shifting else None)
                     for name, i in idx.items()}
        else:
            batch = batch_of(tensors, idx, noise.cd, noise.shift)
        weights = {name: self.hps[name] for name in LOSS_WEIGHTS}
        weights.update(kl_ramp=torch.full_like(self.hps["lr"], kl_ramp), l2_ramp=torch.full_like(self.hps["lr"], l2_ramp))
        loss, parts = self.model.loss(batch, weights, noise.model, self.hps["dropout"])
        self.optimizer.zero_grad()
        loss.sum().backward()  # members share no weights: the sum's gradient is each member's own
        parts["grad_norm"] = clip_grad_norms_(self.optimizer.params, self.hps["grad_clip"])
        self.optimizer.step(self.hps["lr"])
        return {"train_loss": loss.detach(), **{k: v.detach() for k, v in parts.items()}}

    @torch.no_grad()
    def validate(self, tensors: _Tensors, idx: Tensor, batch_size: int = 256) -> dict[str, Tensor]:
        """Per-member validation NLL per entry, (P,) each: ``valid_recon`` on the visible entries
        and, with sample validation, ``valid_sv_nll`` on the held-out ones (as ``training``).
        Stitched members: ``tensors`` and ``idx`` per session, the NLL over all sessions' entries."""
        sv = self.train_config.sv_fraction
        if not isinstance(tensors, Mapping):
            return validation_metrics(self.model, tensors, idx, sv, batch_size)
        self.model.eval()
        sums = sum(self.model.validation_sums(b, session=name)
                   for name in tensors for b in validation_batches(tensors[name], idx[name], sv, batch_size))
        self.model.train()
        return metrics_from_sums(sums, sv)

    @torch.no_grad()
    def copy_members(self, dst: Sequence[int], src: Sequence[int]) -> None:
        """Exploit: member dst[k] becomes a copy of member src[k]: weights, Adam state, hyperparameters."""
        dst = torch.as_tensor(list(dst), dtype=torch.long, device=self.device)
        src = torch.as_tensor(list(src), dtype=torch.long, device=self.device)
        for t in list(self.model.parameters()) + list(self.model.buffers()) + list(self.hps.values()):
            t[dst] = t[src]
        self.optimizer.copy_members(dst, src)

    def member_config(self, i: int) -> LFADSConfig:
        """Member i's architecture as an ordinary ``LFADSConfig``, with its own values of the
        per-member model hyperparameters (``dropout``)."""
        return dataclasses.replace(self.model_config, **by_owner(self.member_hparams(i), "model"))

    def member_hparams(self, i: int) -> dict[str, float]:
        return {k: float(v[i]) for k, v in self.hps.items()}

    def member_model(self, i: int) -> LFADS:
        """Member i as an ordinary ``LFADS`` (on the CPU, float32, eval mode), ready for ``infer``."""
        model = type(self.model._template)(self.member_config(i))
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


__all__ = ["Population", "PopulationAdam", "PopulationLFADS", "StepNoise", "clip_grad_norms_",
           "draw_sessions_step_noise", "draw_step_noise"]
