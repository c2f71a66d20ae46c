"""Population-based training (AutoLFADS; Keshtkaran et al. 2022) of a population of any model family.

The pieces, in the order a run uses them:

1. ``PBTConfig``: population size, generation length, burn-in, exploit rule, stopping rule.
   The search space (which hyperparameters, their ranges, initial values and perturbation
   widths) is a :class:`lfads_nb.tune.search.SearchSpace`, by default the family's
   (``search.default_space``: AutoLFADS's ``DEFAULT_SPACE`` for LFADS, ``NDT_SPACE`` for NDT); its
   names must be the family's per-member hyperparameters (``hyperparameters.per_member``).
2. ``pbt(ds, model=..., ...)``: trains a :class:`lfads_nb.tune.population.Population` (all members
   in one batched model) synchronously, one ``lfads_nb.training.loop.run_epoch`` per epoch (the
   epoch ``train`` runs): a burn-in (generation 0, covering the KL / L2 ramps), then generations of
   ``generation_epochs``. At the end of each generation every member's fitness is its smoothed
   validation NLL (smth = 0.3 prev + 0.7 current, per epoch; with ``fitness_skips_artifacts`` only
   over the bins farther than 2 bins from any entry that ``lfads_nb.data.artifacts.detect_artifacts``
   flags, less the largest 1 % of entry NLLs (the artifacts it missed), while the encoder still
   reads them as recorded: reproducing an artifact earns nothing, and spreading it to other bins or
   channels costs); members with NaN or infinite fitness are always replaced; the others are
   exploited by binary tournament (random pairs, the loser copies the winner) or truncation (the
   bottom fraction copies the top fraction), copying weights, Adam state and hyperparameters
   together (``exploit='none'``: nobody copies, the same population as a random search at the same
   budget, for comparisons); every member that copied then has its hyperparameters perturbed (``perturb``): each is
   multiplied by 1 +- U[0.002 w, w] (a step in log space), redrawn until inside its bounds. The run
   stops when the best fitness improved by less than ``stop_improvement`` (relative) over
   ``stop_patience`` generations, or after ``max_generations``.
3. Checkpoints: at the end of every generation ``pbt.pt`` (the whole population, optimiser,
   hyperparameters, RNG states, history; atomic, loads with ``weights_only=True``) and, when
   the best member improves, ``best.pt``, an ordinary model checkpoint (``lfads_nb.checkpoint``),
   so ``lfads_nb.load_model(dir / 'best.pt')`` returns it as an ordinary model of its family. A
   killed run resumes from ``pbt.pt`` and loses at most the generation it was in; the resumed run is
   identical to an uninterrupted one.
4. ``PBTResult``: the best member as an ordinary model (for ``lfads_nb.infer``), its
   hyperparameters, and the history as an xarray Dataset with dims (generation, member).

The loop (``run_pbt``) drives its members through an object with the methods of ``Members``: here
one ``Population`` on one device; ``lfads_nb.tune.ray_backend.ray_pbt`` runs the same loop with the
population split over Ray workers.
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

from ..checkpoint import (RunState, ema, model_checkpoint, population_checkpoint, restore_population,
                          save_checkpoint)
from ..errors import ConfigError, TrainingDiverged
from ..models.registry import build_model, family_of
from ..training.feed import Feed, check_shift, make_feed
from ..training.loop import TrainConfig, artifact_free_name, check_device, run_epoch
from .hyperparameters import by_owner, per_member, tunables
from .population import Population
from .search import SearchSpace, default_space

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
# Exploit and perturb (pure functions of the fitness, the hyperparameters and a generator)
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


def perturb(value: float, low: float, high: float, width: float, generator: torch.Generator) -> float:
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
    model: object            # the best member (best fitness at any generation end), eval mode, CPU float32
    hparams: dict            # its hyperparameters
    history: xr.Dataset      # dims (generation, member); see ``pbt``
    best_generation: int
    stop_reason: str         # 'plateau', 'max_generations' or 'stop_button'


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


def _space_for_population(space: SearchSpace | None, model: str) -> SearchSpace:
    space = default_space(model) if space is None else space
    if not isinstance(space, SearchSpace):
        raise ConfigError(f"space must be a SearchSpace, got {type(space).__name__}; e.g. lfads_nb.DEFAULT_SPACE.")
    table = tunables(model)
    bad = [name for name in space if name not in table or not table[name].per_member]
    if bad:
        raise ConfigError(
            f"{bad} cannot differ between members of one population; PBT of model={model!r} can tune "
            f"{list(per_member(model))}. Remove them from the space (space.without(...)) and set them in "
            "train_config / model_sizes."
        )
    return space


def initial_hparams(space: SearchSpace, P: int, seed: int) -> dict[str, list[float]]:
    """``init`` for every member where the space gives one, else P draws from the range."""
    rng = np.random.default_rng(seed)
    return {name: [hp.init if hp.init is not None else hp.sample(rng) for _ in range(P)] for name, hp in space.items()}


def artifact_free(pc: PBTConfig) -> str | None:
    """The validation metric whose artifact-free version is the fitness (``Population``'s
    ``artifact_free``), or None."""
    return pc.metric if pc.fitness_skips_artifacts else None


def member_seed(seed: int, i: int) -> int:
    """The seed of member ``i``'s initial weights in a run seeded ``seed`` (also of Ray workers' streams)."""
    return int(np.random.SeedSequence([seed, i]).generate_state(1)[0] >> 1)


def build_members(ds, train_config: TrainConfig, model: str, model_sizes: dict, seeds) -> list:
    """One ``build_model`` per seed: members start from the data exactly as a single model does."""
    return [build_model(ds, train_config, seed=s, model=model, **model_sizes) for s in seeds]


def check_population_fits(member, P: int, batch_size: int, n_bins: int, device: str,
                          available_bytes: int | None = None) -> None:
    """Raise ConfigError if P members like ``member`` will not fit in the device's memory, saying how many will.

    The per-member need is estimated from the sizes: weights x 4 (weights, gradients, two Adam
    moments) plus the activations a training step keeps for the backward pass (the family's
    ``memory_floats`` per trial and bin). Where the free memory cannot be known (a CPU with no
    psutil, no /proc/meminfo and no free page count from ``os.sysconf``, as on macOS or Windows
    without psutil) this checks nothing.
    """
    family = family_of(member)
    n_weights = sum(p.numel() for p in member.parameters())
    bytes_per_float = 4
    need = bytes_per_float * (4 * n_weights + batch_size * n_bins * family.memory_floats(member.config))
    if available_bytes is None:
        available_bytes = _available_bytes(device)
        if available_bytes is None:
            return
    fits = int(available_bytes * 0.8 // need)
    if P > fits:
        raise ConfigError(
            f"A population of {P} {family.name} members needs about {P * need / 2**30:.1f} GiB on {device}, but about "
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


class LocalMembers:
    """The members of a run on one device: a ``Population`` and the ``Feed`` it trains on. What the
    loop (``run_pbt``) uses of its members; ``ray_backend.RayMembers`` has the same methods."""

    settings: dict = {}  # what pbt.pt records of how the members run, besides the run's settings

    def __init__(self, population: Population, feed: Feed):
        self.population, self.feed = population, feed
        self.size = population.size

    def epoch(self, epoch: int, decisions: torch.Generator, config: TrainConfig, stop) -> tuple[dict, bool]:
        """One ``run_epoch`` of every member; (name -> (P,) float64 metrics, stopped)."""
        result = run_epoch(self.population, self.feed, epoch, decisions, config, stop)
        return {k: v.double().cpu().numpy() for k, v in result.metrics.items()}, result.stopped

    def hparams(self) -> dict[str, np.ndarray]:
        return {name: v.double().cpu().numpy() for name, v in self.population.hps.items()}

    def set_hparam(self, name: str, member: int, value: float) -> None:
        self.population.hps[name][member] = value

    def copy_members(self, dst, src) -> None:
        self.population.copy_members(dst, src)

    def member(self, i: int) -> dict:
        """Member i as {"state": its weights (CPU float32), "hparams", "config" (a dict)}."""
        return {"state": {k: v.float().cpu() for k, v in self.population.model.member_state_dict(i).items()},
                "hparams": self.population.member_hparams(i),
                "config": dataclasses.asdict(self.population.member_config(i))}

    def state_dict(self) -> dict:
        return self.population.state_dict()

    def load_state_dict(self, state) -> None:
        self.population.load_state_dict(state)


def pbt(
    ds,
    *,
    model: str = "lfads",
    space: SearchSpace | None = None,
    pbt_config: PBTConfig | None = None,
    train_config: TrainConfig | None = None,
    model_sizes: dict | None = None,
    checkpoint_dir=None,
    resume: bool = True,
    progress=None,
    live: bool | None = None,
) -> PBTResult:
    """Population-based training of models of the family ``model`` (``lfads_nb.models.registry``:
    "lfads", "ndt") on the 'train' trials of ``ds``, judged on its 'valid' trials, all members on one device.

    ``ds`` may be a DataTree of sessions: the members are then stitched models
    (``build_model(tree)``), each step mixes the sessions as ``train`` does, and the fitness is
    the validation NLL over all sessions' entries.

    ``space``: the hyperparameters to tune (default: the family's, ``search.default_space``).
    ``train_config`` gives the shared settings (batch size, ramps, sample validation, device,
    and the value of any per-member hyperparameter not in ``space``); its ``max_epochs``,
    ``lr_decay`` schedule and early stopping are not used (PBT explores lr instead).
    ``model_sizes``: ``build_model`` keywords (a per-member model hyperparameter such as LFADS's
    ``dropout`` is tuned if in ``space``). ``checkpoint_dir``: where ``pbt.pt`` and ``best.pt`` go; with
    ``resume`` a run continues from ``pbt.pt``. ``progress``: an object with ``epoch(generation,
    epoch, metrics)`` and ``generation(history)`` methods, called after every epoch and generation,
    and optionally ``stop_requested`` (polled after every training step) and ``finish(history,
    message)`` (see :class:`lfads_nb.dashboard.PBTProgress`); by default the live PBT dashboard in
    JupyterLab and one printed line per generation elsewhere (``live`` forces either). A stop
    request ends the current generation early: it is recorded, the best member kept and
    ``pbt.pt`` saved as at any generation's end; ``stop_reason`` is then 'stop_button', and a
    later call with ``resume`` continues with the next generation.

    History (``PBTResult.history``, dims generation x member, generation 0 = burn-in): each
    hyperparameter during the generation, ``fitness`` (smoothed validation NLL at its end),
    ``valid_recon`` / ``valid_sv_nll`` and the training loss and its parts (``train_loss``,
    ``train_recon``, ..., ``grad_norm``: means over its last epoch), ``parent`` (the member whose
    weights it started the generation from; itself if it kept its own) and ``end_epoch``.
    """

    def local(ds, tc, pc, space, members):
        feed = make_feed(ds, tc, PBT_NEEDS_VALIDATION)
        population = Population(members, tc, initial_hparams(space, pc.population, pc.seed), noise_seed=pc.seed,
                                device=tc.device, artifact_free=artifact_free(pc))
        return LocalMembers(population, feed)

    return run_pbt(ds, local, model=model, space=space, pbt_config=pbt_config, train_config=train_config,
                   model_sizes=model_sizes, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress, live=live)


def run_pbt(ds, make_members, *, model: str, space, pbt_config, train_config, model_sizes, checkpoint_dir, resume,
            progress, live) -> PBTResult:
    """The loop of ``pbt`` (its docstring), its members made by ``make_members(ds, train_config,
    pbt_config, space, members)`` from the P built models: an object with ``LocalMembers``' methods."""
    pc = pbt_config or PBTConfig()
    tc = train_config or TrainConfig()
    check_device(tc.device)
    space = _space_for_population(space, model)
    model_sizes = dict(model_sizes or {})
    if pc.metric == "valid_sv_nll" and tc.sv_fraction == 0:
        raise ConfigError("PBTConfig.metric='valid_sv_nll' needs sample validation: set TrainConfig.sv_fraction > 0.")
    driver_feed = make_feed(ds, tc, PBT_NEEDS_VALIDATION)  # checks the data
    if pc.fitness_skips_artifacts:
        driver_feed.artifact_skip()  # refuses sessions before any member is built
    if "shift_std" in space:  # members shift even where the shared config does not
        check_shift(tc.shift_max, driver_feed.n_time)
    P = pc.population
    members = build_members(ds, tc, model, model_sizes, [member_seed(pc.seed, i) for i in range(P)])
    family = family_of(members[0])
    starts = initial_hparams(space, P, pc.seed)  # the check sees the largest value any member starts from
    members[0].check_training(dataclasses.replace(tc, **by_owner({n: max(v) for n, v in starts.items()}, "train",
                                                                family.name)))
    check_population_fits(members[0], P, tc.batch_size, driver_feed.n_time, tc.device)
    model_config = members[0].config
    torch.manual_seed(pc.seed)  # the draws inside members' forward passes (NDT's dropout layers)
    population = make_members(ds, tc, pc, space, members)
    decisions = torch.Generator().manual_seed(pc.seed)  # batch order, exploit pairs, perturbation draws
    state = _RunState(P)
    settings = {"pbt_config": dataclasses.asdict(pc), "train_config": dataclasses.asdict(tc),
                "model_config": dataclasses.asdict(model_config), "model": {"family": family.checkpoint_name},
                "space": {n: dataclasses.asdict(hp) for n, hp in space.items()}, **population.settings}
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
    fitness_of = artifact_free_name(pc.metric) if pc.fitness_skips_artifacts else pc.metric  # a validation metric

    while not state.stop_reason:
        length = burn_in if state.generation == 0 else pc.generation_epochs
        t0 = time.perf_counter()
        stopped = False
        for _ in range(length):
            metrics, stopped = population.epoch(state.epoch, decisions, tc,
                                                lambda: bool(getattr(progress, "stop_requested", False)))
            state.smoothed = [ema(s, c) for s, c in zip(state.smoothed, metrics[fitness_of])]
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
    result = family.model(family.config(**best["config"]))
    result.load_state_dict(best["state"])
    return PBTResult(result.eval(), dict(best["hparams"]), history, state.best_generation, state.stop_reason)


def _end_generation(state, population, space, pc, decisions, metrics, ckpt_dir, settings, seconds, stopped) -> None:
    """Record the generation, keep the best member, exploit / perturb, decide on stopping, checkpoint.

    ``stopped`` (a stop request): the run ends here, but exploits and perturbs as usual first so
    that a resumed run goes on with the next generation.
    """
    P = population.size
    fitness = np.array(state.smoothed, dtype=np.float64)
    fitness[~np.isfinite(fitness)] = np.nan
    hps = population.hparams()
    row = {"fitness": fitness, "parent": np.array(state.parent), "end_epoch": state.epoch, "seconds": seconds,
           **{k: np.asarray(v, dtype=np.float64) for k, v in metrics.items()}, **{k: hps[k] for k in space}}
    state.rows.append(row)
    if np.isfinite(fitness).any():
        i = int(np.nanargmin(fitness))
        if fitness[i] < state.best_fitness:
            state.best_fitness, state.best_generation = float(fitness[i]), state.generation
            state.best_member = population.member(i)
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
        values = population.hparams()
        for i in losers:
            for name, hp in space.items():
                population.set_hparam(name, i, perturb(float(values[name][i]), hp.low, hp.high,
                                                       hp.explore_width, decisions))
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
        metric = artifact_free_name(metric)
    ds["fitness"].attrs.update(units="nats per entry", description=f"{metric}, smoothed over epochs, at the generation's end")
    ds["parent"].attrs["description"] = "member whose weights, optimiser state and hyperparameters it started from"
    ds["seconds"].attrs["units"] = "s"
    return ds


def _best_checkpoint(state: _RunState, settings: dict) -> dict:
    best = state.best_member
    train_config = {**settings["train_config"], **{k: v for k, v in best["hparams"].items()
                                                     if k in settings["train_config"]}}
    return model_checkpoint(best["config"], best["state"], train_config, pbt_generation=state.best_generation,
                            model_family=settings["model"]["family"])


__all__ = ["PBTConfig", "PBTResult", "check_population_fits", "exploit", "pbt", "perturb", "run_pbt"]
