"""Population-based training of LFADS as Ray Tune trials, on one machine or a Ray cluster.

The same training as :func:`lfads_nb.tune.pbt.pbt`, scaled out: each Tune trial trains a batched
sub-population of ``members_per_trial`` LFADS members (one :class:`lfads_nb.tune.population.Population`,
epochs by :func:`lfads_nb.tune.pbt.train_epoch`), and Ray Tune's ``PopulationBasedTraining``
scheduler exploits and explores between trials. Only Ray 2.x's public API is used:
``tune.Tuner``, ``tune.TuneConfig``, ``tune.RunConfig``, ``tune.report`` with a
``tune.Checkpoint``, ``tune.get_checkpoint`` and ``tune.get_context``. Needs the ``ray`` extra
(``pip install 'lfads_nb[ray]'``).

The pieces, in the order a run uses them:

1. ``ray_pbt(ds, ...)`` splits the population (``PBTConfig.population``) into
   ``population / members_per_trial`` trials. Each trial's config holds its members'
   hyperparameters (``{"members": {"0": {"lr": ..., ...}, ...}}``), initialised as ``pbt``
   does (``init`` where the space gives one, else a seeded draw).
2. ``_trial`` (runs on a Ray worker): a burn-in generation, then generations of
   ``generation_epochs``; after each it reports ``fitness`` (the best smoothed validation NLL
   of its members), per-member values and a checkpoint (weights, Adam state, RNG states).
3. The scheduler (synchronous, ``time_attr='generations_done'``, every generation): the
   bottom ``truncation_fraction`` of trials restart from a top trial's checkpoint with its
   config explored by ``_Explore`` (every member's hyperparameters multiplied by
   1 +- U[0.002 w, w], bounded, as in ``pbt``). A trial's config is the only source of its
   hyperparameters; members inside one trial do not copy each other.
4. ``RayPBTResult``: the best member (best fitness at any generation's end) as an ordinary
   ``LFADS``, its hyperparameters, and a history Dataset (generation x member) with the
   variables of ``PBTResult.history``, so ``lfads_nb.plots.pbt_*`` draw it; plus Tune's
   ``ResultGrid``. Runs stop after ``max_generations`` (no plateau rule).

On a cluster: start Ray there (``ray start --head`` / ``ray up``), call
``ray.init(address="auto")`` (or pass ``address``) before ``ray_pbt``, and give a
``storage_path`` on a file system every node shares. Each trial also appends one JSON line per
generation to ``<storage_path>/<name>/generation_rows/``: the history is read from there, since
Tune's own result files can lose rows when PBT restarts a trial from another's checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from ..data.schema import validate
from ..errors import ConfigError
from ..models.lfads import LFADS, LFADSConfig
from ..training.checkpoint import ema, load_checkpoint, save_checkpoint
from ..training.loop import TrainConfig, _to_tensors, build_model, check_device, train_valid_indices
from .pbt import (PBT_NEEDS_VALIDATION, PBTConfig, _initial_hparams, _member_seed, _space_for_population, build_members,
                  train_epoch)
from .pbt import explore as explore_value
from .population import Population
from .search import DEFAULT_SPACE, SearchSpace

CHECKPOINT_FILE = "trial.pt"


def _tune():
    try:
        import ray
        from ray import tune
    except ImportError:
        raise ImportError("The Ray backend needs Ray Tune: pip install 'lfads_nb[ray]' (or 'ray[tune]>=2.9').") from None
    return ray, tune


# ---------------------------------------------------------------------------------------------
# One trial: a batched sub-population (runs on a Ray worker)
# ---------------------------------------------------------------------------------------------

def _trial(config: dict, *, ds: xr.Dataset, settings: dict) -> None:
    """Train this trial's members generation by generation, reporting to Tune after each."""
    from ray import tune

    torch.set_num_threads(settings["threads"])
    tc = TrainConfig(**settings["train_config"])
    check_device(tc.device)  # here, not in ray_pbt: the head may have no GPU where the workers do
    names = list(settings["space"])
    k = settings["members_per_trial"]
    members = [config["members"][str(j)] for j in range(k)]
    hparams = {name: [m[name] for m in members] for name in names}
    first = config["index"] * k  # global index of this trial's first member (initial weights only)
    members = build_members(ds, tc, settings["model_sizes"], [_member_seed(settings["seed"], first + j) for j in range(k)])
    population = Population(members, tc, hparams, noise_seed=_member_seed(settings["seed"], 1_000_000 + config["index"]),
                            device=tc.device)
    decisions = torch.Generator().manual_seed(_member_seed(settings["seed"], 2_000_000 + config["index"]))
    trial_id = tune.get_context().get_trial_id()
    epoch, generation, smoothed, origin = 0, 0, [math.nan] * k, trial_id
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # resumed, or restarted from a better trial's checkpoint (exploit)
        with checkpoint.as_directory() as folder:
            saved = load_checkpoint(Path(folder) / CHECKPOINT_FILE, ("population",), map_location=tc.device)
        population.load_state_dict(saved["population"])
        for name in names:  # the config's values rule: after an exploit they are the explored ones
            population.hps[name].copy_(torch.tensor(hparams[name], dtype=population.hps[name].dtype))
        epoch, generation, smoothed, origin = saved["epoch"], saved["generation"], saved["smoothed"], saved["trial_id"]
        decisions.set_state(saved["decisions"])

    train_idx, valid_idx = train_valid_indices(ds, PBT_NEEDS_VALIDATION)
    tensors = _to_tensors(ds, tc)
    while True:
        length = settings["burn_in"] if generation == 0 else settings["generation_epochs"]
        for _ in range(length):
            metrics, _ = train_epoch(population, tensors, train_idx, valid_idx, tc, epoch, decisions)
            current = metrics[settings["metric"]]
            smoothed = [ema(s, c) for s, c in zip(smoothed, current)]
            epoch += 1
        fitness = np.where(np.isfinite(smoothed), smoothed, np.nan)
        row = {"fitness": float(np.nanmin(fitness)) if np.isfinite(fitness).any() else math.inf,
               "generation": generation, "generations_done": generation + 1, "end_epoch": epoch, "origin": origin}
        for j in range(k):
            row[f"fitness_{j}"] = float(fitness[j])
            row.update({f"{name}_{j}": float(population.hps[name][j]) for name in names})
            row.update({f"{key}_{j}": float(values[j]) for key, values in metrics.items()})
        generation += 1
        # Named by trial id: an exploit copies the whole config, "index" included, into the clone.
        with open(Path(settings["row_log"]) / f"{trial_id}.jsonl", "a") as log:
            log.write(json.dumps({**row, "trial_id": trial_id}) + "\n")
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint({"population": population.state_dict(), "epoch": epoch, "generation": generation,
                             "smoothed": smoothed, "trial_id": trial_id, "decisions": decisions.get_state()},
                            Path(folder) / CHECKPOINT_FILE)
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(folder))
        origin = trial_id


