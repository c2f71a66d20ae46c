"""Do a tutorial's declared claims hold on several seeds?

Each tutorial 02-09 declares the claims its answers and summary make about results, in its
metadata (``{"lfads_nb": {"claims": [{"claim": sentence, "check": expression}, ...]}}``), each check
a Python expression over ``scores`` (the Dataset the tutorial writes to ``scores_path``), ``np``
and ``xr``. This script runs each named tutorial (all that declare claims when none is named) at
its defaults with papermill, once per seed (``-p seed=k``, default 0 1 2), evaluates every check
on every run and prints a claim x seed table. A claim that fails on any seed is not taught.

Runs go to ``--out/<tutorial>/seed<k>/`` (executed copy, scores, papermill.log), each in a new
folder; ``--jobs 2`` runs two at once (CPU seconds then stay comparable, wall times do not).

Usage: ``python benchmarks/tutorial_claims.py [05 06 ...] [--seeds 0 1 2] [-p name=value] [--jobs 1]``.
The last line printed is JSON: per tutorial, each claim with whether it held per seed.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import xarray as xr

from lfads_nb._run_notebooks import check_claims, declared_claims, find_tutorials, parse_parameter, run_measured

ROOT = Path(__file__).resolve().parents[1]
SCORES = "claims_scores.nc"


def run_seed(notebook: Path, seed: int, out: Path, parameters: dict) -> dict:
    run_dir = out / notebook.stem / f"seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cost = run_measured(notebook, run_dir, {**parameters, "seed": seed, "scores_path": SCORES})
    row = {"seed": seed, "cpu_s": round(cost.cpu_s, 1), "peak_mb": round(cost.peak_mb), "error": cost.error,
           "held": None}
    if cost.error is None:
        with xr.open_dataset(run_dir / SCORES, engine="h5netcdf") as scores:
            row["held"] = check_claims(declared_claims(notebook), scores.load())
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tutorials", nargs="*", help="numbers or names (default: every tutorial with claims)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                        help="papermill parameter for every run (repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once")
    parser.add_argument("--out", default=str(ROOT / "build" / "claims"), help="folder for the runs")
    args = parser.parse_args(argv)
    parameters = dict(parse_parameter(p) for p in args.parameter)
    notebooks = [nb for nb in find_tutorials(ROOT / "tutorials", args.tutorials)
                 if args.tutorials or declared_claims(nb)]
    jobs = [(nb, seed) for nb in notebooks for seed in args.seeds]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(lambda job: run_seed(*job, Path(args.out), parameters), jobs))
    result = {}
    for nb in notebooks:
        claims = declared_claims(nb)
        runs = [r for (n, _), r in zip(jobs, rows) if n == nb]
        print(f"\n{nb.stem}: {len(claims)} claims, seeds {' '.join(str(r['seed']) for r in runs)}")
        print("  " + " ".join(f"{'s' + str(r['seed']):>5}" for r in runs) + "  claim")
        entries = []
        for i, c in enumerate(claims):
            held = [None if r["held"] is None else r["held"][i] for r in runs]
            marks = " ".join(f"{'-' if h is None else ('yes' if h else 'NO'):>5}" for h in held)
            print(f"  {marks}  {c['claim']}")
            entries.append({"claim": c["claim"], "held": held})
        for r in runs:
            last_line = (r["error"] or "").strip().splitlines()[-1:] or ["(its log is empty)"]
            state = "ok" if r["error"] is None else "FAILED: " + last_line[0][:200]
            print(f"  seed {r['seed']}: {r['cpu_s']:.0f} CPU s, {r['peak_mb']} MB peak, {state}")
        held_on_all = sum(all(h is True for h in e["held"]) for e in entries)
        print(f"  held on every seed: {held_on_all} of {len(claims)}")
        result[nb.stem] = {"seeds": [r["seed"] for r in runs], "claims": entries, "held_on_all": held_on_all,
                           "declared": len(claims), "cpu_s": [r["cpu_s"] for r in runs],
                           "peak_mb": [r["peak_mb"] for r in runs], "ok": [r["error"] is None for r in runs]}
    print(json.dumps({"parameters": parameters, "tutorials": result}))
    return result


if __name__ == "__main__":
    outcome = main()
    sys.exit(0 if all(t["held_on_all"] == t["declared"] and all(t["ok"]) for t in outcome.values()) else 1)
