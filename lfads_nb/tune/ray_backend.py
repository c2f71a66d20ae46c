"""Population-based training on Ray: ``pbt``'s own loop with the population split over Ray workers.

``ray_pbt(ds, members_per_worker=k, ...)`` takes ``pbt``'s arguments and runs its loop
(``lfads_nb.tune.pbt.run_pbt``): the same exploit and perturbation rules, stopping rule, sessions,
artifact-free fitness, history, progress, ``pbt.pt`` / ``best.pt`` checkpoints and resume. Only the
members' epochs run elsewhere: on ``population / k`` Ray actors (``_Worker``), each holding a
:class:`lfads_nb.tune.population.Population` of k members and its own ``Feed`` of the data. Needs
Ray (``pip install 'lfads_nb[ray]'``); only Ray core's public API is used (``ray.remote``, ``ray.get``,
``ray.put``, ``ray.kill``).

Per epoch the driver hands every worker the state of its ``decisions`` generator, so each one
shuffles the trials as one population would, and advances its own generator by the same draws;
it gathers the members' metrics. Exploit copies a member's weights, Adam state and
hyperparameters from its worker to the loser's. Worker w draws its members' noise from a generator
seeded by the run's seed for w = 0 and ``member_seed(seed, 1_000_000 + w)`` for the others, so a
single worker of every member is ``pbt`` exactly (tested), and several workers differ from it only
in those random numbers. A stop request is seen between epochs. ``pbt.pt`` holds every worker's
population, so a run resumes with the same ``members_per_worker``.

On a cluster: start Ray there (``ray start --head`` / ``ray up``) and call
``ray.init(address="auto")`` before ``ray_pbt``; the driver writes ``checkpoint_dir``.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..errors import ConfigError
from ..training.feed import make_feed
from ..training.loop import TrainConfig, check_device, run_epoch
from .pbt import PBT_NEEDS_VALIDATION, PBTConfig, PBTResult, artifact_free, initial_hparams, member_seed, run_pbt
from .population import Population
from .search import SearchSpace


def _ray():
    try:
        import ray
    except ImportError:
        raise ImportError("The Ray backend needs Ray: pip install 'lfads_nb[ray]' (or 'ray>=2.9').") from None
    return ray


class _Worker:
    """A Ray actor: k members of the population (a ``Population``) and a ``Feed`` of the data."""

    def __init__(self, ds, train_config: dict, members, hparams: dict, noise_seed: int, threads: int, population: int,
                 artifact_free: str | None = None):
        torch.set_num_threads(threads)
        tc = TrainConfig(**train_config)
        check_device(tc.device)  # here, not on the driver: the head may have no GPU where the workers do
        torch.manual_seed(noise_seed)  # the draws inside members' forward passes (NDT's dropout layers)
        self.config = tc
        self.feed = make_feed(ds, tc, PBT_NEEDS_VALIDATION)
        self.population = Population(members, tc, hparams, noise_seed=noise_seed, device=tc.device,
                                     validation_members=population, artifact_free=artifact_free)

    def epoch(self, epoch: int, decisions_state: torch.Tensor) -> dict:
        decisions = torch.Generator().set_state(decisions_state)
        result = run_epoch(self.population, self.feed, epoch, decisions, self.config)
        return {k: v.double().cpu().numpy() for k, v in result.metrics.items()}

    def hparams(self) -> dict:
        return {name: v.double().cpu().numpy() for name, v in self.population.hps.items()}

    def set_hparam(self, name: str, j: int, value: float) -> None:
        self.population.hps[name][j] = value

    def copy_members(self, dst: list, src: list) -> None:
        self.population.copy_members(dst, src)

    def export(self, j: int) -> dict:
        """Member j's weights, Adam state and hyperparameters, to copy into another worker."""
        population = self.population
        adam = population.optimizer
        return {"weights": [t[j].cpu() for t in list(population.model.parameters()) + list(population.model.buffers())],
                "adam": [t[j].cpu() for t in [adam.steps] + adam.exp_avg + adam.exp_avg_sq],
                "hps": {name: float(v[j]) for name, v in population.hps.items()}}

    @torch.no_grad()
    def import_member(self, j: int, saved: dict) -> None:
        """Member j becomes the member ``saved`` (``export``): the exploit step across workers."""
        population = self.population
        adam = population.optimizer
        for t, value in zip(list(population.model.parameters()) + list(population.model.buffers()), saved["weights"]):
            t[j] = value.to(t.device)
        for t, value in zip([adam.steps] + adam.exp_avg + adam.exp_avg_sq, saved["adam"]):
            t[j] = value.to(t.device)
        for name, value in saved["hps"].items():
            population.hps[name][j] = value

    def member(self, j: int) -> dict:
        population = self.population
        return {"state": {k: v.float().cpu() for k, v in population.model.member_state_dict(j).items()},
                "hparams": population.member_hparams(j),
                "config": dataclasses.asdict(population.member_config(j))}

    def state_dict(self) -> dict:
        return {k: _to_cpu(v) for k, v in self.population.state_dict().items()}

    def load_state_dict(self, state: dict) -> None:
        self.population.load_state_dict(state)


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


