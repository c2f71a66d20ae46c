"""How long the default synthetic sets take to generate (the tests check what they hold, not how fast).

Times ``chaotic_rnn(seed=0)`` (4000 trials x 100 bins x 50 neurons) and
``chaotic_rnn_multisession(seed=0)`` (5 sessions), ``--repeats`` times each, in CPU seconds of
this process (``time.process_time``), which other jobs on a shared machine do not stretch, with
the wall seconds beside them. Measured about 1-3 s for the first and about 1 s for the second on
the 2-core development machine.

Usage: ``python benchmarks/generator_speed.py [--repeats 3]``. The last line printed is JSON with
the median CPU seconds of each set.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from data_generators import chaotic_rnn, chaotic_rnn_multisession  # noqa: E402

SETS = {"chaotic_rnn": lambda: chaotic_rnn(seed=0), "chaotic_rnn_multisession": lambda: chaotic_rnn_multisession(seed=0)}


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = {}
    print(f"{'set':26s} {'cpu s (median)':>15s} {'wall s (median)':>16s}")
    for name, make in SETS.items():
        cpu, wall = [], []
        for _ in range(args.repeats):
            c0, w0 = time.process_time(), time.perf_counter()
            make()
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        result[name] = statistics.median(cpu)
        print(f"{name:26s} {statistics.median(cpu):15.2f} {statistics.median(wall):16.2f}")
    print(json.dumps({"cpu_seconds": result}))
    return result


if __name__ == "__main__":
    main()
