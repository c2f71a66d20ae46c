"""Population-based training (AutoLFADS; Keshtkaran et al. 2022) of a whole LFADS population on one device.

The pieces, in the order a run uses them:

1. ``PBTConfig``: population size, generation length, burn-in, exploit rule, stopping rule.
   The search space (which hyperparameters, their ranges, initial values and explore widths)
   is a :class:`lfads_nb.tune.search.SearchSpace`, ``DEFAULT_SPACE`` by default (reference
   section 5); its names must be per-member hyperparameters (``hyperparameters.PER_MEMBER``).
2. ``pbt(ds, ...)``: trains a :class:`lfads_nb.tune.population.Population` (all members in one
   batched model) synchronously: a burn-in (generation 0, covering the KL / L2 ramps), then
   generations of ``generation_epochs``. At the end of each generation every member's fitness
   is its smoothed validation NLL (smth = 0.3 prev + 0.7 current, per epoch; with
   ``fitness_skips_artifacts`` only over the bins farther than 2 bins from any entry that
   ``lfads_nb.artifacts.detect_artifacts`` flags, less the largest 1 % of entry NLLs (the
   artifacts it missed), while the encoder still reads them as recorded: reproducing an artifact earns
   nothing, and spreading it to other bins or channels costs); members with NaN
   or infinite fitness are always replaced; the others are exploited by binary tournament
   (random pairs, the loser copies the winner) or truncation (the bottom fraction copies the
   top fraction), copying weights, Adam state and hyperparameters together (``exploit='none'``:
   nobody copies, the same population as a random search at the same budget, for comparisons);
   every member that copied then explores: each hyperparameter is multiplied by 1 +- U[0.002 w, w] (a step in log
   space), redrawn until inside its bounds. The run stops when the best fitness improved by
   less than ``stop_improvement`` (relative) over ``stop_patience`` generations, or after
   ``max_generations``.
3. Checkpoints: at the end of every generation ``pbt.pt`` (the whole population, optimiser,
   hyperparameters, RNG states, history; atomic, loads with ``weights_only=True``) and, when
   the best member improves, ``best.pt``, an ordinary model checkpoint (``lfads_nb.training.checkpoint``),
   so ``lfads_nb.load_model(dir / 'best.pt')`` returns it as an ordinary ``LFADS``. A killed run
   resumes from ``pbt.pt`` and loses at most the generation it was in; the resumed run is
   identical to an uninterrupted one.
4. ``PBTResult``: the best member as an ``LFADS`` (for ``lfads_nb.infer``), its
   hyperparameters, and the history as an xarray Dataset with dims (generation, member).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from ..artifacts import ARTIFACT_TRIM, artifact_free_nll, near_artifacts
from ..data.schema import validate
from ..errors import ConfigError, TrainingDiverged
from ..data.sessions import session_names, validate_sessions
from ..models.lfads import LFADS, LFADSConfig
from ..models.multisession import StitchedConfig, StitchedLFADS
from ..training.checkpoint import (RunState, ema, model_checkpoint, population_checkpoint, restore_population,
                                   save_checkpoint)
from ..training.loop import (TrainConfig, _ramp, _to_tensors, build_model, check_device, check_shift,
                             train_valid_indices, validation_batches)
from .hyperparameters import HYPERPARAMETERS, PER_MEMBER, by_owner
from ..training.sessions import mixed_step
from .population import Population
from .search import DEFAULT_SPACE, SearchSpace


PBT_NEEDS_VALIDATION = "PBT judges members by their validation loss"


@dataclass
class PBTConfig:
    """How the population evolves. Epoch counts in epochs; ``stop_improvement`` a fraction."""

    population: int = 20
    generation_epochs: int = 25
    burn_in_epochs: int | None = None      # None: the longer of the KL and L2 ramps
    max_generations: int = 50              # generations after the burn-in
    exploit: str = "tournament"            # or "truncation", or "none": members never copy nor explore (the
                                           # same population as a random search at the same budget, to compare)
    truncation_fraction: float = 0.2       # truncation: bottom fraction copies top fraction
    stop_improvement: float = 5e-4         # stop when the best fitness improves by less than 0.05 % ...
    stop_patience: int = 4                 # ... over this many generations
    metric: str = "valid_recon"            # or "valid_sv_nll" (needs TrainConfig.sv_fraction > 0)
    fitness_skips_artifacts: bool = False  # EMG: the fitness skips bins near what detect_artifacts flags
    seed: int = 0

    def __post_init__(self):
        for name in ("population", "generation_epochs", "max_generations", "stop_patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"PBTConfig.{name} must be a positive integer, got {value!r}.")
        if self.population < 2:
            raise ConfigError("PBTConfig.population must be at least 2 (exploitation needs two members).")
        if self.burn_in_epochs is not None and (not isinstance(self.burn_in_epochs, int) or self.burn_in_epochs < 1):
            raise ConfigError(f"PBTConfig.burn_in_epochs must be a positive integer or None, got {self.burn_in_epochs!r}.")
        if self.exploit not in ("tournament", "truncation", "none"):
            raise ConfigError(f"PBTConfig.exploit must be 'tournament', 'truncation' or 'none', got {self.exploit!r}.")
        if not 0 < self.truncation_fraction <= 0.5:
            raise ConfigError(f"PBTConfig.truncation_fraction must be in (0, 0.5], got {self.truncation_fraction!r}.")
        if not self.stop_improvement >= 0:
            raise ConfigError(f"PBTConfig.stop_improvement must be >= 0, got {self.stop_improvement!r}.")
        if self.metric not in ("valid_recon", "valid_sv_nll"):
            raise ConfigError(f"PBTConfig.metric must be 'valid_recon' or 'valid_sv_nll', got {self.metric!r}.")


# ---------------------------------------------------------------------------------------------
# Exploit and explore (pure functions of the fitness, the hyperparameters and a generator)
# ---------------------------------------------------------------------------------------------

def exploit(fitness: np.ndarray, rule: str, generator: torch.Generator, truncation_fraction: float = 0.2) -> np.ndarray:
    """Who copies whom: ``parent[i]`` is the member i copies (i itself if it keeps its weights).

    Lower fitness is better. Non-finite fitness (a diverged member) always loses: it copies a
    random finite member if no rule already replaced it. Rule 'none': nobody copies, not even a
    diverged member (a random search keeps its dead points).
    """
    P = len(fitness)
    parent = np.arange(P)
    finite = np.isfinite(fitness)
    if not finite.any():
        raise TrainingDiverged("Every member of the population diverged (NaN or infinite validation loss); "
                               "lower the learning-rate range or raise the KL/L2 ramps.")
    if rule == "none":
        return parent
    score = np.where(finite, fitness, np.inf)
    if rule == "tournament":
        order = torch.randperm(P, generator=generator).numpy()
        for a, b in zip(order[0::2], order[1::2]):
            winner, loser = (a, b) if score[a] <= score[b] else (b, a)
            if score[loser] > score[winner]:
                parent[loser] = winner
    else:
        k = max(1, int(round(truncation_fraction * P)))
        ranked = np.argsort(score, kind="stable")
        top, bottom = ranked[:k], ranked[-k:]
        picks = torch.randint(k, (k,), generator=generator).numpy()
        for loser, pick in zip(bottom, picks):
            if score[loser] > score[top[pick]]:
                parent[loser] = top[pick]
    good = np.flatnonzero(finite)
    for i in np.flatnonzero(~finite):
        if parent[i] == i:
            parent[i] = good[int(torch.randint(len(good), (1,), generator=generator))]
    return parent


def explore(value: float, low: float, high: float, width: float, generator: torch.Generator) -> float:
    """value * (1 +- U[0.002 width, width]) (a step in log space), redrawn until in [low, high].

    After 100 draws outside the bounds (value pinned at a bound) the value is clipped.
    """
    for _ in range(100):
        u = torch.rand(2, generator=generator, dtype=torch.float64)
        factor = 1.0 + (1.0 if u[0] < 0.5 else -1.0) * (0.002 * width + (width - 0.002 * width) * float(u[1]))
        new = value * factor
        if low <= new <= high:
            return new
    return float(min(max(value, low), high))


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

@dataclass
class PBTResult:
    model: LFADS             # the best member (best fitness at any generation end), eval mode, CPU float32
    hparams: dict            # its hyperparameters
    history: xr.Dataset      # dims (generation, member); see ``pbt``
    best_generation: int
    stop_reason: str         # 'plateau' or 'max_generations'


class _RunState(RunState):
    """What a checkpoint holds besides the population: where the run is and what happened."""

    def __init__(self, P: int):
        self.generation = 0
        self.epoch = 0
        self.smoothed = [math.nan] * P
        self.parent = list(range(P))          # whom each member copied at the start of this generation
        self.rows: list[dict] = []            # one per finished generation, values per member
        self.best_fitness = math.inf
        self.best_generation = -1
        self.best_member: dict | None = None  # {"state": ..., "hparams": ..., "config": ...}
        self.stop_reason = ""

    def as_dict(self) -> dict:
        """With the rows' arrays as tensors: ``weights_only`` loading reads no numpy arrays."""
        return {**vars(self), "rows": [{k: torch.as_tensor(np.asarray(v)) for k, v in r.items()} for r in self.rows]}

    def restore(self, values) -> _RunState:
        rows = [{k: (v.item() if v.dim() == 0 else v.numpy()) for k, v in r.items()} for r in values["rows"]]
        return super().restore({**values, "rows": rows})


