"""A population of models trained as one: the engine under population-based training.

P members of one family (``lfads_nb.models.registry``) share an architecture (its config) but each
has its own weights, its own hyperparameters and its own optimiser state. The population is not a
second model: it is ``torch.func.vmap`` of the one model over weights stacked along a leading
member axis (equinox's principle: write the model for one example, get the batch by a transform).
One forward and one backward pass train all members at once; LFADS's fused GRU kernels fold the
member axis into their own D axis (their vmap rules), so the recurrences of all members run as one.

The pieces, top to bottom:

1. ``PopulationModel``: P members (each built by ``build_model``, so with the same data-dependent
   start as a single model), their weights stacked under the model's own names, shape
   ``(P, *shape)``; ``each_member`` runs any of the model's methods for every member (vmapped),
   ``loss`` the protocol's.
2. ``StepNoise`` / ``draw_step_noise``: every random number of one training step drawn up front
   (the coordinated-dropout uniforms, the family's model noise per member, the temporal-shift
   normals), so a test can feed the same numbers to P separate models.
3. ``PopulationAdam`` and ``clip_grad_norms_``: ``torch.optim.Adam`` and
   ``torch.nn.utils.clip_grad_norm_`` with one learning rate, step count and clipping norm per
   member (the member's gradient norm is over all of its own weights).
4. ``Population``: the unit that ``lfads_nb.training.loop.run_epoch`` steps in population-based
   training, as it steps one model in ``train``: model, hyperparameter tensors, optimiser, noise
   generator; ``step``, ``validate``, ``copy_members`` (exploit), ``member_model`` (export one
   member as an ordinary model), ``state_dict`` / ``load_state_dict``.

Members never interact: no operation reduces over the member axis, so a member whose weights
became NaN does not affect the others (tested). Random operations inside a member's forward pass
(NDT's dropout layers) draw differently per member from torch's global generator
(``vmap(randomness='different')``); LFADS takes all of its randomness from the ``StepNoise``.
"""
from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from ..errors import ConfigError, DataError
from ..models.registry import Family, family_of
from ..training.feed import Feed
from ..training.loop import TrainConfig, validation_batch_size, validation_metrics, validation_nll
from ..transforms import Batch, rounded_normal_shifts
from .hyperparameters import by_owner, per_member


def _shared_read_in(name: str) -> bool:
    """The buffers the members share by construction: the held-in neurons of the data (one per
    session of a ``StitchedLFADS``)."""
    return name.endswith("read_in.index")


def _member_axis(value):
    """vmap in_dims mapping every tensor of ``value`` (a tensor, None, a NamedTuple or a Mapping of
    them) on its leading member axis."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        return 0
    if isinstance(value, Mapping):
        return {k: _member_axis(v) for k, v in value.items()}
    return type(value)(*(_member_axis(v) for v in value))


def _member_batch_dims(batch):
    """How a training batch (or one per session) maps onto members under vmap: the fields with a
    leading member axis (the masks of coordinated dropout; the data too under temporal shift) are
    mapped, the rest shared."""
    if isinstance(batch, Mapping):
        return {name: _member_batch_dims(b) for name, b in batch.items()}
    return Batch(*(0 if isinstance(v, Tensor) and v.dim() == 4 else None for v in batch))


def _member_sizes(batch) -> set[int]:
    """The leading (member) sizes of a training batch's per-member fields (its 4-d tensors), of every session."""
    batches = batch.values() if isinstance(batch, Mapping) else [batch]
    return {v.shape[0] for b in batches for v in b if isinstance(v, Tensor) and v.dim() == 4}


# --------------------------------------------------------------------------------------------
# Random numbers of one step
# --------------------------------------------------------------------------------------------


class StepNoise(NamedTuple):
    """Every random number of one training step of P members, ``B_s`` trials of ``N_s`` channels in
    each session ``s`` of the step (``None`` for a lone Dataset), T bins."""

    cd: dict | None  # {s: (P, B_s, T, N_s)} coordinated-dropout uniforms, or None: the family has no CD
    model: object  # the family's noise for all the step's trials, with a leading P (``Family.draw_noise``)
    shift: dict | None = None  # {s: (2, P, B_s, N_s)} temporal-shift normals (encoder, target), or None