class RayMembers:
    """The members of a run on Ray workers, with ``pbt.LocalMembers``' methods: member i lives in
    worker i // k at slot i % k."""

    def __init__(self, ds, train_config: TrainConfig, pbt_config, space, members, *, k: int, cpus: float,
                 gpus: float):
        ray = _ray()
        self.ray, self.k, self.size = ray, k, len(members)
        self.settings = {"ray": {"members_per_worker": k}}  # pbt.pt holds one population per worker
        self.feed = make_feed(ds, train_config, PBT_NEEDS_VALIDATION)  # draws the batch order as the workers do
        hparams = initial_hparams(space, self.size, pbt_config.seed)
        actor = ray.remote(num_cpus=cpus, num_gpus=gpus)(_Worker)
        shared = ray.put(ds)
        self.workers = []
        for w in range(self.size // k):
            seed = pbt_config.seed if w == 0 else member_seed(pbt_config.seed, 1_000_000 + w)
            mine = {name: values[w * k:(w + 1) * k] for name, values in hparams.items()}
            self.workers.append(actor.remote(shared, dataclasses.asdict(train_config), members[w * k:(w + 1) * k], mine,
                                             seed, max(1, int(cpus)), self.size, artifact_free(pbt_config)))

    def _at(self, i: int):
        return self.workers[i // self.k], i % self.k

    def epoch(self, epoch: int, decisions: torch.Generator, config: TrainConfig, stop) -> tuple[dict, bool]:
        state = decisions.get_state()
        parts = self.ray.get([w.epoch.remote(epoch, state) for w in self.workers])
        self.feed.shuffle(decisions)  # the draws every worker made from the same state
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}, bool(stop())

    def hparams(self) -> dict[str, np.ndarray]:
        parts = self.ray.get([w.hparams.remote() for w in self.workers])
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def set_hparam(self, name: str, member: int, value: float) -> None:
        worker, j = self._at(member)
        self.ray.get(worker.set_hparam.remote(name, j, value))

    def copy_members(self, dst, src) -> None:
        """Member dst[n] becomes a copy of member src[n]; every source is read before any member is written."""
        saved = self.ray.get([self._at(s)[0].export.remote(self._at(s)[1]) for s in src])
        self.ray.get([self._at(d)[0].import_member.remote(self._at(d)[1], member) for d, member in zip(dst, saved)])

    def member(self, i: int) -> dict:
        worker, j = self._at(i)
        return self.ray.get(worker.member.remote(j))

    def state_dict(self) -> dict:
        return {"workers": self.ray.get([w.state_dict.remote() for w in self.workers])}

    def load_state_dict(self, state: dict) -> None:
        self.ray.get([w.load_state_dict.remote(s) for w, s in zip(self.workers, state["workers"])])

    def close(self) -> None:
        for worker in self.workers:
            self.ray.kill(worker)


def ray_pbt(
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
    members_per_worker: int = 1,
    cpus_per_worker: float = 1,
    gpus_per_worker: float = 0,
) -> PBTResult:
    """:func:`lfads_nb.tune.pbt.pbt` (same arguments, same result) with the population split over Ray
    workers of ``members_per_worker`` members each (it must divide ``PBTConfig.population``).
    ``cpus_per_worker`` / ``gpus_per_worker``: what Ray reserves per worker (torch uses
    ``cpus_per_worker`` threads; with GPUs set ``train_config.device='cuda'``). Uses the running Ray
    instance, or starts a local one.
    """
    ray = _ray()
    population = (pbt_config or PBTConfig()).population
    if isinstance(members_per_worker, bool) or not isinstance(members_per_worker, int) or members_per_worker < 1 \
            or population % members_per_worker:
        raise ConfigError(f"members_per_worker={members_per_worker!r} must be a positive integer dividing "
                          f"PBTConfig.population ({population}).")
    if not ray.is_initialized():
        ray.init()
    made = []

    def on_ray(ds, tc, pc, space, members):
        made.append(RayMembers(ds, tc, pc, space, members, k=members_per_worker, cpus=cpus_per_worker,
                               gpus=gpus_per_worker))
        return made[-1]

    try:
        return run_pbt(ds, on_ray, model=model, space=space, pbt_config=pbt_config, train_config=train_config,
                       model_sizes=model_sizes, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress,
                       live=live)
    finally:
        for members in made:
            members.close()


__all__ = ["RayMembers", "ray_pbt"]
