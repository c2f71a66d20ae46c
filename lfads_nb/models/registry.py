"""Model families: the protocol every model follows, and the registry that builds and loads them.

``Model`` is the protocol: all that ``train``, ``infer``, ``pbt`` and ``ray_pbt`` touch of a model, so
any model that follows it trains, resumes, infers and is tuned by the same code. A ``Family`` is
what the registry knows of one kind of model besides its class: how it sizes itself from the
data, the name its checkpoints carry, its tunable hyperparameters, the ``TrainConfig`` weights its
objective takes, how one training step's random numbers are drawn for P members at once, and about
how much memory a training step keeps. ``FAMILIES`` holds them:

=============  ====================  ======================================================
name           model                 sized from the data
=============  ====================  ======================================================
``lfads``      ``LFADS``             neurons, held-in neurons, external inputs
``ndt``        ``NDT``               neurons, held-in neurons, trial length
``stitched``   ``StitchedLFADS``     the sessions of a DataTree (one LFADS core, PCR read-ins)
=============  ====================  ======================================================

``build_model(data, model="lfads", **sizes)`` and ``load_model(path)`` go through it, so a new
family is one more entry here. A Dataset or a DataTree of sessions chooses between a family and its
stitched form (``Family.across_sessions``): ``build_model(tree)`` builds a ``StitchedLFADS``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import xarray as xr
from torch import Tensor

from ..checkpoint import load_checkpoint
from ..data.kinds import kind_of
from ..data.schema import heldin_mask, training_values
from ..data.sessions import sessions_of
from ..errors import CheckpointError, ConfigError, DataError
from .lfads import LFADS, LFADSConfig, draw_noise
from .multisession import StitchedConfig, StitchedLFADS, build_stitched
from .ndt import NDT, NDTConfig


class Model(Protocol):
    """What the training, inference and tuning code may use of a model.

    ``inputs`` is a ``lfads_nb.transforms.Batch``, or ``{session: Batch}`` for a family stitched
    across sessions (``Family.sessions``); ``weights`` maps the family's ``loss_weights`` and the
    ramps ``kl_ramp``, ``l2_ramp`` to numbers ((P,) tensors under a population's vmap); ``noise`` is
    what the family's ``draw_noise`` gives (None: drawn from torch's global generator); the
    per-member model hyperparameters of the family's table come as keywords (e.g. LFADS's
    ``dropout``), tensors under vmap. Shapes: B trials, T bins, N channels.
    """

    config: Any                                 # a dataclass: the model's architecture, as checkpoints store it
    output_dims: Mapping[str, tuple[str, ...]]  # infer's variables besides the observation mean, and their dims

    def loss(self, inputs, weights: Mapping, *, noise=None, **member_values) -> tuple[Tensor, dict[str, Tensor]]:
        """The training objective of one step (0-d) and its parts (``train_recon``, ...)."""

    def entry_nll(self, batch) -> Tensor:
        """(B, T, N) NLL of every entry of ``batch.target``, deterministic (posterior means, no masking draws)."""

    def infer_batch(self, batch, *, sample: bool) -> dict[str, Tensor]:
        """``mean`` (B, T, N), the observation mean per bin, and the variables of ``output_dims``."""

    def check_data(self, data) -> None:
        """Raise DataError unless the model was built for these data."""

    def check_training(self, train_config) -> None:
        """Warn about, or refuse, training settings this model is known to fail with."""


@dataclass(frozen=True)
class Tunable:
    """A hyperparameter a search may tune: a field of the ``TrainConfig`` (``owner`` "train") or of
    the family's config ("model"); ``per_member``: members of one population may hold different
    values (a (P,) tensor, so population-based training can tune it)."""

    owner: str
    per_member: bool
    description: str


# Every family's optimiser settings. sv_fraction is left out: it defines the sample-validation
# metric that models are compared by.
TRAINING_HYPERPARAMETERS = {
    "lr": Tunable("train", True, "Adam learning rate"),
    "lr_decay": Tunable("train", False, "factor on the learning rate at a validation plateau"),
    "lr_min": Tunable("train", False, "floor of the decayed learning rate"),
    "grad_clip": Tunable("train", True, "largest gradient norm; larger ones are scaled down to it"),
}
LFADS_HYPERPARAMETERS = {
    "kl_ic_scale": Tunable("train", True, "weight of the initial-condition KL divergence"),
    "kl_co_scale": Tunable("train", True, "weight of the inferred-input KL divergence"),
    "l2_gen_scale": Tunable("train", True, "weight of the generator's L2 penalty"),
    "l2_con_scale": Tunable("train", True, "weight of the controller's L2 penalty"),
    "cd_rate": Tunable("train", True, "coordinated dropout: fraction of entries hidden from the encoder"),
    "shift_std": Tunable("train", True, "temporal shift: std (bins) of each channel's random shift in training"),
    "dropout": Tunable("model", True, "dropout probability inside the model"),
    "cell_clip": Tunable("model", False, "bound on the GRU hidden states"),
    "ic_post_var_min": Tunable("model", False, "floor of the initial-condition posterior variance"),
    "ic_prior_var": Tunable("model", False, "initial-condition prior variance"),
    "co_prior_tau": Tunable("model", False, "autocorrelation time of the inferred-input prior (bins)"),
    "co_prior_var": Tunable("model", False, "inferred-input prior variance"),
}
NDT_HYPERPARAMETERS = {
    "mask_ratio": Tunable("model", True, "fraction of time bins masked per training trial"),
    "dropout": Tunable("model", False, "dropout probability inside the transformer layers"),
    "dropout_embedding": Tunable("model", False, "dropout probability after the embedding"),
    "dropout_rates": Tunable("model", False, "dropout probability before the readout"),
}


@dataclass(frozen=True)
class Family:
    """One kind of model (module docstring). ``sizes_from_data(ds)``: the config fields read off a
    Dataset; ``hyperparameters``: the family's own tunables (the training ones are added by
    ``tunables``); ``loss_weights``: the ``TrainConfig`` fields its objective weighs terms by
    (besides the ramps); ``draw_noise(config, B, T, *, members, generator, dtype, device)``: one
    step's random numbers for the model (a leading axis of ``members``); ``memory_floats(config)``:
    the floats a training step keeps per trial and time bin (activations for the backward pass);
    ``sessions``: built on a DataTree of sessions (``build(data, train_config, seed, sizes)`` then
    builds it); ``across_sessions``: the family that stitches this one over sessions."""

    name: str
    checkpoint_name: str
    model: type
    config: type
    sizes_from_data: Callable[[xr.Dataset], dict] | None
    hyperparameters: Mapping[str, Tunable]
    loss_weights: tuple[str, ...]
    draw_noise: Callable
    memory_floats: Callable[[Any], int]
    sessions: bool = False
    across_sessions: str | None = None
    build: Callable | None = None

    @property
    def tunables(self) -> dict[str, Tunable]:
        """Every hyperparameter a search may tune for this family: the training ones, then its own."""
        return {**TRAINING_HYPERPARAMETERS, **self.hyperparameters}

    @property
    def member_options(self) -> tuple[str, ...]:
        """The per-member model hyperparameters, passed to ``loss`` as keywords under a population's vmap."""
        return tuple(name for name, t in self.hyperparameters.items() if t.owner == "model" and t.per_member)


