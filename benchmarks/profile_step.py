"""Where one training step's time goes: LFADS with and without a controller, the NODE generator
and NDT, each at a tutorial's size, one CPU thread, CPU seconds of this process.

Cases (model sizes, data and batch as the tutorials and ``train_speed.py`` train them):

- ``lfads_co0``: lfads-torch's architecture without a controller on the chaotic RNN benchmark
  (``train_speed.py``'s peer setting: ic_enc 64, gen 100, factors 20, ic 64, batch 32, 50
  neurons x 100 bins, coordinated dropout 0.3).
- ``lfads_co4``: the same with a controller (co_dim 4, ci_enc 64, con 64): tutorial 02's defaults.
- ``node``: tutorial 08 part 1's NODE-3 (a 3-D neural-ODE generator, MLP 128, Euler, ic_enc 32,
  no dropout, no controller) on Lorenz spikes (10 neurons x 70 bins), batch 50 at lr 2e-3 (the
  attractor recipe's, ``lfads_nb.recipes.ATTRACTOR_TRAINING``).
- ``ndt``: tutorial 10's NDT (d_model 32, 2 layers, context 10 / 10) on chaotic-RNN
  spikes (50 neurons x 100 bins), batch 32.

One step is what ``lfads_nb.training.train`` does per batch: build the training batch (masks,
coordinated dropout), the model's ``loss``, ``backward``, gradient-norm clipping and Adam.
Forward parts are timed by wrapping the model's own methods with ``time.process_time`` timers
(median over ``--steps`` steps after ``--warmup``); "forward, other" is the rest of ``loss``
(read-in, dropout masks, noise, posterior samples, KL terms). Backward runs as one call, so its
parts come from a ``torch.profiler`` pass over three steps: each backward node's time goes to
the forward part that created it (matched by autograd sequence number), and the shares are
applied to the timed backward. The last line, "outside torch operators", is the share of that
profiled pass not spent inside any torch operator: Python, argument parsing, dispatch and
autograd bookkeeping (the profiler's own cost per operator inflates it).

Usage: ``python benchmarks/profile_step.py [--cases lfads_co0 lfads_co4 node ndt] [--steps 15]``.
Prints a table per case and, last, one JSON line (ms per step by part, per case).
"""
from __future__ import annotations

import argparse
import bisect
import functools
import json
import os
import statistics
import time
from collections import defaultdict

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from data_generators import attractor, chaotic_rnn, chaotic_rnn_benchmark  # noqa: E402
from lfads_nb.models.registry import build_model, family_of  # noqa: E402
from lfads_nb.training.feed import make_feed  # noqa: E402
from lfads_nb.training.loop import TrainConfig, loss_weights  # noqa: E402

PEER = dict(ic_enc_dim=64, ci_enc_dim=64, con_dim=64, gen_dim=100, fac_dim=20, ic_dim=64, dropout=0.05)


def cases() -> dict:
    """name -> (dataset factory, build_model keywords, TrainConfig keywords)."""
    return {
        "lfads_co0": (lambda: chaotic_rnn_benchmark(0), {**PEER, "co_dim": 0}, dict(lr=4e-3, cd_rate=0.3)),
        "lfads_co4": (lambda: chaotic_rnn_benchmark(0), {**PEER, "co_dim": 4}, dict(lr=4e-3, cd_rate=0.3)),
        "node": (lambda: attractor("lorenz", seed=0, n_trials=1000, n_neurons=10),
                 dict(generator="node", co_dim=0, gen_dim=3, fac_dim=3, ic_dim=3, ic_enc_dim=32, dropout=0.0),
                 dict(lr=2e-3, cd_rate=0.0, batch_size=50)),
        "ndt": (lambda: chaotic_rnn(seed=0, gain=2.5, rate_map="tanh", n_conditions=100, trials_per_condition=8),
                dict(model="ndt", d_model=32, n_layers=2, context_backward=10, context_forward=10),
                dict(lr=3e-3, cd_rate=0.0)),
    }


def forward_parts(model) -> dict[str, list[tuple[object, str]]]:
    """Part name -> the (object, method name) pairs of the model's forward pass it times."""
    if hasattr(model, "layers"):  # NDT
        parts = {"embedding": [(model, "embedding")]}
        parts.update({f"transformer layer {i}": [(model.layers, str(i))] for i in range(len(model.layers))})
    else:  # LFADS; before LFADS.encode (f6fff31) its two encoders ran one after the other
        encoders = [(model, "encode")] if hasattr(model, "encode") else [(model, "encode_ic"),
                                                                          (model, "encode_controller_inputs")]
        parts = {"encoders (IC, CI)": encoders, "controller + generator": [(model, "decode")]}
    parts["observation readout"] = [(model.session, "observation")]
    parts["loss (objective)"] = [(model, "objective")]
    return parts


