"""Execute the numbered tutorials with papermill: ``python -m lfads_nb._run_notebooks SRC OUT``.

Each ``NN_name.ipynb`` in SRC runs end to end at its own (teaching-sized) defaults, or with
the parameters given, and the executed copy is written to OUT, which is also the working
directory, so whatever a tutorial writes lands beside it.

The same module measures a run (:func:`run_measured`: CPU seconds, peak memory, bytes written) and
reads and checks the claims a tutorial declares about its results (:func:`declared_claims`,
:func:`check_claims`); ``benchmarks/tutorial_costs.py`` and ``benchmarks/tutorial_claims.py`` are
their command lines.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from .errors import ConfigError

NOTEBOOK = re.compile(r"^\d\d_.+\.ipynb$")


def tutorial_paths(folder) -> list[Path]:
    """The numbered tutorials in ``folder``, in order."""
    return sorted(p for p in Path(folder).iterdir() if NOTEBOOK.match(p.name))


def find_tutorials(folder, names) -> list[Path]:
    """The tutorials of ``folder`` named by number ("05"), stem or file name; all when ``names`` is empty."""
    paths = tutorial_paths(folder)
    if not names:
        return paths
    chosen = []
    for name in names:
        hits = [p for p in paths if name in (p.name, p.stem, p.name[:2])]
        if len(hits) != 1:
            raise ConfigError(f"no single tutorial in {folder} is named {name!r}; "
                              f"use a number or name of: {', '.join(p.stem for p in paths)}.")
        chosen += hits
    return chosen


def execute(notebook, out_dir, parameters: dict | None = None) -> Path:
    """Run one notebook with papermill; returns the executed copy's path in ``out_dir``."""
    import papermill

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / Path(notebook).name
    papermill.execute_notebook(
        str(notebook), str(target), parameters=parameters or {}, cwd=str(out_dir),
        kernel_name="python3", progress_bar=False,
    )
    return target


@dataclass
class RunCost:
    """What one papermill run of a tutorial cost: ``cpu_s`` (user + system seconds of the run and
    its kernel), ``wall_s``, ``peak_mb`` (largest resident set of one of its processes, the
    kernel's, in MB; NaN where the platform does not say) and ``written_mb`` (files it left in its
    working directory, the executed copy excluded). ``error`` is the last lines of papermill's
    output when a cell raised, else None."""

    notebook: str
    executed: Path
    cpu_s: float
    wall_s: float
    peak_mb: float
    written_mb: float
    error: str | None


def parse_parameter(text: str) -> tuple[str, object]:
    """``"name=value"`` from a command line as (name, value): a Python literal where it parses, else the string."""
    import ast

    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise ConfigError(f"a parameter is written name=value (e.g. seed=1 or sweep_hz=[4.0]), got {text!r}.")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def run_measured(notebook, out_dir, parameters: dict | None = None) -> RunCost:
    """Execute ``notebook`` in a child process into ``out_dir`` (created; it should be new, so that no
    checkpoint of an earlier run is resumed) and measure it. One torch thread unless the caller's
    environment says otherwise (``OMP_NUM_THREADS``); no live dashboards (``LFADS_NB_LIVE=0``)."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, LFADS_NB_LIVE="0")
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [sys.executable, "-m", "lfads_nb._run_notebooks", "--one", str(Path(notebook).resolve()),
               str(out_dir), "--parameters", json.dumps(parameters or {})]
    log = out_dir / "papermill.log"
    start = time.perf_counter()
    with open(log, "w") as sink:
        child = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
        if hasattr(os, "wait4"):  # the child's rusage includes the kernel it started and waited for
            _, status, usage = os.wait4(child.pid, 0)
            child.returncode = os.waitstatus_to_exitcode(status)
            cpu = usage.ru_utime + usage.ru_stime
            peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024) / 1e6
        else:
            child.wait()
            cpu, peak = math.nan, math.nan
    wall = time.perf_counter() - start
    executed = out_dir / Path(notebook).name
    written = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file() and p not in (executed, log))
    error = None if child.returncode == 0 else "\n".join(log.read_text().splitlines()[-30:])
    return RunCost(Path(notebook).name, executed, cpu, wall, peak, written / 1e6, error)


# --- claims ---------------------------------------------------------------------------------------

_CHECK_BUILTINS = {f.__name__: f for f in (abs, all, any, bool, float, int, len, max, min, round, sorted, sum)}


def declared_claims(notebook) -> list[dict]:
    """The claims a tutorial declares in its metadata, ``{"lfads_nb": {"claims": [{"claim": sentence,
    "check": expression}, ...]}}``, each check a Python expression over ``scores`` (the Dataset the
    tutorial writes to ``scores_path``), ``np`` and ``xr`` that is True when the claim holds."""
    meta = json.loads(Path(notebook).read_text()).get("metadata", {})
    claims = meta.get("lfads_nb", {}).get("claims", [])
    for i, c in enumerate(claims):
        if not (isinstance(c, dict) and isinstance(c.get("claim"), str) and isinstance(c.get("check"), str)):
            raise ConfigError(f"{Path(notebook).name}: claim {i} must be {{'claim': sentence, 'check': expression}}, "
                              f"got {c!r}.")
        compile(c["check"], f"{Path(notebook).name} claim {i}", "eval")
    return claims


def check_claims(claims: list[dict], scores: xr.Dataset) -> list[bool]:
    """Evaluate every claim's check over ``scores``: one bool per claim. A check that raises, or that
    does not give one boolean, raises a ConfigError naming the claim (a NaN score makes a
    comparison False, so data without truth fail the claims rather than raise)."""
    held = []
    for c in claims:
        try:
            value = eval(c["check"], {"__builtins__": _CHECK_BUILTINS, "np": np, "xr": xr}, {"scores": scores})
            value = np.asarray(getattr(value, "values", value))
            if value.shape != () or value.dtype != bool:
                raise TypeError(f"it gave {value.dtype} of shape {value.shape}, not one bool (use .all() or .item())")
        except Exception as e:
            raise ConfigError(f"the check of claim {c['claim']!r} failed: {type(e).__name__}: {e}") from e
        held.append(bool(value))
    return held


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="folder with the numbered tutorials (with --one: the notebook)")
    parser.add_argument("out", help="folder for the executed notebooks")
    parser.add_argument("--one", action="store_true", help="run only the notebook SOURCE (run_measured's child)")
    parser.add_argument("--parameters", default="{}", help="papermill parameters as JSON")
    args = parser.parse_args(argv)
    if args.one:
        execute(args.source, args.out, json.loads(args.parameters))
        return 0
    for notebook in tutorial_paths(args.source):
        start = time.perf_counter()
        print(f"running {notebook.name} ...", flush=True)
        target = execute(notebook, args.out)
        print(f"  done in {time.perf_counter() - start:.0f} s -> {target}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
