"""The live training dashboard and the explorer in a real JupyterLab, driven by headless Chromium.

A JupyterLab server runs on 127.0.0.1 (a free port, a token, a temporary root and temporary
config, data, settings and runtime dirs so no user setting leaks in). The notebook is a copy of
tutorial 02 with tiny parameters and a run that only Stop can end. tests/browser/drive_lab.mjs
(playwright-core driving the system Chromium) logs in with the token, opens it, runs all cells
from the Run menu, reads the loss curve's points at two moments while training runs, clicks the
dashboard's Stop button, and waits for the notebook to halt. This test asserts on what the browser
saw and on the files the notebook left behind (checkpoints, saved inference). Screenshots and the
driver's record go to test-artifacts/browser/. The explorer's test (at the end) drives
tests/browser/drive_explorer.mjs in the same way; its artifacts go to test-artifacts/browser-explorer/.

Needs /usr/bin/chromium (or $LFADS_NB_CHROMIUM) and `npm ci` in tests/browser; .ci/run installs both.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import numpy as np
import pytest

import lfads_nb
from lfads_nb.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "browser" / "drive_lab.mjs"
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM = os.environ.get("LFADS_NB_CHROMIUM", "/usr/bin/chromium")
NODE = shutil.which("node")

# Seconds. Every wait is bounded so that even a failing run ends within 3 minutes (server start +
# driver limit + shutdown); a passing run takes 50-60 s on 2 busy cores. The driver's waits: one
# click or fill (action), login to an idle kernel (load), run-all to the dashboard on screen
# (dashboard: imports, data, the smoothing baseline, the model, and the widgets' first render,
# which waits for plotly's code: 25-30 s here), its loss curve's first points (firstPoints), the
# curve gaining points (growth), Stop to the end of training (stop), and then the rest of the
# tutorial: inference, metrics, figures, saving (finish). DRIVER_LIMIT caps their sum.
SERVER_START = 20
TIMEOUTS = {"action": 10, "load": 25, "dashboard": 45, "firstPoints": 45, "growth": 15, "stop": 20, "finish": 30}
DRIVER_LIMIT = 150


def _require_tools() -> None:
    """Fail (never skip) with the fix when the browser or the driver's packages are missing."""
    missing = []
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        missing.append(f"Chromium at {CHROMIUM} (apt-get install chromium, or set LFADS_NB_CHROMIUM)")
    if NODE is None:
        missing.append("node (apt-get install nodejs npm)")
    if not (DRIVER.parent / "node_modules" / "playwright-core").is_dir():
        missing.append("playwright-core (cd tests/browser && npm ci)")
    if missing:
        pytest.fail("The browser test needs: " + "; ".join(missing) + ". .ci/run installs all of them.")


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when pytest dies, even by SIGKILL, so that no server
    (which then shuts its kernels down) or browser outlives a killed test run. Linux only."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_settings(settings_dir: Path) -> None:
    """JupyterLab settings for an unattended run on a closed network: never fetch news or check for
    updates, and start the notebook's own kernel without asking (as 'Always start the preferred
    kernel' in the Select Kernel dialog does)."""
    settings = {
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
        "notebook-extension/tracker": {"autoStartDefaultKernel": True},
    }
    for plugin, values in settings.items():
        path = settings_dir / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


