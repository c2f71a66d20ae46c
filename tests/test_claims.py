"""Claims a tutorial declares, checked over its scores; and a measured papermill run.

``benchmarks/tutorial_claims.py`` and ``benchmarks/tutorial_costs.py`` are thin command lines over
``lfads_nb._run_notebooks``; these tests run its pieces on a two-cell notebook made here.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nbformat
import numpy as np
import pytest
import xarray as xr

from lfads_nb.errors import ConfigError
from lfads_nb._run_notebooks import check_claims, declared_claims, parse_parameter, run_measured

ROOT = Path(__file__).resolve().parents[1]

SCORES = xr.Dataset({"rate_r2": ("method", [0.5, 0.8, np.nan])}, coords={"method": ["smoothing", "lfads", "ndt"]})


def test_checks_give_one_bool_per_claim_and_nan_fails_a_claim():
    claims = [{"claim": "LFADS beats smoothing", "check": "scores.rate_r2.sel({'method': 'lfads'}) > scores.rate_r2.sel({'method': 'smoothing'}) + 0.2"},
              {"claim": "LFADS beats smoothing by 0.5", "check": "(scores.rate_r2.sel({'method': 'lfads'}) - scores.rate_r2.sel({'method': 'smoothing'})).item() > 0.5"},
              {"claim": "NDT scores", "check": "bool(scores.rate_r2.sel({'method': 'ndt'}) > 0)"},
              {"claim": "every score is finite", "check": "bool(np.isfinite(scores.rate_r2).all())"}]
    assert check_claims(claims, SCORES) == [True, False, False, False]


@pytest.mark.parametrize("check, problem", [("scores.rate_r2 > 0", "not one bool"),
                                            ("scores.no_such_score > 0", "AttributeError"),
                                            ("open('x')", "NameError")])
def test_a_check_that_is_not_one_bool_names_its_claim(check, problem):
    with pytest.raises(ConfigError, match=f"'a claim'.*{problem}"):
        check_claims([{"claim": "a claim", "check": check}], SCORES)


def _notebook(path: Path, claims) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('seed: int = 0  # seed\nscores_path: str = "scores.nc"  # table')
    params.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "import numpy as np, xarray as xr\n"
        "x = np.random.default_rng(seed).normal(size=200_000)\n"
        "xr.Dataset({'rate_r2': ('method', [0.1 * seed, 0.5])}, coords={'method': ['a', 'b']})"
        ".to_netcdf(scores_path, engine='h5netcdf')")
    nb.cells = [params, body]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["lfads_nb"] = {"claims": claims}
    nbformat.write(nb, path)
    return path


def test_declared_claims_are_read_and_a_malformed_one_is_refused(tmp_path):
    good = [{"claim": "b beats a", "check": "bool(scores.rate_r2.sel({'method': 'b'}) > scores.rate_r2.sel({'method': 'a'}))"}]
    assert declared_claims(_notebook(tmp_path / "01_good.ipynb", good)) == good
    with pytest.raises(ConfigError, match="claim 0 must be"):
        declared_claims(_notebook(tmp_path / "02_bad.ipynb", [{"claim": "no check"}]))
    with pytest.raises(SyntaxError):
        declared_claims(_notebook(tmp_path / "03_syntax.ipynb", [{"claim": "c", "check": "scores >"}]))


def test_parameters_from_the_command_line_are_literals_or_strings():
    assert parse_parameter("seed=2") == ("seed", 2)
    assert parse_parameter("sweep_hz=[4.0, 6.0]") == ("sweep_hz", [4.0, 6.0])
    assert parse_parameter("system=rossler") == ("system", "rossler")
    with pytest.raises(ConfigError, match="name=value"):
        parse_parameter("seed 2")


def _benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_claims_per_seed_from_measured_papermill_runs(tmp_path):
    """tutorial_claims' run of one seed: papermill in a child process, measured, then every check
    over the scores that run wrote (seed 0 gives a = 0 < b, seed 6 gives a = 0.6 > b)."""
    notebook = _notebook(tmp_path / "07_tiny.ipynb", [
        {"claim": "b beats a", "check": "bool(scores.rate_r2.sel({'method': 'b'}) > scores.rate_r2.sel({'method': 'a'}))"}])
    claims_script = _benchmark("tutorial_claims")
    rows = [claims_script.run_seed(notebook, seed, tmp_path / "runs", {}) for seed in (0, 6)]
    assert [r["held"] for r in rows] == [[True], [False]]
    assert all(r["error"] is None and r["cpu_s"] > 0 for r in rows)
    assert rows[0]["peak_mb"] > 20  # the kernel's resident set, not the launcher's alone

    cost = run_measured(notebook, tmp_path / "cost", {"seed": 1})
    assert cost.error is None and cost.written_mb > 0 and cost.cpu_s > 0
    injected = "".join(json.loads(cost.executed.read_text())["cells"][1]["source"])
    assert "seed = 1" in injected  # papermill's injected parameters cell


def test_a_failing_run_reports_its_error(tmp_path):
    notebook = _notebook(tmp_path / "08_fails.ipynb", [])
    cost = run_measured(notebook, tmp_path / "run", {"seed": "not a number"})
    assert cost.error is not None and "TypeError" in cost.error
