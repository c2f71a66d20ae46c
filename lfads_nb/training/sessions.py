"""Training and inference on several sessions (a DataTree, ``lfads_nb.data.sessions``) with one
stitched model (``lfads_nb.models.multisession.StitchedLFADS``).

``build_model``, ``train`` and ``infer`` take a DataTree where they take a Dataset and come here.

How a step mixes the sessions (``SessionsFeed``): every epoch shuffles each session's 'train'
trials, and every step takes from each session a share of its trials proportional to its size
(``batch_size`` trials in all), so an epoch shows every training trial exactly once and every
step's gradient reaches the shared core from all the sessions at once. lfads-torch instead takes
``batch_size / n_sessions`` trials per session and cycles the smaller sessions; here a data-poor
session is not repeated within an epoch, so its own read-out is not fitted more often than its
few trials warrant, and the loss weighs every counted entry the same, whatever its session.
"""
from __future__ import annotations

import math

import torch
import xarray as xr

from ..data.kinds import kind_of
from ..data.schema import heldin_mask
from ..data.sessions import session_names, validate_sessions
from ..errors import ConfigError, DataError
from ..models.multisession import StitchedConfig, StitchedLFADS, pcr_read_in
from .loop import (TrainConfig, _SessionFeed, _training_step_batch, check_shift, infer, metrics_from_sums,
                   training_data, validation_batches)


def _check_stitched(model) -> None:
    if not isinstance(model, StitchedLFADS):
        raise DataError(f"Several sessions (a DataTree) need a model built on them, a StitchedLFADS from "
                        f"lfads_nb.build_model(tree, ...); got a {type(model).__name__}. For one session, pass its "
                        "Dataset, tree['name'].to_dataset().")


def build_stitched_model(tree: xr.DataTree, train_config: TrainConfig | None = None, *, seed: int | None = None,
                         train_read_in: bool = False, smooth_bins: float = 1.0, **sizes) -> StitchedLFADS:
    """A ``StitchedLFADS`` for the sessions of ``tree``: its read-ins PCR-initialised (``pcr_read_in``
    with ``smooth_bins``), frozen unless ``train_read_in``; each observation model started at its
    session's mean rates on the 'train' trials (as ``build_model``). ``sizes``: ``LFADSConfig``
    fields; ``encod_dim`` is the read-in width, by default (or None) the fewest held-in neurons of any
    session (a session's read-in has no more independent directions than it has neurons).
    """
    validate_sessions(tree)
    datasets = {name: tree[name].to_dataset() for name in session_names(tree)}
    for name in ("n_neurons", "ext_input_dim", "sessions", "train_read_in"):
        if name in sizes:
            raise ConfigError(f"{name} is read from the data (or is an argument); do not pass it in the model sizes.")
    for name, ds in datasets.items():
        if "ext_input" in ds:
            raise DataError(f"Session '{name}' has external inputs; a stitched model takes none. Drop them with "
                            "ds.drop_vars('ext_input').")
        if not heldin_mask(ds).any():
            raise DataError(f"Session '{name}': every neuron is marked held out, so its read-in would see nothing. "
                            "Mark only the neurons to predict as held out.")
    heldin = {name: heldin_mask(ds).tolist() for name, ds in datasets.items()}
    if sizes.get("encod_dim") is None:
        sizes["encod_dim"] = min(sum(flags) for flags in heldin.values())
    first = next(iter(datasets.values()))
    sizes.setdefault("observation", kind_of(first).default_observation(first))
    fit_on = {name: training_data(ds, train_config) for name, ds in datasets.items()}
    read_ins, explained = pcr_read_in(datasets, sizes["encod_dim"], smooth_bins)
    config = StitchedConfig(n_neurons=sum(len(flags) for flags in heldin.values()), sessions=heldin,
                            train_read_in=train_read_in, **sizes)
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        model = StitchedLFADS(config)
    for name, ends in model.sessions.items():
        ends.read_in.set_projection(*read_ins[name])
        ends.observation.init_from_data(torch.as_tensor(fit_on[name]))
    model.pcr_explained_variance = explained  # fraction of the PSTHs' variance in the read-in space
    return model