def _space_for_population(space: SearchSpace) -> SearchSpace:
    if not isinstance(space, SearchSpace):
        raise ConfigError(f"space must be a SearchSpace, got {type(space).__name__}; e.g. lfads_nb.search.DEFAULT_SPACE.")
    bad = [name for name in space if not HYPERPARAMETERS[name].per_member]
    if bad:
        raise ConfigError(
            f"{bad} cannot differ between members of one population; PBT can tune {list(PER_MEMBER)}. "
            "Remove them from the space (space.without(...)) and set them in train_config / model_sizes."
        )
    return space


def _initial_hparams(space: SearchSpace, P: int, seed: int) -> dict[str, list[float]]:
    """``init`` for every member where the space gives one, else P draws from the range."""
    rng = np.random.default_rng(seed)
    return {name: [hp.init if hp.init is not None else hp.sample(rng) for _ in range(P)] for name, hp in space.items()}


def _member_seed(seed: int, i: int) -> int:
    return int(np.random.SeedSequence([seed, i]).generate_state(1)[0] >> 1)


def build_members(ds: xr.Dataset, train_config: TrainConfig, model_sizes: dict, seeds) -> list[LFADS]:
    """One ``build_model`` per seed: members start from the data exactly as a single model does."""
    return [build_model(ds, train_config, seed=s, **model_sizes) for s in seeds]


