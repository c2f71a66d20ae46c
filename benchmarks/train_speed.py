"""Training speed of LFADS on the peer benchmark set, in lfads-torch's setting.

The peer setting (reference section 1): lfads-torch's architecture without a controller
(ic_enc 64, gen 100, factors 20, ic 64, co_dim 0, dropout 0.05), batch 32, the 640 training
trials of the chaotic RNN benchmark preset (50 neurons x 100 bins of 10 ms, gain 2.5), float32,
one CPU thread; Adam (lr 4e-3) with gradient-norm clipping at 200, the training loss of
``lfads_nb.training`` with coordinated dropout 0.3.

This script times lfads_nb only. lfads-torch is not run here: its figures are printed as a
recorded reference (``RECORDED_REFERENCE``, with its source and date), never as a ratio to this
run's timing, since the machine, its load and the code may have changed since.

An epoch here is one pass over the 640 training trials (20 optimiser steps) followed by a
validation pass over the 160 validation trials (posterior means, no gradient), as in a
training run. Timed after ``--warmup`` epochs; the table gives the median and the best epoch.

Achieved GFLOP/s counts the model's multiply-adds analytically (``forward_macs``): every
matmul of the forward pass (input projections, recurrences, linear maps, readouts), times 2
flops per multiply-add, times 3 for forward + backward (the backward pass costs about two
forwards: one for the input gradients, one for the weight gradients); validation forwards
count once. Elementwise work (gates, loss, Adam) is not counted. For scale, the same run
times torch.mm at a size like the generator's recurrent matmul (32x100 @ 100x300) and at
1024x1024 @ 1024x1024, the machine's fp32 matmul peak for one thread.

Wall-clock seconds are the headline; the CPU seconds of this process are printed beside them
because other jobs on a shared machine stretch wall time (a note says when).

Usage: ``python benchmarks/train_speed.py [--epochs 5] [--warmup 1] [--co-dim 0] [--cd-rate 0.3]``.
The last line printed is JSON with the headline figures (the recorded reference under
``recorded_reference``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data_generators import chaotic_rnn_benchmark  # noqa: E402
from lfads_nb.models.lfads import LFADS, LFADSConfig  # noqa: E402
from lfads_nb.transforms import coordinated_dropout, make_batch  # noqa: E402

RECORDED_REFERENCE = {  # copied from a past side-by-side run, not measured by this script
    "source": "lfads-torch (commit 007a555) and lfads_nb run side by side on the development machine, "
              "same trials, 1 thread",
    "date": "2026-11-30",
    "s_per_epoch": {"lfads_torch": {"no_controller": 3.19, "controller": 6.40},
                    "lfads_nb": {"no_controller": 1.04, "controller": 2.38}},
    "valid_rate_r2_0.77": {"lfads_nb": "reached after 126 s",
                           "lfads_torch": "not reached within 660 s (best 0.754)"},
}
PEER = dict(ic_enc_dim=64, ci_enc_dim=64, con_dim=64, gen_dim=100, fac_dim=20, ic_dim=64, dropout=0.05)


def forward_macs(c: LFADSConfig, B: int, T: int, n_params: int = 1) -> int:
    """Multiply-adds of one forward pass over a batch of B trials of T bins."""
    E, G, F = c.encod_dim, c.gen_dim, c.fac_dim

    def bigru(H):  # both directions: input projection + recurrent matmuls (3 gate blocks)
        return 2 * B * T * (E * 3 * H + H * 3 * H)

    macs = bigru(c.ic_enc_dim) + B * 2 * c.ic_enc_dim * 2 * c.ic_dim + B * c.ic_dim * G
    macs += B * T * ((c.co_dim + c.ext_input_dim) * 3 * G + G * 3 * G)  # generator
    macs += B * T * (G * F + F * c.n_neurons * n_params)  # factors, observation readout
    if c.co_dim:
        C = c.con_dim
        macs += bigru(c.ci_enc_dim)
        macs += B * T * ((2 * c.ci_enc_dim + F) * 3 * C + C * 3 * C + C * 2 * c.co_dim)
    return macs


def matmul_gflops(m: int, k: int, n: int, seconds: float = 0.5) -> float:
    """Best-of-5 fp32 torch.mm throughput (GFLOP/s) at size (m x k) @ (k x n).

    Timed in CPU seconds of this process, so other jobs on the machine do not lower it.
    """
    a, b = torch.randn(m, k), torch.randn(k, n)
    out = torch.empty(m, n)
    for _ in range(3):
        torch.mm(a, b, out=out)
    t0 = time.process_time()
    reps = 0
    while time.process_time() - t0 < 0.05:
        torch.mm(a, b, out=out)
        reps += 1
    reps = max(1, int(reps * seconds / 0.05 / 5))
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        best = min(best, (time.process_time() - t0) / reps)
    return 2 * m * k * n / best / 1e9


def train_step(model, optimizer, x, cd_rate, kl_scale=1e-4, l2_scale=1e-4, grad_clip=200.0):
    """One optimiser step with lfads_nb's training objective (``LFADS.loss``: ramps at 1,
    coordinated dropout)."""
    batch = make_batch(x, torch.ones(x.shape[-1], dtype=torch.bool))
    batch = coordinated_dropout(batch, cd_rate, torch.rand(x.shape))
    weights = {"kl_ic_scale": kl_scale, "kl_co_scale": kl_scale, "l2_gen_scale": l2_scale, "l2_con_scale": l2_scale,
               "kl_ramp": 1.0, "l2_ramp": 1.0}
    loss, _ = model.loss(batch, weights)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.detach()


def run_epoch(model, optimizer, train, valid, batch_size, cd_rate) -> dict:
    """One training pass plus one validation pass: wall and CPU seconds, mean training loss."""
    t0, c0 = time.perf_counter(), time.process_time()
    model.train()
    order = torch.randperm(len(train))
    batches = [order[i : i + batch_size] for i in range(0, len(train), batch_size)]
    losses = [train_step(model, optimizer, train[idx], cd_rate) for idx in batches]
    t_train = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(valid), batch_size):
            model(valid[i : i + batch_size], sample=False)
    return {
        "train": t_train,
        "wall": time.perf_counter() - t0,
        "cpu": time.process_time() - c0,
        "loss": float(torch.stack(losses).mean()),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs first")
    parser.add_argument("--co-dim", type=int, default=0, help="inferred input dims (0: the peer setting)")
    parser.add_argument("--cd-rate", type=float, default=0.3, help="coordinated dropout rate")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    ds = chaotic_rnn_benchmark(args.seed)
    spikes = torch.tensor(np.asarray(ds["spikes"].values, dtype=np.float32))
    split = ds["split"].values
    train, valid = spikes[split == "train"], spikes[split == "valid"]
    n_trials, T, N = train.shape
    batch_size = 32

    config = LFADSConfig(n_neurons=N, co_dim=args.co_dim, **PEER)
    model = LFADS(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=4e-3)

    mm_small = matmul_gflops(batch_size, config.gen_dim, 3 * config.gen_dim)
    mm_large = matmul_gflops(1024, 1024, 1024)

    for _ in range(args.warmup):
        run_epoch(model, optimizer, train, valid, batch_size, args.cd_rate)
    epochs = [run_epoch(model, optimizer, train, valid, batch_size, args.cd_rate) for _ in range(args.epochs)]
    t_epoch = statistics.median(e["wall"] for e in epochs)
    t_best = min(e["wall"] for e in epochs)
    t_train = statistics.median(e["train"] for e in epochs)
    t_cpu = statistics.median(e["cpu"] for e in epochs)

    flops = 2 * (3 * forward_macs(config, n_trials, T) + forward_macs(config, len(valid), T))
    gflops = flops / t_epoch / 1e9
    result = {
        "device": "cpu",
        "threads": args.threads,
        "co_dim": args.co_dim,
        "train_trials": n_trials,
        "batch_size": batch_size,
        "s_per_epoch": round(t_epoch, 4),
        "s_per_epoch_best": round(t_best, 4),
        "s_per_epoch_train_only": round(t_train, 4),
        "cpu_s_per_epoch": round(t_cpu, 4),
        "gflop_per_epoch": round(flops / 1e9, 3),
        "achieved_gflops": round(gflops, 2),
        "achieved_gflops_cpu_time": round(flops / t_cpu / 1e9, 2),
        "mm_32x100x300_gflops": round(mm_small, 1),
        "mm_1024_gflops": round(mm_large, 1),
        "final_train_loss": round(epochs[-1]["loss"], 4),
        "recorded_reference": RECORDED_REFERENCE,
    }
    rows = [
        ("seconds per epoch (median, train + valid, wall)", f"{t_epoch:.3f}"),
        ("seconds per epoch (best epoch, wall)", f"{t_best:.3f}"),
        ("seconds per epoch (train pass only, wall)", f"{t_train:.3f}"),
        ("CPU seconds per epoch (this process)", f"{t_cpu:.3f}"),
        ("model GFLOP per epoch (analytic)", f"{flops / 1e9:.2f}"),
        ("achieved GFLOP/s (wall)", f"{gflops:.1f}"),
        (f"torch.mm {batch_size}x{config.gen_dim} @ {config.gen_dim}x{3 * config.gen_dim} GFLOP/s", f"{mm_small:.1f}"),
        ("torch.mm 1024^3 GFLOP/s (peak)", f"{mm_large:.1f}"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"LFADS training speed: {n_trials} trials x {T} bins x {N} neurons, batch {batch_size}, "
          f"co_dim {args.co_dim}, {args.threads} thread(s), {args.epochs} timed epochs")
    for name, value in rows:
        print(f"  {name:<{width}}  {value:>8}")
    if t_cpu < 0.9 * t_epoch * args.threads:
        print(f"  note: this process got {t_cpu / t_epoch:.0%} of a CPU; other load inflates the wall times")
    ref = RECORDED_REFERENCE
    kind = "no_controller" if args.co_dim == 0 else "controller"
    print(f"Recorded reference, not measured in this run ({ref['date']}; {ref['source']}):")
    print(f"  s/epoch {kind.replace('_', ' ')}: lfads-torch {ref['s_per_epoch']['lfads_torch'][kind]:.2f}, "
          f"lfads_nb {ref['s_per_epoch']['lfads_nb'][kind]:.2f}")
    r2 = ref["valid_rate_r2_0.77"]
    print(f"  valid rate R^2 0.77: lfads_nb {r2['lfads_nb']}; lfads-torch {r2['lfads_torch']}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
