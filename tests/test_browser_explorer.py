"""The explorer (lfads_nb.explore) in a real JupyterLab, driven by headless Chromium.

The JupyterLab server is tests/test_browser.py's (``Lab``: free port, token, temporary dirs). The
notebook builds a small chaotic-RNN dataset and an LFADS model with a controller (untrained: the
links, not the fit, are under test), infers, and shows ``lfads_nb.explore(out, ds)``; the kernel
is one jupyter_server started, so the explorer chooses its live widgets by itself.
tests/browser/drive_explorer.mjs runs all cells, reads what plotly drew, picks another trial in the
trial dropdown, clicks the time slider's track, and reads the figures after each step. This test
checks what the browser showed against the same explorer built here from the same seeded data:
the highlighted path is the picked trial's, the time marker is that trial's state at the bin the
slider reads, and the panels' time lines moved to that bin's time. Screenshots and the driver's
record go to test-artifacts/browser-explorer/.

Needs what tests/test_browser.py needs (Chromium, node, ``npm ci`` in tests/browser).
"""
from __future__ import annotations

import os

import nbformat
import numpy as np
import pytest
from test_browser import CHROMIUM, REPO, lab, run_driver  # noqa: F401 (lab: the JupyterLab fixture)

import lfads_nb

DRIVER = REPO / "tests" / "browser" / "drive_explorer.mjs"
ARTIFACTS = REPO / "test-artifacts" / "browser-explorer"
# Seconds; every wait is bounded. A passing run takes 60-100 s on 2 busy cores (the widgets' first
# render waits for plotly's code); DRIVER_LIMIT caps the sum.
TIMEOUTS = {"action": 10, "load": 25, "explorer": 90, "update": 20}
DRIVER_LIMIT = 200
TRIAL_INDEX = 7  # the trial dropdown's option picked (the explorer starts at option 0)
SLIDER_FRACTION = 0.75

SETUP = (
    "import lfads_nb\n"
    "from data_generators import chaotic_rnn\n"
    "ds = chaotic_rnn(seed=0, n_conditions=3, trials_per_condition=4, n_units=10, n_bins=30)\n"
    "model = lfads_nb.build_model(ds, seed=0, co_dim=2, ic_enc_dim=6, ci_enc_dim=5, con_dim=5, ic_dim=4,\n"
    "                             gen_dim=6, fac_dim=4)\n"
    "out = lfads_nb.infer(model, ds)"
)


def _setup() -> dict:
    namespace: dict = {}
    exec(SETUP, namespace)  # the notebook's own code, so both sides see the same data and model
    return namespace


def _notebook(path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(SETUP), nbformat.v4.new_code_cell("lfads_nb.explore(out, ds)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, path)


def _drive(lab, tmp_path) -> dict:
    config = {
        "baseUrl": lab.url, "token": lab.token, "notebook": "explorer.ipynb", "chromium": CHROMIUM,
        "userDataDir": str(tmp_path / "chromium-profile"), "trialIndex": TRIAL_INDEX,
        "sliderFraction": SLIDER_FRACTION, "timeouts": TIMEOUTS,
    }
    return run_driver(DRIVER, config, tmp_path, ARTIFACTS, DRIVER_LIMIT)


def _trace(stage, name):
    return next(t for f in stage for t in f["traces"] if t["name"] == name)


def _figure_with(stage, name):
    return next(f for f in stage if any(t["name"] == name for t in f["traces"]))


def test_explorer_follows_trial_picker_and_time_slider_in_jupyterlab(lab, tmp_path):
    _notebook(lab.root / "explorer.ipynb")
    result = _drive(lab, tmp_path)
    report = f"{result.get('error', '')}\n{result['log']}\nJupyterLab log:\n{lab.log()}"
    assert "error" not in result, report
    assert not result["pageErrors"] and all(o["stderr"] == 0 for o in result["outputs"]), report

    # The same explorer, built here from the same seeded data and model.
    ns = _setup()
    reference = lfads_nb.explore(ns["out"], ns["ds"], live=False)
    trials = reference.trials
    initial, picked, moved = (result["stages"][k] for k in ("initial", "trial", "time"))

    # Both figures are there, at the first trial and bin 0.
    assert len(initial) == 2, report
    np.testing.assert_allclose(_trace(initial, "selected trial")["x"], reference.paths[0, :3, 0], rtol=1e-5, atol=1e-6)
    assert f"trial {trials[0]}," in _figure_with(initial, "selected trial")["title"], report

    # Picking another trial: the highlighted path and the data heatmap are the new trial's.
    trial = trials[TRIAL_INDEX]
    assert result["pickedLabel"] == str(trial), report
    np.testing.assert_allclose(_trace(picked, "selected trial")["x"], reference.paths[TRIAL_INDEX, :3, 0],
                               rtol=1e-5, atol=1e-6)
    assert _trace(picked, "spikes")["checksum"] == pytest.approx(float(ns["ds"].spikes.sel(trial=trial).sum()))
    assert _trace(picked, "spikes")["checksum"] != _trace(initial, "spikes")["checksum"], report
    assert all(f"trial {trial}," in f["title"] for f in picked), report

    # Moving the slider: the marker and the time lines of every panel go to the bin it reads.
    index = int(result["sliderReadout"])
    assert index > 0, report
    t = float(ns["ds"].time.values[index])
    marker = _trace(moved, "time marker")["x"][0]
    assert marker == pytest.approx(reference.paths[TRIAL_INDEX, index, 0], rel=1e-5, abs=1e-6), report
    panels = _figure_with(moved, "spikes")["shapes"]
    assert len(panels) == 3 and all(x == pytest.approx(t) for x in panels), report
    assert all(f"t = {t:.3f} s" in f["title"] for f in moved), report
    assert len(result["screenshots"]) == 3 and all(os.path.getsize(p) > 10_000 for p in result["screenshots"])