class Timers:
    """process_time accumulators per part, and record_function labels for the profiler."""

    def __init__(self):
        self.now: dict[str, float] = defaultdict(float)

    def wrap(self, name: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            with torch.profiler.record_function(f"part::{name}"):
                t0 = time.process_time()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.now[name] += time.process_time() - t0
        return timed

    def time(self, name: str, fn, *args, **kwargs):
        return self.wrap(name, fn)(*args, **kwargs)


def instrument(model, timers: Timers) -> None:
    for name, owner, attr in ((n, o, a) for n, pairs in forward_parts(model).items() for o, a in pairs):
        if isinstance(owner, torch.nn.ModuleList):
            layer = owner[int(attr)]
            layer.forward = timers.wrap(name, layer.forward)
        elif isinstance(getattr(owner, attr), torch.nn.Module):
            module = getattr(owner, attr)
            module.forward = timers.wrap(name, module.forward)
        else:
            setattr(owner, attr, timers.wrap(name, getattr(owner, attr)))


def make_step(model, feed, config, timers: Timers):
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    weights = loss_weights(family_of(model).loss_weights, config, 1.0, 1.0)
    n_train = feed.sessions[None].tensors.data.shape[0]

    def step():
        trials = {None: torch.randint(n_train, (config.batch_size,))}
        batch = timers.time("batch (masks, coordinated dropout)", feed.draw_training_batch, trials, config)
        loss, _ = timers.time("forward (loss)", model.loss, batch, weights)
        timers.time("zero_grad", optimizer.zero_grad, set_to_none=True)
        with torch.profiler.record_function("part::backward"):
            timers.time("backward", loss.backward)
        timers.time("clip_grad_norm", torch.nn.utils.clip_grad_norm_, model.parameters(), config.grad_clip)
        timers.time("optimiser (Adam)", optimizer.step)

    return step


def backward_shares(prof, forward_names: list[str]) -> tuple[dict[str, float], float]:
    """Each forward part's share of the backward pass (by autograd sequence number), and the
    CPU time inside torch operators during the profiled steps (microseconds)."""
    events = prof.events()
    regions = sorted(((e.time_range.start, e.time_range.end, e.name[len("part::"):]) for e in events
                      if e.name.startswith("part::") and e.name[len("part::"):] in forward_names),
                     key=lambda r: r[1] - r[0])  # innermost first
    owner = {}
    for e in events:
        if e.sequence_nr is None or e.sequence_nr < 0 or e.name.startswith("autograd::") or e.name.startswith("part::"):
            continue
        for start, end, name in regions:
            if start <= e.time_range.start and e.time_range.end <= end:
                owner.setdefault(e.sequence_nr, name)
                break
        else:
            owner.setdefault(e.sequence_nr, "forward, other")
    shares: dict[str, float] = defaultdict(float)
    for e in events:
        if e.name.startswith("autograd::engine::evaluate_function"):
            shares[owner.get(e.sequence_nr, "forward, other")] += e.cpu_time_total
    total = sum(shares.values()) or 1.0
    op_time = sum(e.self_cpu_time_total for e in events if e.name.startswith("aten::"))
    return {k: v / total for k, v in shares.items()}, op_time


def profile_case(name: str, steps: int, warmup: int) -> dict:
    make_ds, sizes, train_kw = cases()[name]
    ds = make_ds()
    config = TrainConfig(**train_kw)
    torch.manual_seed(0)
    model = build_model(ds, config, seed=0, **sizes).train()
    feed = make_feed(ds, config)
    timers = Timers()
    instrument(model, timers)
    step = make_step(model, feed, config, timers)
    for _ in range(warmup):
        step()
    per_step, totals = defaultdict(list), []
    for _ in range(steps):
        timers.now.clear()
        t0 = time.process_time()
        step()
        totals.append(time.process_time() - t0)
        for part, seconds in timers.now.items():
            per_step[part].append(seconds)
    median = {part: statistics.median(v) for part, v in per_step.items()}
    total = statistics.median(totals)

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()  # the profiler's clock
        for _ in range(3):
            step()
        profiled = time.perf_counter() - t0
    fwd_names = list(forward_parts(model))
    shares, op_us = backward_shares(prof, fwd_names)

    rows = {}
    fwd_total = median.pop("forward (loss)")
    for part in fwd_names:
        if part in median:
            rows[f"forward: {part}"] = median.pop(part)
    rows["forward: other (read-in, masks, noise, KL)"] = fwd_total - sum(v for k, v in rows.items())
    backward = median.pop("backward")
    for part in fwd_names + ["forward, other"]:
        if shares.get(part):
            rows[f"backward: {part.replace('forward, ', '')}"] = backward * shares[part]
    rows.update(median)
    rows["step outside parts (loop, randint)"] = total - sum(rows.values())
    outside = max(0.0, 1 - op_us / 1e6 / profiled)
    return {"total": total, "rows": rows, "outside_ops": outside, "spread": (min(totals), max(totals))}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(cases()), choices=list(cases()))
    parser.add_argument("--steps", type=int, default=15, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = {}
    for name in args.cases:
        r = profile_case(name, args.steps, args.warmup)
        total = r["total"]
        lo, hi = r["spread"]
        print(f"\n{name}: {total * 1e3:.1f} ms CPU per training step (median of {args.steps}; "
              f"range {lo * 1e3:.1f}-{hi * 1e3:.1f})")
        width = max(len(k) for k in r["rows"])
        for part, seconds in r["rows"].items():
            print(f"  {part:<{width}}  {seconds * 1e3:8.2f} ms  {seconds / total:6.1%}")
        print(f"  profiled: {r['outside_ops']:.0%} of the step outside torch operators (Python, dispatch, autograd)")
        result[name] = {"ms_per_step": round(total * 1e3, 2),
                        "parts_ms": {k: round(v * 1e3, 3) for k, v in r["rows"].items()},
                        "outside_ops_share_profiled": round(r["outside_ops"], 3)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