def draw_step_noise(family: Family, config, P: int, sizes: Mapping, T: int, generator: torch.Generator,
                    dtype: torch.dtype = torch.float32, device=None, *, cd: bool = True,
                    shift: bool = False) -> StepNoise:
    """Draw a step's ``StepNoise`` from ``generator``, in this order: the CD uniforms session by
    session (with ``cd``), the model's noise for all the step's trials (in session order), then (with
    ``shift``) the temporal-shift normals session by session. ``sizes`` maps each session of the step
    to its (trials, channels) (``Feed.step_sizes``)."""
    uniforms = ({name: torch.rand((P, B, T, N), generator=generator, dtype=dtype, device=device)
                 for name, (B, N) in sizes.items()} if cd else None)
    model = family.draw_noise(config, sum(B for B, _ in sizes.values()), T, members=P, generator=generator,
                              dtype=dtype, device=device)
    normals = ({name: torch.randn((2, P, B, N), generator=generator, dtype=dtype, device=device)
                for name, (B, N) in sizes.items()} if shift else None)
    return StepNoise(uniforms, model, normals)


# --------------------------------------------------------------------------------------------
# The batched model
# --------------------------------------------------------------------------------------------


class _Call(nn.Module):
    """``fn(module, *args)`` as a module's forward, so ``torch.func.functional_call`` can run any
    method of a model with one member's weights."""

    def __init__(self, module: nn.Module, fn: Callable):
        super().__init__()
        self.module, self.fn = module, fn

    def forward(self, *args):
        return self.fn(self.module, *args)


class PopulationModel(nn.Module):
    """P models of one family run as one: their weights stacked, the model's own methods vmapped.

    ``weights`` is a member used as a container: each of its parameters and buffers holds all
    members, shape ``(P, *shape)``, under the model's own name, so member i's state dict is
    ``{name: value[i]}`` (``member_state_dict``). It is never called itself: every computation is
    ``torch.func.vmap`` of ``functional_call`` on an unstacked template member. Shapes are the
    model's with a leading P, except inputs the members share.
    """

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        members = list(members)
        if not members:
            raise ConfigError("A population needs at least one member.")
        self.family = family_of(members[0])
        if any(type(m) is not type(members[0]) for m in members):
            raise ConfigError("Population members must be models of one family; build them with lfads_nb.build_model.")
        configs = {repr(dataclasses.asdict(m.config)) for m in members}
        if len(configs) > 1:
            raise ConfigError(f"Population members must share one {type(members[0].config).__name__}; build every "
                              "member with the same sizes.")
        shared = [name for name, _ in members[0].named_buffers() if _shared_read_in(name)]
        if len({tuple(tuple(m.get_buffer(name).tolist()) for name in shared) for m in members}) > 1:
            raise ConfigError("Population members must read in the same held-in neurons; build every member from the "
                              "same Dataset with lfads_nb.build_model.")
        self.config, self.population = members[0].config, len(members)
        self.weights = copy.deepcopy(members[0])
        for name, module in list(self.weights.named_modules()):
            for key in [k for k, v in module._parameters.items() if v is not None]:  # e.g. attention's unused q_proj
                full = f"{name}.{key}" if name else key
                stacked = torch.stack([m.get_parameter(full).detach() for m in members])
                # frozen weights (a stitched model's read-ins) stay frozen
                module._parameters[key] = nn.Parameter(stacked, requires_grad=module._parameters[key].requires_grad)
            for key in [k for k, v in module._buffers.items() if v is not None]:
                full = f"{name}.{key}" if name else key
                module._buffers[key] = torch.stack([m.get_buffer(full) for m in members])
        # The unstacked template (not a submodule) whose methods vmap runs with each member's weights.
        object.__setattr__(self, "_template", copy.deepcopy(members[0]))

    def each_member(self, fn: Callable, *args, in_dims: tuple):
        """``fn(member, *args)`` for every member at once; ``in_dims`` as ``vmap``'s, per argument."""
        template = self._template.to(next(self.weights.parameters()).device).train(self.training)
        state = {f"module.{k}": v for k, v in self.weights.named_parameters()}
        # The read-in is the data's, the same for every member: the template's own, not mapped
        # (a mapped index would turn every read-in into a per-member gather).
        state.update({f"module.{k}": v for k, v in self.weights.named_buffers() if not _shared_read_in(k)})
        call = _Call(template, fn)
        with warnings.catch_warnings():  # torch has no batching rule for its fused transformer layer (NDT, eval)
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
            return vmap(lambda s, *a: functional_call(call, s, a), in_dims=(0, *in_dims),
                        randomness="different")(state, *args)

    def member_state_dict(self, i: int) -> dict[str, Tensor]:
        """Member i's weights as an ordinary state dict of its model (copies)."""
        return {k: v[i].detach().clone() for k, v in self.weights.state_dict().items()}

    def forward(self, *inputs: Tensor, **options):
        """The model's ``forward`` of every member: each input with a leading member axis P,
        ``options`` passed to every member as they are. Returns its output with a leading P."""
        for x in inputs:
            if not isinstance(x, Tensor) or x.dim() == 0 or x.shape[0] != self.population:
                raise DataError(f"A population of {self.population} members needs inputs with a leading member axis "
                                f"of size {self.population}; got {tuple(x.shape) if isinstance(x, Tensor) else x!r}.")
        return self.each_member(lambda m, *a: m(*a, **options), *inputs, in_dims=(0,) * len(inputs))

    def loss(self, inputs, weights: Mapping[str, Tensor], noise, member_values: Mapping[str, Tensor]):
        """The protocol's ``loss`` of every member on a training batch (or one per session) whose
        masks have a leading P (``Feed.training_batch`` with per-member rates): (P,) loss and parts.
        ``weights`` and ``member_values`` (the family's per-member model hyperparameters) map names
        to (P,) tensors; ``noise`` is the family's, with a leading P."""
        P = self.population
        if _member_sizes(inputs) - {P}:
            raise DataError(f"A population of {P} members needs per-member inputs with a leading member axis of size "
                            f"{P}; got {sorted(_member_sizes(inputs))}.")
        for name, value in member_values.items():
            if not isinstance(value, Tensor) or tuple(value.shape) != (P,):
                raise ConfigError(f"The members' {name} must be a tensor of shape ({P},).")
        return self.each_member(lambda m, b, w, eps, values: m.loss(b, w, noise=eps, **values),
                                inputs, dict(weights), noise, dict(member_values),
                                in_dims=(_member_batch_dims(inputs), 0, _member_axis(noise), 0))


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