def _lfads_sizes(ds: xr.Dataset) -> dict[str, int]:
    return {"n_neurons": ds.sizes["neuron"], "encod_dim": int(heldin_mask(ds).sum()),
            "ext_input_dim": ds.sizes["ext_input_dim"] if "ext_input" in ds else 0}


def _ndt_sizes(ds: xr.Dataset) -> dict[str, int]:
    return {"n_neurons": ds.sizes["neuron"], "encod_dim": int(heldin_mask(ds).sum()), "n_bins": ds.sizes["time"]}


def _lfads_memory(c: LFADSConfig) -> int:
    """About 24 floats per recurrent unit (gates, states, their gradients), plus the data-sized
    masks and outputs."""
    units = 2 * c.ic_enc_dim + (2 * c.ci_enc_dim + c.con_dim if c.co_dim else 0) + c.gen_dim
    return 24 * units + 8 * (c.n_neurons + c.encod_dim + c.fac_dim + c.co_dim)


def _ndt_memory(c: NDTConfig) -> int:
    """Per layer about 16 floats per model dimension, 4 per feed-forward unit and the attention
    weights (3 per head and key bin), plus the data-sized masks and outputs."""
    return c.n_layers * (16 * c.d_model + 4 * c.ff_dim + 3 * c.n_heads * c.n_bins) + 8 * (c.n_neurons + c.encod_dim)


def _bin_mask_noise(config: NDTConfig, B: int, T: int, *, members: int | None = None, generator=None,
                    dtype=torch.float32, device=None) -> Tensor:
    """NDT's random numbers of a step: (B, T) uniforms (a leading ``members`` axis): bin t of trial b
    is masked where its uniform is below ``mask_ratio``."""
    lead = () if members is None else (members,)
    return torch.rand(lead + (B, T), generator=generator, dtype=dtype, device=device)


LFADS_LOSS_WEIGHTS = ("kl_ic_scale", "kl_co_scale", "l2_gen_scale", "l2_con_scale")

FAMILIES: dict[str, Family] = {
    "lfads": Family("lfads", "lfads", LFADS, LFADSConfig, _lfads_sizes, LFADS_HYPERPARAMETERS, LFADS_LOSS_WEIGHTS,
                    draw_noise, _lfads_memory, across_sessions="stitched"),
    "ndt": Family("ndt", "ndt", NDT, NDTConfig, _ndt_sizes, NDT_HYPERPARAMETERS, (), _bin_mask_noise, _ndt_memory),
    "stitched": Family("stitched", "stitchedlfads", StitchedLFADS, StitchedConfig, None, LFADS_HYPERPARAMETERS,
                       LFADS_LOSS_WEIGHTS, draw_noise, _lfads_memory, sessions=True, build=build_stitched),
}


def get_family(name: str) -> Family:
    """The family registered as ``name``; ConfigError listing the families for another name."""
    if name not in FAMILIES:
        raise ConfigError(f"Unknown model family {name!r}; use one of {sorted(FAMILIES)}.")
    return FAMILIES[name]


