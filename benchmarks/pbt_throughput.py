"""Throughput of a population-batched LFADS against the same P models trained one after another.

Both sides train P LFADS models with the same architecture, hyperparameters (P points of
``lfads_nb.tune.search.DEFAULT_SPACE``), data and batch size, in this process and run:

- vectorized: ``lfads_nb.tune.population.Population.step``, one forward and backward for all P;
- sequential: P ordinary ``LFADS`` models, each stepped ``--steps`` times with the inner loop of
  ``lfads_nb.training.train`` (``LFADS.loss``, ``clip_grad_norm_``, ``torch.optim.Adam``).

A model step is one optimiser step of one model on one batch. ``--warmup`` steps per side are
not timed. Wall-clock seconds are the headline; the process's CPU seconds are printed beside
them because other jobs on a shared machine stretch wall time.

Data: chaotic-RNN trials (50 neurons x ``--n-bins`` 10 ms bins). Model: LFADSConfig defaults
(controller on, co_dim 4, gen 100) unless ``--co-dim 0``.

Usage: ``python benchmarks/pbt_throughput.py [--population 8] [--device cpu] [--threads 1]``.
The last line printed is JSON: population, device, vectorized_model_steps_per_s,
sequential_model_steps_per_s, ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from data_generators import chaotic_rnn  # noqa: E402
from lfads_nb.models.registry import LFADS_LOSS_WEIGHTS, build_model  # noqa: E402
from lfads_nb.training.feed import make_feed  # noqa: E402
from lfads_nb.training.loop import TrainConfig, check_device, loss_weights  # noqa: E402
from lfads_nb.tune.pbt import build_members  # noqa: E402
from lfads_nb.tune.population import Population  # noqa: E402
from lfads_nb.tune.search import DEFAULT_SPACE  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> tuple[float, float]:
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-bins", type=int, default=50)
    parser.add_argument("--co-dim", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    P, device = args.population, args.device
    check_device(device)  # TrainConfig no longer probes the GPU: fail here, before any work

    ds = chaotic_rnn(seed=0, n_bins=args.n_bins, n_conditions=2 * args.batch_size, trials_per_condition=1)
    shared = TrainConfig(batch_size=args.batch_size, device=device)
    feed = make_feed(ds, shared)
    trials = {None: torch.arange(args.batch_size)}
    points = DEFAULT_SPACE.sample(P, seed=0)
    sizes = {"co_dim": args.co_dim}

    # vectorized
    hparams = {name: [p[name] for p in points] for name in points[0]}
    pop = Population(build_members(ds, shared, "lfads", sizes, range(P)), shared, hparams, device=device)

    def run_population(n):
        for _ in range(n):
            pop.step(feed, trials, 0.5, 0.5)

    run_population(args.warmup)
    vec_wall, vec_cpu = _timed(lambda: run_population(args.steps), device)

    # sequential: the same P models, one after another
    seq_wall = seq_cpu = 0.0
    for i, point in enumerate(points):
        torch.manual_seed(i)
        model = build_model(ds, **{**sizes, "dropout": point["dropout"]}).to(device).train()
        config = TrainConfig(batch_size=args.batch_size, device=device, **{k: v for k, v in point.items() if k != "dropout"})
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)

        def run_model(n):
            for _ in range(n):
                loss, _ = model.loss(feed.draw_training_batch(trials, config),
                                     loss_weights(LFADS_LOSS_WEIGHTS, config, 0.5, 0.5))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()

        run_model(args.warmup)
        wall, cpu = _timed(lambda: run_model(args.steps), device)
        seq_wall, seq_cpu = seq_wall + wall, seq_cpu + cpu

    model_steps = P * args.steps
    result = {
        "population": P,
        "device": device,
        "vectorized_model_steps_per_s": model_steps / vec_wall,
        "sequential_model_steps_per_s": model_steps / seq_wall,
        "ratio": seq_wall / vec_wall,
    }
    print(f"P={P} device={device} threads={args.threads} batch={args.batch_size} bins={args.n_bins} "
          f"co_dim={args.co_dim}: {args.steps} timed steps per model after {args.warmup} warm-up")
    print(f"{'':12s} {'wall s':>8s} {'cpu s':>8s} {'model steps/s (wall)':>21s} {'(cpu)':>8s}")
    for name, wall, cpu in (("vectorized", vec_wall, vec_cpu), ("sequential", seq_wall, seq_cpu)):
        print(f"{name:12s} {wall:8.2f} {cpu:8.2f} {model_steps / wall:21.2f} {model_steps / cpu:8.2f}")
    print(f"ratio (wall) {seq_wall / vec_wall:.2f}   ratio (cpu seconds) {seq_cpu / vec_cpu:.2f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