def _members_validation_nll(model: PopulationModel, view, batch: Batch) -> tuple[Tensor, Tensor]:
    """``training.loop.validation_nll`` of every member: (P, B, T, N) entry NLLs and (P, 4) sums."""
    return model.each_member(lambda m, b: validation_nll(m, view, b), batch, in_dims=(None,))


# --------------------------------------------------------------------------------------------
# The training unit
# --------------------------------------------------------------------------------------------


class Population:
    """P members of one family trained together: what population-based training steps, copies and saves.

    ``members``: the P models to start from, sharing one architecture (build each with
    ``lfads_nb.build_model(ds, seed=...)`` so it starts from the data); ``train_config`` the
    shared settings (batch size, ramps, sample validation); ``hparams`` maps the family's
    per-member names (``hyperparameters.per_member``) to P values; a missing name takes its owner's
    value: that of ``train_config`` or of the members' config. The rest of both configs is shared by
    the population. ``noise_seed`` seeds the generator of every step's random numbers.
    ``validation_members``: the size of the whole population when this is a part of it (a Ray
    worker's), which sets the validation batch size (``training.loop.validation_batch_size``).
    ``artifact_free``: 'valid_recon' or 'valid_sv_nll' to add its artifact-free version to every
    validation (PBT's ``fitness_skips_artifacts``), or None.
    """

    def __init__(self, members: Sequence[nn.Module], train_config: TrainConfig, hparams: Mapping[str, Sequence[float]],
                 *, noise_seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 validation_members: int | None = None, artifact_free: str | None = None):
        self.model = PopulationModel(members)
        self.family = self.model.family
        names = per_member(self.family.name)
        unknown = sorted(set(hparams) - set(names))
        if unknown:
            raise ConfigError(
                f"{unknown} cannot differ between population members; per-member hyperparameters of "
                f"{self.family.name} are {list(names)}. Set the others in the TrainConfig / model config shared by "
                "the population."
            )
        P, model_config = self.model.population, self.model.config
        self.model_config, self.train_config = model_config, train_config
        self.device = torch.device(device)
        self.model.to(device=self.device, dtype=dtype)
        self.hps: dict[str, Tensor] = {}
        configs = {"train": train_config, "model": model_config}
        for name in names:
            default = getattr(configs[self.family.tunables[name].owner], name)
            values = hparams.get(name, [default] * P)
            if len(values) != P:
                raise ConfigError(f"hparams[{name!r}] has {len(values)} values for {P} members.")
            self.hps[name] = torch.tensor([float(v) for v in values], dtype=dtype, device=self.device)
        self.optimizer = PopulationAdam(list(self.model.parameters()))
        self.generator = torch.Generator(self.device).manual_seed(int(noise_seed))
        self.validation_batch_size = validation_batch_size(train_config.batch_size, validation_members or P)
        self.artifact_free = artifact_free

    @property
    def size(self) -> int:
        return self.model.population

    def step(self, feed: Feed, trials: Mapping, kl_ramp: float, l2_ramp: float,
             noise: StepNoise | None = None) -> dict[str, Tensor]:
        """One optimiser step of every member on the feed's ``trials`` (``Feed.step_trials``); returns
        (P,) losses and parts (and each member's gradient norm before clipping).

        Each member's batch gets its own coordinated dropout at its ``cd_rate`` and, when any
        member's ``shift_std`` is > 0, its own temporal shifts at its std; the loss is the model's
        with the member's loss weights and per-member model hyperparameters. ``noise``: this step's
        random numbers (default: drawn from the population's generator).
        """
        P, dtype = self.size, self.hps["lr"].dtype
        shifting = "shift_std" in self.hps and bool((self.hps["shift_std"] > 0).any())
        if noise is None:
            noise = draw_step_noise(self.family, self.model_config, P, feed.step_sizes(trials), feed.n_time,
                                    self.generator, dtype, self.device, cd="cd_rate" in self.hps, shift=shifting)
        if shifting and noise.shift is None:
            raise ConfigError("Members have shift_std > 0 but this step's noise has no temporal-shift normals; "
                              "draw it with draw_step_noise(..., shift=True).")
        shifts = None if not shifting else {
            name: tuple(rounded_normal_shifts(normals, self.hps["shift_std"].view(P, 1, 1), self.train_config.shift_max))
            for name, normals in noise.shift.items()}
        cd_rate = None if noise.cd is None else self.hps["cd_rate"].view(P, 1, 1, 1)
        batch = feed.training_batch(trials, cd_rate, noise.cd, shifts)
        weights = {name: self.hps[name] for name in self.family.loss_weights}
        weights.update(kl_ramp=torch.full_like(self.hps["lr"], kl_ramp), l2_ramp=torch.full_like(self.hps["lr"], l2_ramp))
        member_values = {name: self.hps[name] for name in self.family.member_options}
        loss, parts = self.model.loss(batch, weights, noise.model, member_values)
        self.optimizer.zero_grad()
        loss.sum().backward()  # members share no weights: the sum's gradient is each member's own
        parts["grad_norm"] = clip_grad_norms_(self.optimizer.params, self.hps["grad_clip"])
        self.optimizer.step(self.hps["lr"])
        return {"train_loss": loss.detach(), **{k: v.detach() for k, v in parts.items()}}

    def validate(self, feed: Feed, batch_size: int | None = None) -> dict[str, Tensor]:
        """Per-member validation NLL per entry on the feed's 'valid' trials, (P,) each, in one pass
        (``training.loop.validation_metrics`` of one model, vmapped over the members): ``valid_recon``
        on the entries the loss counts, with sample validation ``valid_sv_nll`` on the held-out ones,
        and with ``artifact_free`` its artifact-free version. ``batch_size``: trials per validation
        batch (default ``self.validation_batch_size``)."""
        return validation_metrics(self.model, feed, batch_size or self.validation_batch_size, self.artifact_free,
                                  batch_nll=_members_validation_nll)

    @torch.no_grad()
    def copy_members(self, dst: Sequence[int], src: Sequence[int]) -> None:
        """Exploit: member dst[k] becomes a copy of member src[k]: weights, Adam state, hyperparameters."""
        dst = torch.as_tensor(list(dst), dtype=torch.long, device=self.device)
        src = torch.as_tensor(list(src), dtype=torch.long, device=self.device)
        for t in list(self.model.parameters()) + list(self.model.buffers()) + list(self.hps.values()):
            t[dst] = t[src]
        self.optimizer.copy_members(dst, src)

    def member_config(self, i: int):
        """Member i's architecture as an ordinary config, with its own values of the per-member model
        hyperparameters (LFADS's ``dropout``, NDT's ``mask_ratio``)."""
        return dataclasses.replace(self.model_config, **by_owner(self.member_hparams(i), "model", self.family.name))

    def member_hparams(self, i: int) -> dict[str, float]:
        return {k: float(v[i]) for k, v in self.hps.items()}

    def member_model(self, i: int) -> nn.Module:
        """Member i as an ordinary model of its family (on the CPU, float32, eval mode), ready for ``infer``."""
        model = self.family.model(self.member_config(i))
        model.load_state_dict({k: v.float().cpu() for k, v in self.model.member_state_dict(i).items()})
        return model.eval()

    def state_dict(self) -> dict:
        """Everything that changes in training, as plain tensors (loads with weights_only=True), with
        torch's global random state (the draws inside a member's forward pass, e.g. NDT's dropout)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "hps": dict(self.hps),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    @torch.no_grad()
    def load_state_dict(self, state: Mapping) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for k, v in state["hps"].items():
            self.hps[k].copy_(v)
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])


__all__ = ["Population", "PopulationAdam", "PopulationModel", "StepNoise", "clip_grad_norms_", "draw_step_noise"]