class _Explore:
    """Tune's ``custom_explore_fn``: every member's hyperparameters explored as ``pbt`` explores.

    Seeded: the n-th call draws from a generator seeded by (seed, n).
    """

    def __init__(self, space: SearchSpace, seed: int):
        self.bounds = {name: (hp.low, hp.high, hp.explore_width) for name, hp in space.items()}
        self.seed, self.calls = seed, 0

    def __call__(self, config: dict) -> dict:
        self.calls += 1
        generator = torch.Generator().manual_seed(_member_seed(self.seed, 3_000_000 + self.calls))
        for member in config["members"].values():
            for name, (low, high, width) in self.bounds.items():
                member[name] = explore_value(float(member[name]), low, high, width, generator)
        return config


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

@dataclass
class RayPBTResult:
    model: LFADS             # the best member (best fitness at any generation end), eval mode, CPU float32
    hparams: dict            # its hyperparameters
    history: xr.Dataset      # dims (generation, member); member = trial * members_per_trial + slot
    best_generation: int
    results: object          # Tune's ResultGrid, one Result per trial


def ray_pbt(
    ds: xr.Dataset,
    *,
    space: SearchSpace = DEFAULT_SPACE,
    pbt_config: PBTConfig | None = None,
    train_config: TrainConfig | None = None,
    model_sizes: dict | None = None,
    members_per_trial: int = 1,
    cpus_per_trial: float = 1,
    gpus_per_trial: float = 0,
    storage_path=None,
    name: str = "lfads_pbt",
    verbose: int = 1,
) -> RayPBTResult:
    """PBT of LFADS on ``ds`` as Ray Tune trials of ``members_per_trial`` members each.

    Settings as :func:`lfads_nb.tune.pbt.pbt` (``pbt_config.exploit`` is Tune's truncation with
    ``truncation_fraction``; the plateau rule is not used). ``cpus_per_trial`` /
    ``gpus_per_trial``: resources Tune reserves per trial (torch uses ``cpus_per_trial``
    threads; with GPUs set ``train_config.device='cuda'``). ``storage_path``: the folder where
    Tune keeps results and checkpoints and the trials log their generations (default: a new
    temporary folder, fine on one machine; on a cluster a shared path all nodes reach).
    Uses the running Ray instance, or starts a local one.
    """
    ray, tune = _tune()
    from ray.tune.schedulers import PopulationBasedTraining

    pc = pbt_config or PBTConfig()
    tc = train_config or TrainConfig()
    space = _space_for_population(space)
    validate(ds, require_train=True)
    if isinstance(members_per_trial, bool) or not isinstance(members_per_trial, int) or members_per_trial < 1 \
            or pc.population % members_per_trial:
        raise ConfigError(f"members_per_trial={members_per_trial!r} must be a positive integer dividing "
                          f"PBTConfig.population ({pc.population}).")
    n_trials = pc.population // members_per_trial
    if n_trials < 2:
        raise ConfigError(f"{n_trials} trial: PBT needs at least 2 trials to exploit; lower members_per_trial.")
    if pc.metric == "valid_sv_nll" and tc.sv_fraction == 0:
        raise ConfigError("PBTConfig.metric='valid_sv_nll' needs sample validation: set TrainConfig.sv_fraction > 0.")
    if pc.exploit == "none":
        raise ConfigError("PBTConfig.exploit='none' (a population that never copies) is not available with ray_pbt, "
                          "which always exploits by truncation; run lfads_nb.pbt.pbt for it.")
    if pc.fitness_skips_artifacts:
        raise ConfigError("PBTConfig.fitness_skips_artifacts is not available with ray_pbt; run lfads_nb.pbt.pbt, "
                          "or mask the artifacts in the data first (lfads_nb.artifacts.mask_artifacts).")
    train_valid_indices(ds, PBT_NEEDS_VALIDATION)
    if storage_path is not None and "://" in str(storage_path):
        raise ConfigError(f"storage_path={storage_path!r}: give a folder on a file system every node shares; "
                          "the trials log each generation there as files.")
    storage = Path(storage_path) if storage_path is not None else Path(tempfile.mkdtemp(prefix="lfads_pbt_"))
    row_log = storage.resolve() / name / "generation_rows"
    row_log.mkdir(parents=True, exist_ok=True)
    for old in row_log.glob("*.jsonl"):  # a new run of the same name starts a new log
        old.unlink()
    model_sizes = dict(model_sizes or {})
    model_config = build_model(ds, **model_sizes).config
    initial = _initial_hparams(space, pc.population, pc.seed)
    configs = [{"index": t, "members": {str(j): {n: initial[n][t * members_per_trial + j] for n in space}
                                        for j in range(members_per_trial)}} for t in range(n_trials)]
    settings = {"train_config": dataclasses.asdict(tc), "model_config": dataclasses.asdict(model_config),
                "model_sizes": model_sizes,
                "space": {n: dataclasses.asdict(hp) for n, hp in space.items()}, "members_per_trial": members_per_trial,
                "seed": pc.seed, "metric": pc.metric, "threads": max(1, int(cpus_per_trial)),
                "burn_in": pc.burn_in_epochs or max(tc.kl_ramp_epochs, tc.l2_ramp_epochs, 1),
                "generation_epochs": pc.generation_epochs, "row_log": str(row_log)}

    if not ray.is_initialized():
        ray.init()
    scheduler = PopulationBasedTraining(
        time_attr="generations_done", perturbation_interval=1, synch=True,
        quantile_fraction=pc.truncation_fraction, custom_explore_fn=_Explore(space, pc.seed))
    trainable = tune.with_resources(tune.with_parameters(_trial, ds=ds, settings=settings),
                                    {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    tuner = tune.Tuner(
        trainable,
        param_space={"index": tune.grid_search(list(range(n_trials))),
                     "members": tune.sample_from(lambda spec: configs[spec.config.index]["members"])},
        tune_config=tune.TuneConfig(scheduler=scheduler, metric="fitness", mode="min"),
        run_config=tune.RunConfig(
            name=name, storage_path=str(storage.resolve()), verbose=verbose,
            stop={"generations_done": 1 + pc.max_generations},
            checkpoint_config=tune.CheckpointConfig(checkpoint_score_attribute="fitness", checkpoint_score_order="min")),
    )
    results = tuner.fit()
    errors = [r.error for r in results if r.error is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} of {n_trials} Tune trials failed; the first: {errors[0]!r}")
    history = _history(results, space, members_per_trial, settings)
    model, hparams, best_generation = _best_member(results, space, members_per_trial, settings)
    return RayPBTResult(model, hparams, history, best_generation, results)


def _trial_rows(row_log: Path) -> list[dict[int, dict]]:
    """Per trial, in trial-id order (Tune's grid order): generation -> the last row it logged."""
    out = []
    for path in sorted(row_log.glob("*.jsonl")):
        rows = {}
        for line in path.read_text().splitlines():
            row = json.loads(line)
            rows[int(row["generation"])] = row  # a restarted trial may log a generation again: the last counts
        out.append(rows)
    return out


def _history(results, space: SearchSpace, k: int, settings: dict) -> xr.Dataset:
    """The run as ``pbt``'s history: dims (generation, member), member = trial * k + slot."""
    rows = _trial_rows(Path(settings["row_log"]))
    ids = [r[0]["trial_id"] for r in rows]
    n_gen = min(len(r) for r in rows)
    P = len(rows) * k

    def grid(column):
        return np.array([[rows[t][g][f"{column}_{j}"] for t in range(len(rows)) for j in range(k)] for g in range(n_gen)])

    parent = np.array([[ids.index(rows[t][g]["origin"]) * k + j for t in range(len(rows)) for j in range(k)]
                       for g in range(n_gen)])
    metrics = [c[:-2] for c in rows[0][0] if c.endswith("_0") and c[:-2] not in space and c[:-2] != "fitness"]
    data = {name: (("generation", "member"), grid(name)) for name in ["fitness", *metrics, *space]}
    data["parent"] = (("generation", "member"), parent)
    data["end_epoch"] = ("generation", np.array([rows[0][g]["end_epoch"] for g in range(n_gen)]))
    ds = xr.Dataset(data, coords={"generation": np.arange(n_gen), "member": np.arange(P)},
                    attrs={"description": f"population-based training on Ray Tune: {len(rows)} trials of {k} members, "
                                          "one row per generation (0 = burn-in)",
                           **{key: json.dumps(settings[key]) for key in ("space", "train_config", "model_config")}})
    for name in space:
        ds[name].attrs["description"] = "hyperparameter during the generation"
    ds["fitness"].attrs.update(units="nats per entry", description="smoothed validation NLL at the generation's end")
    ds["parent"].attrs["description"] = "member whose weights, optimiser state and hyperparameters it started from"
    return ds


def _best_member(results, space: SearchSpace, k: int, settings: dict) -> tuple[LFADS, dict, int]:
    """Load the checkpoint with the lowest fitness of any trial and export its best member."""
    best = None
    for result in results:
        for checkpoint, metrics in result.best_checkpoints:
            if best is None or metrics["fitness"] < best[1]["fitness"]:
                best = (checkpoint, metrics)
    if best is None or not math.isfinite(best[1]["fitness"]):
        raise RuntimeError("No trial reported a finite fitness: every member diverged. Lower the learning-rate range "
                           "or raise the KL/L2 ramps.")
    checkpoint, metrics = best
    with checkpoint.as_directory() as folder:
        saved = load_checkpoint(Path(folder) / CHECKPOINT_FILE, ("population",))
    tc = dataclasses.replace(TrainConfig(**settings["train_config"]), device="cpu")
    population = Population([LFADS(LFADSConfig(**settings["model_config"])) for _ in range(k)], tc, {})
    population.load_state_dict(saved["population"])
    j = int(np.nanargmin([metrics[f"fitness_{i}"] for i in range(k)]))
    return population.member_model(j), population.member_hparams(j), int(metrics["generation"])


__all__ = ["RayPBTResult", "ray_pbt"]
