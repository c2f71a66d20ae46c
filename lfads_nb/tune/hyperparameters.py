"""The hyperparameters a search may tune: one table, read by the search, the population and PBT.

Each entry of ``HYPERPARAMETERS`` is a field of the config that owns it (``owner`` "train": a
``TrainConfig`` field; "model": an ``LFADSConfig`` field) and says whether the members of one
population may hold different values (``per_member``: a (P,) tensor in ``Population.hps``, so
population-based training can tune it). The others are shared by a population and tuned by
random search only. ``sv_fraction`` is left out: it defines the sample-validation metric that
models are compared by.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..errors import ConfigError
from ..models.lfads import LFADSConfig
from ..training.loop import TrainConfig


@dataclass(frozen=True)
class Tunable:
    owner: str        # "train" (a TrainConfig field) or "model" (an LFADSConfig field)
    per_member: bool  # may differ between the members of one population
    description: str


HYPERPARAMETERS: dict[str, Tunable] = {
    "lr": Tunable("train", True, "Adam learning rate"),
    "lr_decay": Tunable("train", False, "factor on the learning rate at a validation plateau"),
    "lr_min": Tunable("train", False, "floor of the decayed learning rate"),
    "grad_clip": Tunable("train", True, "largest gradient norm; larger ones are scaled down to it"),
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

PER_MEMBER = tuple(name for name, t in HYPERPARAMETERS.items() if t.per_member)


def owned_by(owner: str) -> tuple[str, ...]:
    """The tunable fields of ``owner``'s config ("train" or "model")."""
    return tuple(name for name, t in HYPERPARAMETERS.items() if t.owner == owner)


def by_owner(values: Mapping[str, float], owner: str) -> dict[str, float]:
    """The entries of ``values`` (tunable names) that are fields of ``owner``'s config, as floats."""
    return {name: float(v) for name, v in values.items() if HYPERPARAMETERS[name].owner == owner}


def check_value(name: str, value: float) -> None:
    """Raise the owner config's ConfigError if it rejects ``value`` for the tunable ``name``."""
    if HYPERPARAMETERS[name].owner == "train":
        TrainConfig(**{name: value})
    else:
        LFADSConfig(n_neurons=1, **{name: value})


def check_tunable(names: Iterable[str]) -> None:
    """Raise ConfigError naming every one of ``names`` that is not in the table, listing those that are."""
    unknown = [name for name in names if name not in HYPERPARAMETERS]
    if unknown:
        raise ConfigError(f"{', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not tunable; "
                          f"choose a TrainConfig field {list(owned_by('train'))} or an LFADSConfig field "
                          f"{list(owned_by('model'))}.")


__all__ = ["HYPERPARAMETERS", "PER_MEMBER", "Tunable", "by_owner", "check_tunable", "check_value", "owned_by"]