class Lab:
    """A JupyterLab server in its own process group, with its own dirs under ``base``."""

    def __init__(self, base: Path):
        self.root = base / "root"
        self.home = base / "home"
        self.runtime = base / "runtime"
        for d in (self.root, self.home, self.runtime):
            d.mkdir()
        self.port = _free_port()
        self.token = os.urandom(24).hex()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "jupyterlab.log"
        settings = self.home / "lab-settings"
        _write_settings(settings)
        # The kernel inherits this environment. LFADS_NB_LIVE is left out so that the dashboard's
        # own detection of a JupyterLab kernel is what chooses the live dashboard.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "IPYTHON", "LFADS_NB"))}
        env.update(
            HOME=str(self.home),
            JUPYTER_CONFIG_DIR=str(self.home / "config"),
            JUPYTER_DATA_DIR=str(self.home / "data"),
            JUPYTER_RUNTIME_DIR=str(self.runtime),
            JUPYTERLAB_SETTINGS_DIR=str(settings),
            JUPYTERLAB_WORKSPACES_DIR=str(self.home / "workspaces"),
            IPYTHONDIR=str(self.home / "ipython"),
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            OMP_NUM_THREADS="1",
        )
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "jupyterlab",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={self.port}",
                "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={self.token}",
                f"--ServerApp.root_dir={self.root}",
                "--ServerApp.open_browser=False",
                "--LabApp.news_url=None",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                "--LabApp.extension_manager=readonly",
                # CI containers run as root; JupyterLab refuses that unless told.
                *(["--ServerApp.allow_root=True"] if os.geteuid() == 0 else []),
            ],
            cwd=self.root, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def api(self, path: str, method: str = "GET", timeout: float = 5):
        request = urllib.request.Request(
            self.url + path, method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def wait_ready(self) -> None:
        deadline = time.monotonic() + SERVER_START
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.api("/api/status", timeout=2)
                return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"JupyterLab did not answer on {self.url} within {SERVER_START} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        """Shut down kernels and server through the API; then signals; then kill leftovers by pid."""
        if self.proc.poll() is None:
            try:
                self.api("/api/shutdown", method="POST")
            except OSError:
                pass
            _wait_or_signal(self.proc, [(15, None), (5, signal.SIGTERM), (5, signal.SIGKILL)])
        # Kernels run in their own sessions; any still alive carries our runtime dir on its command line.
        for pid in _pids_mentioning(str(self.runtime)):
            os.kill(pid, signal.SIGKILL)
        self._log.close()


def _wait_or_signal(proc: subprocess.Popen, plan) -> None:
    """For each (seconds, signal) in ``plan``: signal the process group (None: none), then wait."""
    for wait, sig in plan:
        if sig is not None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _pids_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                pids.append(int(entry.name))
    return pids


@pytest.fixture
def lab(tmp_path):
    _require_tools()
    server = Lab(tmp_path)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def run_driver(driver: Path, config: dict, tmp_path: Path, artifacts: Path, limit: int) -> dict:
    """Run the node script ``driver`` with ``config`` (plus ``artifactsDir`` and ``resultPath``), at
    most ``limit`` seconds; return the result it wrote, with its log, also saved in ``artifacts``."""
    artifacts.mkdir(parents=True, exist_ok=True)
    for old in artifacts.glob("*.png"):
        old.unlink()
    result_path = tmp_path / f"{driver.stem}-result.json"
    config = {**config, "artifactsDir": str(artifacts), "resultPath": str(result_path)}
    config_path = tmp_path / f"{driver.stem}-config.json"
    config_path.write_text(json.dumps(config))
    home = tmp_path / "browser-home"  # Chromium's crash reports and caches stay out of the user's home
    env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_CACHE_HOME=str(home / ".cache"))
    proc = subprocess.Popen(
        [NODE, str(driver), str(config_path)], cwd=driver.parent, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
    )
    try:
        log, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        _wait_or_signal(proc, [(5, signal.SIGTERM), (5, signal.SIGKILL)])  # node closes its Chromium on TERM
        log, _ = proc.communicate()
        pytest.fail(f"The browser driver {driver.name} ran past {limit} s:\n{log.decode(errors='replace')}")
    finally:
        if proc.poll() is None:
            _wait_or_signal(proc, [(0, signal.SIGKILL)])
    log = log.decode(errors="replace")
    if not result_path.exists():
        pytest.fail(f"The browser driver {driver.name} wrote no result (exit {proc.returncode}):\n{log}")
    result = json.loads(result_path.read_text())
    result["log"] = log
    (artifacts / "result.json").write_text(json.dumps(result, indent=2))
    return result


def drive(lab: Lab, notebook: str, tmp_path: Path) -> dict:
    """Run tests/browser/drive_lab.mjs against ``lab``; return what it saw (see the script)."""
    config = {
        "baseUrl": lab.url,
        "token": lab.token,
        "notebook": notebook,
        "chromium": CHROMIUM,
        "userDataDir": str(tmp_path / "chromium-profile"),
        "traceName": "training objective (recon + weighted KL and L2)",
        "minGain": 2,
        "minSeconds": 1.5,
        "stopLabel": "Stop",
        "timeouts": TIMEOUTS,
    }
    return run_driver(DRIVER, config, tmp_path, ARTIFACTS, DRIVER_LIMIT)


# ---------------------------------------------------------------------------------------------
# The notebook under test: a copy of tutorial 02 with tiny parameters
# ---------------------------------------------------------------------------------------------

TUTORIAL = REPO / "tutorials" / "02_train_lfads.ipynb"
MAX_EPOCHS = 10_000  # a fraction of a second an epoch: only the Stop button can end the run in time

# Appended to the tutorial's parameters cell (as papermill would): tiny data (100 trials) and a
# tiny model, and a run that only the Stop button ends: a huge max_epochs, and (in a cell inserted
# after the one that builds the TrainConfig) no early stopping, which this tiny model would
# otherwise reach after about 95 epochs, not far from when Stop is clicked on a slow machine.
PARAMETERS = {
    "checkpoint_dir": "checkpoints", "output_path": "inferred.nc",
    "n_conditions": 20, "trials_per_condition": 5, "max_epochs": MAX_EPOCHS, "batch_size": 20,
    "ic_enc_dim": 16, "ci_enc_dim": 16, "con_dim": 16, "ic_dim": 16, "gen_dim": 32, "fac_dim": 8,
    "n_posterior_samples": 2,
}
NO_EARLY_STOP_CELL = "config.early_stop_patience = max_epochs  # tests/test_browser.py: only Stop ends this run"

# Appended as the last cell: is the model the run returned the one in best.pt?
CHECK_CELL = (
    "from lfads_nb.checkpoint import load_checkpoint\n"
    "best = load_checkpoint(f'{checkpoint_dir}/best.pt')\n"
    "restored = all(torch.equal(w, result.model.state_dict()[k]) for k, w in best['model'].items())\n"
    "print(f'stop_reason={result.stop_reason} epochs={len(result.history)} best_epoch={result.best_epoch} '\n"
    "      f'best_pt_epoch={best[\"run_state\"][\"best_epoch\"]} best_weights_restored={restored}')"
)


def _tutorial_copy(path: Path) -> list[str]:
    """Write the test's copy of tutorial 02 to ``path``; returns its code cells' sources."""
    nb = nbformat.read(TUTORIAL, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{TUTORIAL.name} must have exactly one cell tagged 'parameters'"
    missing = [name for name in PARAMETERS if f"\n{name}:" not in "\n" + cells[0].source]
    assert not missing, f"{TUTORIAL.name}'s parameters cell no longer defines {missing}"
    cells[0].source += "\n# tests/test_browser.py: tiny data and model, and a run only Stop ends\n"
    cells[0].source += "\n".join(f"{name} = {value!r}" for name, value in PARAMETERS.items())
    configs = [i for i, c in enumerate(nb.cells) if "lfads_nb.TrainConfig(" in c.source]
    assert len(configs) == 1, f"{TUTORIAL.name} must build its TrainConfig in exactly one cell"
    nb.cells.insert(configs[0] + 1, nbformat.v4.new_code_cell(NO_EARLY_STOP_CELL))
    nb.cells.append(nbformat.v4.new_code_cell(CHECK_CELL))
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, path)
    return [c.source for c in nb.cells if c.cell_type == "code"]


def _report(result: dict, lab: Lab) -> str:
    """What to show when an assertion fails: the driver's log, the cells' outputs, the server log."""
    outputs = "\n".join(f"cell {o['index']} {o['prompt']} {o['text'][-800:]!r}" for o in result.get("outputs", []))
    return f"{result.get('error', '')}\n{result['log']}\ncells:\n{outputs}\nJupyterLab log:\n{lab.log()}"


def test_live_dashboard_trains_and_stops_in_jupyterlab(lab, tmp_path):
    sources = _tutorial_copy(lab.root / TUTORIAL.name)
    result = drive(lab, TUTORIAL.name, tmp_path)
    report = _report(result, lab)
    assert "error" not in result, report
    assert not result["pageErrors"], report

    # The dashboard rendered, and its loss curve gained points while the training cell ran: the
    # points plotly holds for the trace grew, and its SVG line was drawn and redrawn.
    first, second = result["moments"]
    assert 2 <= first["length"] and first["length"] + 2 <= second["length"], report
    assert second["t"] - first["t"] >= 1.5, report
    assert first["drawn"] >= 2 and second["drawn"] >= 2 and first["path"] != second["path"], report
    training = next(i for i, src in enumerate(sources) if "lfads_nb.train(" in src)
    assert first["prompts"][training] == second["prompts"][training] == "[*]:", report
    assert second["t"] < result["stopClickedAt"], report
    names = {t["name"] for f in result["samples"][-1]["figures"] for t in f["traces"]}
    assert {"training objective (recon + weighted KL and L2)", "validation reconstruction NLL", "learning rate",
            "inferred", "true", "spikes"} <= names, report

    # Stop ended training, long before max_epochs, and the dashboard says so. (The relabelled
    # button is seen late when the page is busy rendering the next cells' outputs, so the
    # promptness of the stop is checked below in epochs.)
    assert result["stopButton"] == {"replaced": True}, report  # widgets replaced by static figures
    code = [o for o in result["outputs"] if o["kind"] == "code"]
    # The static status line the dashboard leaves names the reason.
    assert code[training]["text"].count("stopped: stop_button") == 1, report
    assert [o["prompt"] for o in code] == [f"[{i}]:" for i in range(1, len(sources) + 1)], report
    assert all(o["stderr"] == 0 for o in code), report
    summary = dict(item.split("=") for item in code[-1]["text"].split())
    epochs, best_epoch = int(summary["epochs"]), int(summary["best_epoch"])
    assert summary["stop_reason"] == "stop_button", report
    assert summary["best_weights_restored"] == "True", report
    assert 1 <= epochs < MAX_EPOCHS and 0 <= best_epoch < epochs, report
    # Within a few epochs of the last the browser showed before the click (it may lag the kernel
    # by an epoch or two, and the epoch under way when the click arrives is finished).
    assert second["length"] <= epochs <= second["length"] + 10, report
    assert int(summary["best_pt_epoch"]) == best_epoch, report

    # The checkpoints on disk, read here: best.pt holds the epoch with the lowest validation loss
    # of the run that last.pt recorded (the reference: argmin over its history).
    run = lab.root / PARAMETERS["checkpoint_dir"]
    last = load_checkpoint(run / "last.pt")["run_state"]
    best = load_checkpoint(run / "best.pt")["run_state"]
    assert last["epoch"] == epochs, report
    valid = [row["valid_recon"] for row in last["history"]]
    assert best["best_epoch"] == best_epoch == min(range(len(valid)), key=valid.__getitem__), report

    # The rest of the tutorial ran on the stopped run's model: inference for every trial, saved.
    inferred = lfads_nb.load(lab.root / PARAMETERS["output_path"])
    n_trials = PARAMETERS["n_conditions"] * PARAMETERS["trials_per_condition"]
    assert inferred.sizes["trial"] == n_trials and bool(np.isfinite(inferred["rates"]).all()), report

# ---------------------------------------------------------------------------------------------
# The explorer (lfads_nb.explore)
# ---------------------------------------------------------------------------------------------
# The notebook builds a small chaotic-RNN dataset and an LFADS model with a controller (untrained: the
# links, not the fit, are under test), infers, and shows ``lfads_nb.explore(out, ds)``; the kernel
# is one jupyter_server started, so the explorer chooses its live widgets by itself.
# tests/browser/drive_explorer.mjs runs all cells, reads what plotly drew, picks another trial in the
# trial dropdown, clicks the time slider's track, and reads the figures after each step. This test
# checks what the browser showed against the same explorer built here from the same seeded data:
# the highlighted path is the picked trial's, the time marker is that trial's state at the bin the
# slider reads, and the panels' time lines moved to that bin's time. Screenshots and the driver's
# record go to test-artifacts/browser-explorer/.

EXPLORER_DRIVER = REPO / "tests" / "browser" / "drive_explorer.mjs"
EXPLORER_ARTIFACTS = REPO / "test-artifacts" / "browser-explorer"
# Seconds; every wait is bounded. A passing run takes 60-100 s on 2 busy cores (the widgets' first
# render waits for plotly's code); EXPLORER_DRIVER_LIMIT caps the sum.
EXPLORER_TIMEOUTS = {"action": 10, "load": 25, "explorer": 90, "update": 20}
EXPLORER_DRIVER_LIMIT = 200
TRIAL_INDEX = 7  # the trial dropdown's option picked (the explorer starts at option 0)
SLIDER_FRACTION = 0.75

EXPLORER_SETUP = (
    "import lfads_nb\n"
    "from data_generators import chaotic_rnn\n"
    "ds = chaotic_rnn(seed=0, n_conditions=3, trials_per_condition=4, n_units=10, n_bins=30)\n"
    "model = lfads_nb.build_model(ds, seed=0, co_dim=2, ic_enc_dim=6, ci_enc_dim=5, con_dim=5, ic_dim=4,\n"
    "                             gen_dim=6, fac_dim=4)\n"
    "out = lfads_nb.infer(model, ds)"
)


def _explorer_setup() -> dict:
    namespace: dict = {}
    exec(EXPLORER_SETUP, namespace)  # the notebook's own code, so both sides see the same data and model
    return namespace


def _explorer_notebook(path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(EXPLORER_SETUP), nbformat.v4.new_code_cell("lfads_nb.explore(out, ds)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, path)


def _drive_explorer(lab, tmp_path) -> dict:
    config = {
        "baseUrl": lab.url, "token": lab.token, "notebook": "explorer.ipynb", "chromium": CHROMIUM,
        "userDataDir": str(tmp_path / "chromium-profile"), "trialIndex": TRIAL_INDEX,
        "sliderFraction": SLIDER_FRACTION, "timeouts": EXPLORER_TIMEOUTS,
    }
    return run_driver(EXPLORER_DRIVER, config, tmp_path, EXPLORER_ARTIFACTS, EXPLORER_DRIVER_LIMIT)


def _trace(stage, name):
    return next(t for f in stage for t in f["traces"] if t["name"] == name)


def _figure_with(stage, name):
    return next(f for f in stage if any(t["name"] == name for t in f["traces"]))


def test_explorer_follows_trial_picker_and_time_slider_in_jupyterlab(lab, tmp_path):
    _explorer_notebook(lab.root / "explorer.ipynb")
    result = _drive_explorer(lab, tmp_path)
    report = f"{result.get('error', '')}\n{result['log']}\nJupyterLab log:\n{lab.log()}"
    assert "error" not in result, report
    assert not result["pageErrors"] and all(o["stderr"] == 0 for o in result["outputs"]), report

    # The same explorer, built here from the same seeded data and model.
    ns = _explorer_setup()
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
