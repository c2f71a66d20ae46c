"""Checkpoints: one file format and one resume rule for training, population-based training and Ray.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)`` (loading runs no code). ``save_checkpoint`` writes it
atomically (a temporary file, then a rename), so a run killed while saving leaves the previous
file whole, and stamps it with ``format``, the version of its layout: ``load_checkpoint``
refuses another version by name. Format 2 holds models with session ends (``session.read_in``,
``session.observation``); files written before the field existed are format 1 (the observation
model at ``observation``, no read-in) and are refused like any other version.

The files:

- a model checkpoint (``model_checkpoint``): ``model_config`` (the model's config as a dict),
  ``model`` (its state dict), the ``train_config`` it was trained with and ``model_family``, the
  family's checkpoint name (``lfads_nb.models.registry``; absent means LFADS); what
  ``lfads_nb.load_model`` reads. ``train`` writes ``best.pt`` and ``last.pt`` as model checkpoints
  with what resuming needs added (``training_checkpoint``); ``pbt`` exports its best member as
  ``best.pt``.
- ``pbt.pt`` (``population_checkpoint``): the run's ``settings`` (JSON), the ``population``'s
  state (on Ray, one per worker), the ``decisions`` generator and the ``run_state``.

Resuming follows one rule (``check_settings``): every setting must be the saved one, except
those the run names as free to change (the device; for ``train`` also ``max_epochs``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from .errors import CheckpointError

FORMAT = 2
MODEL_KEYS = ("model_config", "model")
POPULATION_KEYS = ("settings", "population", "decisions", "run_state")


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def save_checkpoint(checkpoint: Mapping, path) -> None:
    """Write ``checkpoint``, stamped with ``format``, to ``path`` atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({**checkpoint, "format": FORMAT}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, required: Iterable[str] = MODEL_KEYS, map_location="cpu") -> dict:
    """Read a checkpoint lfads_nb wrote (``torch.load(weights_only=True)``) holding the keys ``required``.

    Raises CheckpointError for a missing, unreadable or foreign file, or one of another format.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}; train with checkpoint_dir=... to write one.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for damaged files
        raise CheckpointError(
            f"{path} is not a readable lfads_nb checkpoint ({type(exc).__name__}: {exc}). "
            "It may be truncated; delete it and resume from another checkpoint or retrain."
        ) from None
    missing = [key for key in required if key not in ckpt] if isinstance(ckpt, dict) else list(required)
    if missing:
        raise CheckpointError(
            f"{path} is not an lfads_nb checkpoint of this kind (no {', '.join(missing)}). Pass a file lfads_nb "
            "wrote (best.pt or last.pt from train, best.pt or pbt.pt from pbt), or start afresh (resume=False or a "
            "new checkpoint_dir)."
        )
    version = ckpt.get("format", 1)  # no field: written before it, format 1
    if version != FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {version!r}, but this lfads_nb reads format {FORMAT}. Load it with the "
            "lfads_nb version that wrote it, or start afresh (resume=False or a new checkpoint_dir)."
        )
    return ckpt


def check_settings(path, saved: Mapping[str, Mapping], now: Mapping[str, Mapping],
                   may_change: Iterable[str] = ()) -> None:
    """Raise CheckpointError, naming them, if settings of this run differ from those saved in ``path``.

    ``saved`` and ``now`` map a group ("train_config", "model_config", ...) to its fields; values
    compare as read back from JSON (a tuple equals a list, 1 equals 1.0), since ``pbt.pt`` keeps its
    settings as JSON. ``may_change``: "group.field" names free to differ.
    """
    may_change = tuple(may_change)
    changed = []
    for group, fields in now.items():
        before, after = _plain(saved.get(group) or {}), _plain(fields)
        changed += [f"{group}.{k}" for k in sorted(set(before) | set(after))
                    if f"{group}.{k}" not in may_change and before.get(k) != after.get(k)]
    if changed:
        free = f"only {', '.join(may_change)} may change" if may_change else "none may change"
        raise CheckpointError(
            f"{path} belongs to a run with different settings ({', '.join(changed)}); resume with the same settings "
            f"({free}), or pass resume=False (or a new checkpoint_dir) to start afresh."
        )


def _plain(value):
    return json.loads(json.dumps(value))


# ---------------------------------------------------------------------------------------------
# What a run keeps
# ---------------------------------------------------------------------------------------------

class RunState:
    """Where a run is: plain attributes (numbers, strings, lists, dicts, tensors) that a
    checkpoint holds as ``run_state``; a resumed run restores them over a fresh state.
    Subclasses set their attributes in ``__init__``."""

    def as_dict(self) -> dict:
        return dict(vars(self))

    def restore(self, values: Mapping) -> RunState:
        vars(self).update(values)
        return self


def ema(previous: float | None, value: float) -> float:
    """The validation loss smoothed over epochs: 0.3 ``previous`` + 0.7 ``value``; ``value`` itself
    where there is no previous (None or NaN: the first epoch, or a member whose loss was NaN)."""
    if previous is None or math.isnan(previous):
        return float(value)
    return float(0.3 * previous + 0.7 * value)


# ---------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------

def model_checkpoint(model_config: Mapping, weights: Mapping[str, torch.Tensor], train_config: Mapping,
                     **extra) -> dict:
    """An ordinary single-model checkpoint, what ``lfads_nb.load_model`` reads: the configs as dicts,
    the weights (an ``LFADS`` state dict) and ``extra`` (what a run needs to resume it, or where the
    model came from)."""
    return {"model_config": model_config, "train_config": train_config, "model": weights, **extra}


def training_checkpoint(model, family: str, optimizer, shuffle: torch.Generator, state: RunState, config,
                        weights=None) -> dict:
    """``train``'s ``last.pt`` / ``best.pt``: a model checkpoint of ``weights`` (default: the model's
    own) of the family named ``family`` (its checkpoint name, ``lfads_nb.models.registry``), plus the
    optimizer, the run state and every random state, so a resumed run repeats the uninterrupted one."""
    return model_checkpoint(
        dataclasses.asdict(model.config), weights if weights is not None else model.state_dict(),
        dataclasses.asdict(config),
        optimizer=optimizer.state_dict(),
        run_state=state.as_dict(),
        torch_rng=torch.get_rng_state(),
        cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        shuffle_rng=shuffle.get_state(),
        model_family=family,
    )


def restore_training(path, state: RunState, model, optimizer, shuffle: torch.Generator, config) -> RunState:
    """Resume ``train`` from ``path``: the weights, optimizer and random states into the objects
    given, the run state into ``state`` (returned). Only ``max_epochs`` and ``device`` may change."""
    ckpt = load_checkpoint(path)
    now = {"model_config": dataclasses.asdict(model.config), "train_config": dataclasses.asdict(config)}
    check_settings(path, ckpt, now, may_change=("train_config.max_epochs", "train_config.device"))
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["torch_rng"])
    if ckpt["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
    shuffle.set_state(ckpt["shuffle_rng"])
    return state.restore(ckpt["run_state"])


def population_checkpoint(settings: Mapping, population, decisions: torch.Generator, state: RunState) -> dict:
    """``pbt.pt``: ``settings`` ({group: {field: value}}, as JSON), the population (weights, Adam
    state, hyperparameters, noise generator), the ``decisions`` generator and the run state."""
    return {"settings": json.dumps(settings), "population": population.state_dict(),
            "decisions": decisions.get_state(), "run_state": state.as_dict()}


def restore_population(path, state: RunState, settings: Mapping, population, decisions: torch.Generator) -> RunState:
    """Resume ``pbt`` from ``path``: the population and ``decisions`` generator in place, the run
    state into ``state`` (returned). Only the device may change."""
    ckpt = load_checkpoint(path, POPULATION_KEYS)
    check_settings(path, json.loads(ckpt["settings"]), settings, may_change=("train_config.device",))
    population.load_state_dict(ckpt["population"])
    decisions.set_state(ckpt["decisions"])
    return state.restore(ckpt["run_state"])


__all__ = ["FORMAT", "RunState", "check_settings", "ema", "load_checkpoint", "model_checkpoint",
           "population_checkpoint", "restore_population", "restore_training", "save_checkpoint", "training_checkpoint"]
