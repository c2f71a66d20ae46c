"""What each tutorial costs at its defaults: CPU seconds, peak memory and bytes written.

Runs the named tutorials (all when none is named) one after the other with papermill, each in a
new folder under ``--out``, at their defaults or with the ``-p name=value`` parameters given, one
torch thread (``OMP_NUM_THREADS=1`` unless set), no live dashboards. CPU seconds are the user +
system time of the run and its kernel, which other jobs on a shared machine stretch less than
wall time; peak memory is the kernel's largest resident set. The README's and the tutorials'
stated times come from this script.

Usage: ``python benchmarks/tutorial_costs.py [05 06 ...] [-p seed=1] [--out build/costs]``.
The last line printed is JSON: one entry per tutorial.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from lfads_nb._run_notebooks import find_tutorials, parse_parameter, run_measured

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tutorials", nargs="*", help="numbers or names (default: all)")
    parser.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                        help="papermill parameter for every run (repeatable)")
    parser.add_argument("--out", default=str(ROOT / "build" / "costs"), help="folder for the runs")
    args = parser.parse_args(argv)
    parameters = dict(parse_parameter(p) for p in args.parameter)
    result = {}
    print(f"{'tutorial':<32} {'CPU s':>8} {'wall s':>8} {'peak MB':>8} {'written MB':>11}  status", flush=True)
    for notebook in find_tutorials(ROOT / "tutorials", args.tutorials):
        run_dir = Path(args.out) / notebook.stem
        shutil.rmtree(run_dir, ignore_errors=True)  # a new folder: no checkpoint of an earlier run resumes
        cost = run_measured(notebook, run_dir, parameters)
        status = "ok" if cost.error is None else f"FAILED (see {cost.executed})"
        print(f"{notebook.stem:<32} {cost.cpu_s:>8.0f} {cost.wall_s:>8.0f} {cost.peak_mb:>8.0f} "
              f"{cost.written_mb:>11.1f}  {status}", flush=True)
        result[notebook.stem] = {"cpu_s": round(cost.cpu_s, 1), "wall_s": round(cost.wall_s, 1),
                                 "peak_mb": round(cost.peak_mb), "written_mb": round(cost.written_mb, 1),
                                 "ok": cost.error is None}
    total = sum(r["cpu_s"] for r in result.values())
    print(f"{'total':<32} {total:>8.0f}")
    print(json.dumps({"parameters": parameters, "tutorials": result, "total_cpu_s": round(total, 1)}))
    return result


if __name__ == "__main__":
    sys.exit(0 if all(r["ok"] for r in main().values()) else 1)