def check_population_fits(model_config: LFADSConfig, P: int, batch_size: int, n_bins: int, device: str,
                          available_bytes: int | None = None) -> None:
    """Raise ConfigError if P members will not fit in the device's memory, saying how many will.

    The per-member need is estimated from the sizes: weights x 4 (weights, gradients, two Adam
    moments) plus the activations a training step keeps for the backward pass (about 24 floats
    per recurrent unit, trial and bin, plus the data-sized masks and outputs). Where the free
    memory cannot be known (a CPU with no psutil, no /proc/meminfo and no free page count from
    ``os.sysconf``, as on macOS or Windows without psutil) this checks nothing.
    """
    c = model_config
    n_weights = sum(p.numel() for p in LFADS(model_config).parameters())
    units = 2 * c.ic_enc_dim + (2 * c.ci_enc_dim + c.con_dim if c.co_dim else 0) + c.gen_dim
    per_bin = 24 * units + 8 * (c.n_neurons + c.encod_dim + c.fac_dim + c.co_dim)
    bytes_per_float = 4
    need = bytes_per_float * (4 * n_weights + batch_size * n_bins * per_bin)
    if available_bytes is None:
        available_bytes = _available_bytes(device)
        if available_bytes is None:
            return
    fits = int(available_bytes * 0.8 // need)
    if P > fits:
        raise ConfigError(
            f"A population of {P} LFADS members needs about {P * need / 2**30:.1f} GiB on {device}, but about "
            f"{available_bytes / 2**30:.1f} GiB is free: at most {fits} members fit at batch_size {batch_size}. "
            "Lower PBTConfig.population or TrainConfig.batch_size, or use a larger device."
        )


_MEMINFO = "/proc/meminfo"  # a name, so tests can take it away


def _available_bytes(device: str) -> int | None:
    """Free memory on ``device`` in bytes, or None where the platform does not say."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:  # optional, not a dependency: the same figure on every platform
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.virtual_memory().available)
    try:  # Linux: MemAvailable counts reclaimable page cache, which sysconf's free pages do not
        with open(_MEMINFO) as f:
            info = {line.split(":")[0]: line.split()[1] for line in f}
        return int(info["MemAvailable"]) * 1024
    except (OSError, KeyError):
        pass
    try:  # other POSIX systems; Windows has no os.sysconf, macOS no SC_AVPHYS_PAGES
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def pbt(
    ds: xr.Dataset,
    *,
    space: SearchSpace = DEFAULT_SPACE,
    pbt_config: PBTConfig | None = None,
    train_config: TrainConfig | None = None,
    model_sizes: dict | None = None,
    checkpoint_dir=None,
    resume: bool = True,
    progress=None,
    live: bool | None = None,
) -> PBTResult:
    """Population-based training of LFADS on the 'train' trials of ``ds``, judged on its 'valid' trials.

    ``ds`` may be a DataTree of sessions: the members are then stitched models
    (``build_model(tree)``), each step mixes the sessions as ``train`` does, and the fitness is
    the validation NLL over all sessions' entries.

    ``train_config`` gives the shared settings (batch size, ramps, sample validation, device,
    and the value of any per-member hyperparameter not in ``space``); its ``max_epochs``,
    ``lr_decay`` schedule and early stopping are not used (PBT explores lr instead).
    ``model_sizes``: ``build_model`` keywords (``dropout`` is a member hyperparameter if in
    ``space``). ``checkpoint_dir``: where ``pbt.pt`` and ``best.pt`` go; with ``resume`` a run
    continues from ``pbt.pt``. ``progress``: an object with ``epoch(generation, epoch, metrics)``
    and ``generation(history)`` methods, called after every epoch and generation, and optionally
    ``stop_requested`` (polled after every training step) and ``finish(history, message)``
    (see :class:`lfads_nb.dashboard.PBTProgress`); by default the live PBT dashboard in
    JupyterLab and one printed line per generation elsewhere (``live`` forces either). A stop
    request ends the current generation early: it is recorded, the best member kept and
    ``pbt.pt`` saved as at any generation's end; ``stop_reason`` is then 'stop_button', and a
    later call with ``resume`` continues with the next generation.

    History (``PBTResult.history``, dims generation x member, generation 0 = burn-in): each
    hyperparameter during the generation, ``fitness`` (smoothed validation NLL at its end),
    ``valid_recon`` / ``valid_sv_nll`` / ``train_loss`` (its last epoch), ``parent`` (the member
    whose weights it started the generation from; itself if it kept its own) and ``end_epoch``.
    """
    pc = pbt_config or PBTConfig()
    tc = train_config or TrainConfig()
    check_device(tc.device)
    space = _space_for_population(space)
    model_sizes = dict(model_sizes or {})
    sessions = isinstance(ds, xr.DataTree)  # several sessions: stitched members, mixed steps
    datasets = {name: ds[name].to_dataset() for name in session_names(validate_sessions(ds, require_train=True))} \
        if sessions else {None: validate(ds, require_train=True)}
    n_time = next(iter(datasets.values())).sizes["time"]
    if tc.shift_std > 0 or "shift_std" in space:
        check_shift(tc.shift_max, n_time)
    if pc.metric == "valid_sv_nll" and tc.sv_fraction == 0:
        raise ConfigError("PBTConfig.metric='valid_sv_nll' needs sample validation: set TrainConfig.sv_fraction > 0.")
    indices = {name: train_valid_indices(d, PBT_NEEDS_VALIDATION) for name, d in datasets.items()}
    train_idx, valid_idx = ({n: i[0] for n, i in indices.items()}, {n: i[1] for n, i in indices.items()}) \
        if sessions else indices[None]
    P = pc.population
    members = build_members(ds, tc, model_sizes, [_member_seed(pc.seed, i) for i in range(P)])
    model_config = members[0].config
    check_population_fits(model_config, P, tc.batch_size, n_time, tc.device)
    hparams = _initial_hparams(space, P, pc.seed)
    population = Population(members, tc, hparams, noise_seed=pc.seed, device=tc.device)
    if sessions and pc.fitness_skips_artifacts:
        raise ConfigError("PBTConfig.fitness_skips_artifacts works on one recording: run PBT on each session, "
                          "or set fitness_skips_artifacts=False for stitched sessions.")
    tensors = {n: _to_tensors(d, tc) for n, d in datasets.items()} if sessions else _to_tensors(ds, tc)
    flags = torch.as_tensor(near_artifacts(ds).values, device=tc.device) if pc.fitness_skips_artifacts else None
    decisions = torch.Generator().manual_seed(pc.seed)  # batch order, exploit pairs, explore draws
    state = _RunState(P)
    settings = {"pbt_config": dataclasses.asdict(pc), "train_config": dataclasses.asdict(tc),
                "model_config": dataclasses.asdict(model_config),
                "space": {n: dataclasses.asdict(hp) for n, hp in space.items()}}
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if resume and (ckpt_dir / "pbt.pt").exists():
            state = restore_population(ckpt_dir / "pbt.pt", state, settings, population, decisions)
            if state.stop_reason == "stop_button":  # stopped by hand: go on with the next generation
                state.stop_reason = ""
    if progress is None:
        from ..dashboard import make_pbt_progress

        progress = make_pbt_progress(live)
    burn_in = pc.burn_in_epochs or max(tc.kl_ramp_epochs, tc.l2_ramp_epochs, 1)

    while not state.stop_reason:
        length = burn_in if state.generation == 0 else pc.generation_epochs
        t0 = time.perf_counter()
        stopped = False
        for _ in range(length):
            metrics, stopped = train_epoch(population, tensors, train_idx, valid_idx, tc, state.epoch, decisions,
                                           lambda: bool(getattr(progress, "stop_requested", False)))
            if flags is not None:
                metrics[pc.metric + "_artifact_free"] = _artifact_free_nll(population, tensors, valid_idx, flags, tc,
                                                                          pc.metric)
            current = metrics[pc.metric + ("_artifact_free" if flags is not None else "")]
            state.smoothed = [ema(s, c) for s, c in zip(state.smoothed, current)]
            state.epoch += 1
            progress.epoch(state.generation, state.epoch, {**metrics, "fitness": np.array(state.smoothed)})
            if stopped:
                break
        _end_generation(state, population, space, pc, decisions, metrics, ckpt_dir, settings, time.perf_counter() - t0,
                        stopped)
        progress.generation(_history(state, space, settings))

    history = _history(state, space, settings)
    if hasattr(progress, "finish"):
        progress.finish(history, f"stopped: {state.stop_reason}; best fitness {state.best_fitness:.5f} "
                                 f"at generation {state.best_generation}")
    best = state.best_member
    model = _member_class(best["config"])
    model.load_state_dict(best["state"])
    return PBTResult(model.eval(), dict(best["hparams"]), history, state.best_generation, state.stop_reason)


def _member_class(config: dict) -> LFADS:
    """An untrained model of a member's architecture (``config`` as a dict): a ``StitchedLFADS``
    for members stitched over sessions, else an ``LFADS``."""
    return StitchedLFADS(StitchedConfig(**config)) if "sessions" in config else LFADS(LFADSConfig(**config))


def train_epoch(population: Population, tensors, train_idx, valid_idx, tc: TrainConfig,
                epoch: int, decisions: torch.Generator, stop=lambda: False) -> tuple[dict[str, np.ndarray], bool]:
    """One epoch of every member (the trials in an order drawn from ``decisions``), then validation.

    ``epoch``: epochs done before this one (it sets the ramps). ``stop()`` is asked after every
    step; True ends the epoch early. Returns (name -> (P,) float64 metrics, stopped). Several
    sessions (``tensors``, ``train_idx``, ``valid_idx`` per session): every step mixes them as
    ``train`` does (``training.sessions.mixed_step``).
    """
    sessions = isinstance(train_idx, dict)
    n_train = sum(len(i) for i in train_idx.values()) if sessions else len(train_idx)
    steps_per_epoch = math.ceil(n_train / tc.batch_size)
    if sessions:
        orders = {n: i[torch.randperm(len(i), generator=decisions)] for n, i in train_idx.items()}
    else:
        order = train_idx[torch.randperm(len(train_idx), generator=decisions)]
    sums = torch.zeros(population.size, dtype=torch.float64)
    stopped = False
    for step in range(steps_per_epoch):
        if sessions:
            idx = {n: i.to(population.device) for n, i in mixed_step(orders, step, steps_per_epoch).items()}
        else:
            idx = order[step * tc.batch_size:(step + 1) * tc.batch_size].to(population.device)
        position = epoch + step / steps_per_epoch
        out = population.train_step(tensors, idx, _ramp(position, tc.kl_ramp_epochs), _ramp(position, tc.l2_ramp_epochs))
        sums += out["train_loss"].double().cpu()
        stopped = stop()
        if stopped:
            break
    metrics = {k: v.double().cpu().numpy() for k, v in population.validate(tensors, valid_idx, tc.batch_size).items()}
    metrics["train_loss"] = (sums / (step + 1)).numpy()
    return metrics, stopped


def _artifact_free_nll(population: Population, tensors, valid_idx: torch.Tensor, skip: torch.Tensor, tc: TrainConfig,
                       metric: str, trim: float = ARTIFACT_TRIM) -> np.ndarray:
    """(P,) ``artifacts.artifact_free_nll`` of every member on the validation trials (like ``metric``):
    the entries in ``skip`` (``near_artifacts``, (trial, time, neuron)) and each member's largest
    ``trim`` share of entry NLLs left out."""
    model = population.model
    model.eval()
    with torch.no_grad():
        nll = artifact_free_nll(lambda batch: model._each_member(LFADS.entry_nll, batch, in_dims=(None,)),
                                validation_batches(tensors, valid_idx, tc.sv_fraction, tc.batch_size),
                                skip[valid_idx], heldout=metric == "valid_sv_nll", trim=trim)
    model.train()
    return nll.cpu().numpy()


def _end_generation(state, population, space, pc, decisions, metrics, ckpt_dir, settings, seconds, stopped) -> None:
    """Record the generation, keep the best member, exploit / explore, decide on stopping, checkpoint.

    ``stopped`` (a stop request): the run ends here, but exploits and explores as usual first so
    that a resumed run goes on with the next generation.
    """
    P = population.size
    fitness = np.array(state.smoothed, dtype=np.float64)
    fitness[~np.isfinite(fitness)] = np.nan
    row = {"fitness": fitness, "parent": np.array(state.parent), "end_epoch": state.epoch, "seconds": seconds,
           **{k: np.asarray(v, dtype=np.float64) for k, v in metrics.items()},
           **{k: population.hps[k].double().cpu().numpy() for k in space}}
    state.rows.append(row)
    if np.isfinite(fitness).any():
        i = int(np.nanargmin(fitness))
        if fitness[i] < state.best_fitness:
            state.best_fitness, state.best_generation = float(fitness[i]), state.generation
            state.best_member = {
                "state": {k: v.float().cpu() for k, v in population.model.member_state_dict(i).items()},
                "hparams": population.member_hparams(i),
                "config": dataclasses.asdict(population.member_config(i)),
            }
            if ckpt_dir is not None:
                save_checkpoint(_best_checkpoint(state, settings), ckpt_dir / "best.pt")
    # stopping: the best fitness so far against stop_patience generations ago (burn-in excluded)
    best_so_far = np.minimum.accumulate([np.nanmin(r["fitness"]) if np.isfinite(r["fitness"]).any() else np.inf
                                         for r in state.rows[1:]]) if len(state.rows) > 1 else []
    g = state.generation
    if stopped:
        state.stop_reason = "stop_button"
    elif g >= pc.max_generations:
        state.stop_reason = "max_generations"
    elif len(best_so_far) > pc.stop_patience:
        before, now = best_so_far[-1 - pc.stop_patience], best_so_far[-1]
        if before - now < pc.stop_improvement * abs(before):
            state.stop_reason = "plateau"
    if state.stop_reason in ("", "stop_button"):
        parent = exploit(fitness, pc.exploit, decisions, pc.truncation_fraction)
        losers = np.flatnonzero(parent != np.arange(P))
        population.copy_members(losers.tolist(), parent[losers].tolist())
        for i in losers:
            for name, hp in space.items():
                new = explore(float(population.hps[name][i]), hp.low, hp.high, hp.explore_width, decisions)
                population.hps[name][i] = new
        state.smoothed = [state.smoothed[p] for p in parent]
        state.parent = parent.tolist()
        state.generation += 1
    if ckpt_dir is not None:
        save_checkpoint(population_checkpoint(settings, population, decisions, state), ckpt_dir / "pbt.pt")


# ---------------------------------------------------------------------------------------------
# History, checkpoints, progress
# ---------------------------------------------------------------------------------------------

def _history(state: _RunState, space: SearchSpace, settings: dict) -> xr.Dataset:
    rows = state.rows
    if not rows:
        return xr.Dataset()
    P = len(rows[0]["fitness"])
    data = {}
    for name in rows[0]:
        values = np.array([r[name] for r in rows])
        data[name] = ("generation", values) if values.ndim == 1 else (("generation", "member"), values)
    ds = xr.Dataset(data, coords={"generation": np.arange(len(rows)), "member": np.arange(P)},
                    attrs={"description": "population-based training: one row per generation (0 = burn-in)",
                           **{k: json.dumps(v) for k, v in settings.items()}})
    for name in space:
        ds[name].attrs["description"] = "hyperparameter during the generation"
    metric = settings.get("pbt_config", {}).get("metric", "the metric")  # valid_recon: validation NLL; valid_sv_nll: sample-validation NLL
    if settings.get("pbt_config", {}).get("fitness_skips_artifacts"):
        metric += "_artifact_free"
    ds["fitness"].attrs.update(units="nats per entry", description=f"{metric}, smoothed over epochs, at the generation's end")
    ds["parent"].attrs["description"] = "member whose weights, optimiser state and hyperparameters it started from"
    ds["seconds"].attrs["units"] = "s"
    return ds


def _best_checkpoint(state: _RunState, settings: dict) -> dict:
    best = state.best_member
    train_config = {**settings["train_config"], **by_owner(best["hparams"], "train")}
    return model_checkpoint(best["config"], best["state"], train_config, pbt_generation=state.best_generation,
                            model_family="stitchedlfads" if "sessions" in best["config"] else "lfads")


__all__ = ["PBTConfig", "PBTResult", "check_population_fits", "explore", "exploit", "pbt"]