def mixed_step(orders: dict, step: int, steps: int) -> dict:
    """The trials of step ``step`` of ``steps``: from each session's shuffled trials ``orders[s]``
    (n_s of them) its share [step n_s / steps, (step + 1) n_s / steps); sessions whose share
    is empty this step are left out."""
    chosen = {}
    for name, order in orders.items():
        low, high = step * len(order) // steps, (step + 1) * len(order) // steps
        if high > low:
            chosen[name] = order[low:high]
    return chosen


class SessionsFeed:
    """``train``'s view of several sessions (module docstring: proportional mixed batches), with
    the interface of ``loop._SessionFeed``: ``step_batch`` gives ``{session: Batch}``."""

    def __init__(self, model, tree: xr.DataTree, config: TrainConfig):
        _check_stitched(model)
        validate_sessions(tree, require_train=True)
        if config.shift_std > 0:
            check_shift(config.shift_max, tree[session_names(tree)[0]].sizes["time"])
        model.check_data(tree)
        self.config = config
        self.parts = {name: _SessionFeed(model.for_session(name), tree[name].to_dataset(), config)
                      for name in session_names(tree)}
        self.steps_per_epoch = math.ceil(sum(len(p.train_idx) for p in self.parts.values()) / config.batch_size)
        self.n_time = max(p.n_time for p in self.parts.values())
        truths = {name: p.truth for name, p in self.parts.items() if p.truth}
        if len(truths) == len(self.parts):  # the entry-weighted mean over sessions' validation trials
            weights = {name: len(p.valid_idx) * p.tensors.data[0].numel() for name, p in self.parts.items()}
            total = sum(weights.values())
            self.truth = {"valid_truth_nll": sum(weights[n] * t["valid_truth_nll"] for n, t in truths.items()) / total}
        else:
            self.truth = {}
        self._first = next(iter(self.parts))

    def shuffle(self, generator: torch.Generator) -> None:
        for part in self.parts.values():
            part.shuffle(generator)

    def step_batch(self, step: int) -> dict:
        """This step's trials of every session (``mixed_step``) as training batches."""
        chosen = mixed_step({name: part.order for name, part in self.parts.items()}, step, self.steps_per_epoch)
        return {name: _training_step_batch(self.parts[name].tensors, idx, self.config) for name, idx in chosen.items()}

    @torch.no_grad()
    def validation(self, model) -> dict[str, float]:
        """Validation NLL per entry over every session's 'valid' trials together."""
        model.eval()
        sums = 0
        size = max(self.config.batch_size, 256)
        for name, part in self.parts.items():
            session = model.for_session(name)
            for batch in validation_batches(part.tensors, part.valid_idx, self.config.sv_fraction, size):
                sums = sums + session.validation_sums(batch)
        model.train()
        return {k: float(v) for k, v in metrics_from_sums(sums, self.config.sv_fraction).items()}

    def example(self, model) -> dict:
        """The dashboard's example: a validation trial of the first session, titled with both."""
        example = self.parts[self._first].example(model.for_session(self._first))
        return {**example, "trial": f"{example['trial']} of {self._first}"}


def infer_sessions(model, tree: xr.DataTree, **options) -> xr.DataTree:
    """``infer`` of each session with its own ends: a DataTree with one inference Dataset per
    session (same trials, time bins and neurons as that session), the tree's attributes at the root."""
    _check_stitched(model)
    validate_sessions(tree)
    model.check_data(tree)
    outputs = {name: infer(model.for_session(name), tree[name].to_dataset(), **options) for name in session_names(tree)}
    result = xr.DataTree.from_dict(outputs)
    result.attrs.update(tree.attrs)
    return result
