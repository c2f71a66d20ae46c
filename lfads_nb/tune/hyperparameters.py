"""The hyperparameters a search may tune: one table per model family, read by the search, the
population and PBT.

A family's table (``lfads_nb.models.registry``, ``Family.tunables``) holds the optimiser's settings
(``lr``, ``lr_decay``, ``lr_min``, ``grad_clip``) and the family's own: fields of the config that owns
each one (``owner`` "train": a ``TrainConfig`` field; "model": a field of the family's config, e.g.
``LFADSConfig.dropout``, ``NDTConfig.mask_ratio``), each saying whether the members of one population
may hold different values (``per_member``: a (P,) tensor in ``Population.hps``, so population-based
training can tune it). The others are shared by a population and tuned by random search only.
``HYPERPARAMETERS`` is LFADS's table.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from ..errors import ConfigError
from ..models.registry import FAMILIES, Tunable, get_family
from ..training.loop import TrainConfig

# The smallest config of each family, to check a tunable value without data.
_EXAMPLE_SIZES = {"lfads": {"n_neurons": 1}, "ndt": {"n_neurons": 1},
                  "stitched": {"n_neurons": 1, "encod_dim": 1, "sessions": {"session": [True]}}}


def tunables(model: str = "lfads") -> dict[str, Tunable]:
    """The table of the family ``model``: name -> ``Tunable``."""
    return get_family(model).tunables


HYPERPARAMETERS: dict[str, Tunable] = tunables("lfads")


def per_member(model: str = "lfads") -> tuple[str, ...]:
    """The hyperparameters of ``model`` that may differ between the members of one population."""
    return tuple(name for name, t in tunables(model).items() if t.per_member)


PER_MEMBER = per_member("lfads")


def owned_by(owner: str, model: str = "lfads") -> tuple[str, ...]:
    """The tunable fields of ``owner``'s config ("train" or "model") for the family ``model``."""
    return tuple(name for name, t in tunables(model).items() if t.owner == owner)


def by_owner(values: Mapping[str, float], owner: str, model: str = "lfads") -> dict[str, float]:
    """The entries of ``values`` (tunable names of ``model``) that are fields of ``owner``'s config, as floats."""
    table = tunables(model)
    return {name: float(v) for name, v in values.items() if table[name].owner == owner}


def check_value(name: str, value: float) -> None:
    """Raise the owning config's ConfigError if it rejects ``value`` for the tunable ``name``, in every
    family that tunes ``name``."""
    for family in FAMILIES.values():
        tunable = family.tunables.get(name)
        if tunable is None:
            continue
        if tunable.owner == "train":
            TrainConfig(**{name: value})
        else:
            family.config(**_EXAMPLE_SIZES[family.name], **{name: value})


def check_sizes(sizes: Mapping, model: str = "lfads") -> None:
    """Raise ConfigError for ``build_model`` keywords (``sizes``) the family ``model``'s config does not
    have or rejects, before any data are read (the sizes read off the data take example values)."""
    family = get_family(model)
    fields = {f.name for f in dataclasses.fields(family.config)}
    unknown = sorted(set(sizes) - fields)
    if unknown:
        raise ConfigError(f"model_sizes has {unknown}: not an {family.config.__name__} field; its fields are "
                          f"{sorted(fields)}.")
    family.config(**{**_EXAMPLE_SIZES[family.name], **sizes})


def check_tunable(names: Iterable[str], model: str = "lfads") -> None:
    """Raise ConfigError naming every one of ``names`` that the family ``model`` cannot tune, listing those it can."""
    table = tunables(model)
    unknown = [name for name in names if name not in table]
    if unknown:
        family = get_family(model)
        raise ConfigError(f"{', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not tunable for "
                          f"model={model!r}; choose a TrainConfig field {list(owned_by('train', model))} or a "
                          f"{family.config.__name__} field {list(owned_by('model', model))}.")


def check_known(name: str) -> None:
    """Raise ConfigError unless some family tunes ``name``."""
    if not any(name in family.tunables for family in FAMILIES.values()):
        known = sorted({n for family in FAMILIES.values() for n in family.tunables})
        raise ConfigError(f"{name!r} is not tunable; the tunable hyperparameters are {known} "
                          "(lfads_nb.tune.hyperparameters.tunables(model) lists a family's).")


__all__ = ["HYPERPARAMETERS", "PER_MEMBER", "Tunable", "by_owner", "check_known", "check_sizes", "check_tunable",
           "check_value",
           "owned_by", "per_member", "tunables"]
