"""CPU time of the neural-ODE generator's training step at tutorial 08's size.

The model is tutorial 08's ``node_3``: LFADS without a controller, a 3-D neural-ODE generator
(MLP 3 -> 128 -> 3, Euler, one step of 0.1 per bin), IC encoder 32, on 70-bin Lorenz attractor
trials of 10 neurons (``data_generators.attractor``, 1000 trials, 800 for training). Two timings,
each the median over ``--repeats`` after one warm-up, in CPU milliseconds of this process on one
thread:

- ``generator``: the decoder alone (``LFADS.decode``: the generator over all bins and the factor
  readout), forward and backward from a given initial state;
- ``step``: one whole training step (``model.loss`` on a batch of training trials, backward,
  gradient clipping and Adam), what ``lfads_nb.train`` does per step.

It uses only what every version of the library has, so the same script times an older checkout:
run it with ``PYTHONPATH=<that checkout>`` and compare runs interleaved in one sitting
(A B A B) on this shared machine. ``--solver rk4 --substeps 2`` times tutorial 08's exercise 1.

Usage: ``python benchmarks/node_step.py [--batch-size 50] [--repeats 20] [--solver euler]``;
the last line printed is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

import lfads_nb  # noqa: E402
from data_generators import attractor  # noqa: E402
from lfads_nb.models.registry import family_of  # noqa: E402
from lfads_nb.training.feed import make_feed  # noqa: E402
from lfads_nb.training.loop import loss_weights  # noqa: E402


def cpu_ms(fn, repeats: int) -> float:
    """Median CPU milliseconds of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(1e3 * (time.process_time() - start))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=50)  # the attractor recipe's
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--solver", default="euler", choices=("euler", "rk4"))
    parser.add_argument("--substeps", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)

    ds = attractor("lorenz", seed=0, n_trials=1000, n_neurons=10)
    model = lfads_nb.build_model(ds, seed=0, generator="node", co_dim=0, gen_dim=3, fac_dim=3, ic_dim=3,
                                 ic_enc_dim=32, dropout=0.0, node_solver=args.solver, node_substeps=args.substeps)
    config = lfads_nb.TrainConfig(batch_size=args.batch_size, cd_rate=0.0)
    feed = make_feed(ds, config)
    feed.shuffle(torch.Generator().manual_seed(0))
    batch = feed.draw_training_batch(feed.step_trials(0), config)
    weights = loss_weights(family_of(model).loss_weights, config, 1.0, 1.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()

    def step():
        loss, _ = model.loss(batch, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()

    B, T = batch.target.shape[:2]
    g_init = torch.randn(B, 3, requires_grad=True)
    ext = torch.zeros(B, T, 0)

    def generator():
        states, factors, *_ = model.decode(g_init, None, ext, lambda v, site: v, lambda site: None, None)
        (states.sum() + factors.sum()).backward()

    result = {"batch_size": B, "n_bins": T, "solver": args.solver, "substeps": args.substeps,
              "generator_ms": cpu_ms(generator, args.repeats), "step_ms": cpu_ms(step, args.repeats),
              "lfads_nb": os.path.dirname(lfads_nb.__file__)}
    print(f"NODE-3, batch {B} x {T} bins, {args.solver} x {args.substeps}: generator forward+backward "
          f"{result['generator_ms']:.1f} ms, training step {result['step_ms']:.1f} ms (CPU, median of {args.repeats})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