def family_of(model) -> Family:
    """The family of a model instance (its exact class)."""
    for family in FAMILIES.values():
        if type(model) is family.model:
            return family
    raise ConfigError(f"A {type(model).__name__} is not a registered model family ({sorted(FAMILIES)}); build models "
                      "with lfads_nb.build_model(ds, model=...).")


def check_model_data(model, data, stitched: bool) -> None:
    """Raise DataError unless ``model`` was built for ``data`` (``stitched``: a DataTree of sessions)."""
    if stitched and not any(type(model) is f.model and f.sessions for f in FAMILIES.values()):
        raise DataError(f"Several sessions (a DataTree) need a model built on them, a StitchedLFADS from "
                        f"lfads_nb.build_model(tree, ...); got a {type(model).__name__}. For one session, pass its "
                        "Dataset, tree['name'].to_dataset().")
    model.check_data(data)


def _build_one(family: Family, ds: xr.Dataset, train_config, seed: int | None, sizes: dict):
    """A model of ``family`` sized for one Dataset, its observation readout started at the data."""
    data_sizes = family.sizes_from_data(ds)
    for name in data_sizes:
        if name in sizes:
            raise ConfigError(f"{name} is read from the data; do not pass it to build_model.")
    if not heldin_mask(ds).any():
        raise DataError("Every neuron is marked held out (the 'heldout' coord), so the encoder would see "
                        "nothing. Mark only the neurons to predict as held out, e.g. about a quarter of them.")
    fields = {f.name for f in dataclasses.fields(family.config)}
    unknown = sorted(set(sizes) - fields)
    if unknown:
        raise ConfigError(f"{unknown} are not fields of {family.config.__name__}; its fields are {sorted(fields)}.")
    sizes.setdefault("observation", kind_of(ds).default_observation(ds))  # e.g. ZIG with s_min from the data
    config = family.config(**data_sizes, **sizes)
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        built = family.model(config, heldin=torch.as_tensor(heldin_mask(ds)))
    built.check_data(ds)
    sv = (train_config.sv_fraction, train_config.sv_seed) if train_config is not None else ()
    built.observation.init_from_data(torch.as_tensor(training_values(ds, *sv)))
    return built


def build_model(data, train_config=None, *, seed: int | None = None, model: str = "lfads", **sizes):
    """A model of the family ``model`` (``FAMILIES``: "lfads", "ndt", ...) sized for ``data``: ``sizes``
    are its config's fields (LFADSConfig: gen_dim, co_dim, generator, ...; NDTConfig: d_model, ...);
    the sizes the family reads off the data (neurons, ...) may not be given.

    ``seed``: the initial weights' seed (without touching torch's global generator); None draws
    them from the global generator, so ``torch.manual_seed`` before the call reproduces them.

    The observation readout's bias starts at the data (``ObservationModel.init_from_data`` on
    the 'train' trials, or all trials if none is labelled 'train'): for Poisson, each neuron's
    log mean count per bin. This removes an initial plateau where the model only learns the
    mean rates (on the chaotic RNN benchmark, valid rate R^2 0.51 instead of 0.26 at epoch 10).
    Pass the ``train_config`` you will train with when it uses sample validation: the entries it
    holds out are then left out of this start too, so they never influence the model.

    ``data`` may be a DataTree of sessions: the model is then the family's stitched form (for LFADS
    a ``StitchedLFADS``: one core, each session its own PCR read-in and observation model;
    ``lfads_nb.models.multisession.build_stitched``, which also takes ``train_read_in`` and
    ``smooth_bins``).
    """
    datasets = sessions_of(data)
    family = get_family(model)
    if None not in datasets and not family.sessions:
        if family.across_sessions is None:
            raise ConfigError(f"Several sessions are stitched around an LFADS core; model={model!r} takes one Dataset.")
        family = get_family(family.across_sessions)
    elif None in datasets and family.sessions:
        raise DataError(f"model={model!r} is built on several sessions, a DataTree (lfads_nb.data.make_sessions); "
                        "for one Dataset use model='lfads'.")
    if family.build is not None:
        return family.build(data, train_config, seed=seed, **sizes)
    return _build_one(family, datasets[None], train_config, seed, dict(sizes))


def load_model(path):
    """The model stored in a checkpoint file (e.g. ``run/best.pt``), in eval mode, of the family its
    ``model_family`` names (an LFADS where it names none)."""
    ckpt = load_checkpoint(path)
    name = ckpt.get("model_family", "lfads")
    family = next((f for f in FAMILIES.values() if f.checkpoint_name == name), None)
    if family is None:
        raise CheckpointError(f"{path} holds a model of family {name!r}, which this lfads_nb does not know "
                              f"({sorted(f.checkpoint_name for f in FAMILIES.values())}); load it with the lfads_nb "
                              "version that wrote it.")
    model = family.model(family.config(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


__all__ = ["FAMILIES", "Family", "Model", "Tunable", "build_model", "check_model_data", "family_of", "get_family",
           "load_model"]
