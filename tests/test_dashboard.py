"""Training progress (lfads_nb.dashboard): which one is chosen, text lines, live widgets, and the
Stop button reaching a running cell in a real kernel."""
from __future__ import annotations

import io
import math
import os
import queue
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from lfads_nb import dashboard
from lfads_nb.dashboard import LiveDashboard, Progress, TextProgress, make_progress
from lfads_nb.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]


def rows(n, sv=False):
    """n epochs of plausible metrics: losses falling, ramps rising, lr halving at epoch 5."""
    out = []
    for e in range(n):
        row = {"epoch": e, "train_loss": 2.0 / (e + 1) + 0.5, "train_recon": 1.0 / (e + 1) + 0.4,
               "valid_recon": 1.1 / (e + 1) + 0.42, "kl_ic": 0.1, "kl_co": 0.05, "l2": 0.01,
               "kl_ramp": min(1.0, e / 4), "l2_ramp": min(1.0, e / 4), "lr": 4e-3 if e < 5 else 2e-3}
        if sv:
            row["valid_sv_nll"] = 0.5
        out.append(row)
    return out


def example(n_neurons=2, n_time=30, truth=True):
    t = np.arange(n_time) * 0.01
    rates = 10 + 5 * np.sin(t[:, None] * 20 + np.arange(n_neurons))
    spikes = np.zeros((n_time, n_neurons))
    spikes[[3, 7, 7 + 1], 0] = [1, 2, 1]
    return {"trial": 17, "time": t, "neurons": [f"n{k}" for k in range(n_neurons)], "rates": rates,
            "rates_true": rates + 1 if truth else None, "spikes": spikes}


# ---------------------------------------------------------------------------------------------
# make_progress
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def no_switch(monkeypatch):
    monkeypatch.delenv("LFADS_NB_LIVE", raising=False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    return monkeypatch


def test_explicit_argument_wins_over_the_environment(no_switch):
    no_switch.setenv("LFADS_NB_LIVE", "0")
    assert type(make_progress(live=True)) is LiveDashboard
    no_switch.setenv("LFADS_NB_LIVE", "1")
    assert type(make_progress(live=False)) is TextProgress


def test_environment_switch_wins_over_detection(no_switch):
    no_switch.setenv("LFADS_NB_LIVE", "1")  # no kernel here, still live
    assert type(make_progress()) is LiveDashboard
    no_switch.setenv("LFADS_NB_LIVE", "0")
    no_switch.setenv("JPY_SESSION_NAME", "/tmp/some.ipynb")
    no_switch.setattr(dashboard.kernel, "running_kernel", lambda: object())  # "in a Jupyter frontend", switched off
    assert type(make_progress()) is TextProgress
    no_switch.setenv("LFADS_NB_LIVE", "yes")
    with pytest.raises(ConfigError, match="LFADS_NB_LIVE"):
        make_progress()


def test_detection_needs_a_kernel_started_by_a_jupyter_server(no_switch):
    assert type(make_progress()) is TextProgress  # plain Python (pytest): no kernel
    no_switch.setenv("JPY_SESSION_NAME", "/tmp/some.ipynb")
    assert type(make_progress()) is TextProgress  # the variable alone (e.g. a subprocess) is not enough
    no_switch.setattr(dashboard.kernel, "running_kernel", lambda: object())
    assert type(make_progress()) is LiveDashboard
    no_switch.delenv("JPY_SESSION_NAME")  # a kernel without it: papermill, nbclient
    assert type(make_progress()) is TextProgress
    no_switch.setenv("JPY_SESSION_NAME", "/tmp/some.ipynb")
    no_switch.setitem(sys.modules, "ipywidgets", None)  # import fails
    assert type(make_progress()) is TextProgress


# ---------------------------------------------------------------------------------------------
# TextProgress
# ---------------------------------------------------------------------------------------------

def test_text_progress_prints_every_few_epochs_and_the_last():
    out = io.StringIO()
    progress = TextProgress(stream=out)
    progress.start(40)  # every 2 epochs (about 20 lines per run)
    history = rows(7, sv=True)
    for row in history:
        progress.update(row, example())
        assert not progress.stop_requested
    progress.finish(pd.DataFrame(history), "stopped: early_stopping; best epoch 6")
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines[:-1]] == ["1/40", "2/40", "4/40", "6/40", "7/40"]
    # epoch 4 (index 3): train_recon 1/4 + 0.4, valid_recon 1.1/4 + 0.42, lr 4e-3
    assert lines[2].startswith("epoch 4/40  train 0.65  valid 0.695  sv 0.5  lr 4.0e-03  elapsed 0:0")
    assert lines[-1] == "stopped: early_stopping; best epoch 6  (best valid 0.5771 at epoch 7)"


def test_text_progress_every_and_missing_keys():
    out = io.StringIO()
    progress = TextProgress(every=3, stream=out)
    progress.start(5)
    for e in range(5):
        progress.update({"epoch": e, "valid_recon": math.nan}, None)  # no train/lr, NaN valid
    progress.finish(pd.DataFrame(), "diverged")
    lines = out.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines[:-1]] == ["epoch 1/5", "epoch 3/5", "epoch 5/5"]
    assert "train" not in lines[0] and "lr" not in lines[0] and "valid nan" in lines[0]
    assert lines[-1] == "diverged"  # no finite valid: no "best"
    with pytest.raises(ConfigError, match="every"):
        TextProgress(every=0)


def test_text_finish_makes_a_static_figure_of_the_history():
    history = pd.DataFrame(rows(12))
    progress = TextProgress(stream=io.StringIO())
    progress.start(12)
    progress.finish(history, "done")
    fig = progress.figure
    assert type(fig) is go.Figure  # static: no widget
    by_name = {trace.name: trace for trace in fig.data}
    np.testing.assert_allclose(by_name["validation reconstruction NLL"].y, history["valid_recon"])
    np.testing.assert_allclose(by_name["learning rate"].y, history["lr"])
    np.testing.assert_array_equal(by_name["training objective (recon + weighted KL and L2)"].x, np.arange(1, 13))  # epochs completed
    assert len(by_name["sample-validation NLL"].x) == 0 and not by_name["sample-validation NLL"].showlegend  # absent key
    # panels by unit: NLL per entry (linear), KL per trial (log, powers of ten) and L2 (linear), unweighted
    assert fig.layout.yaxis.type in (None, "linear") and fig.layout.yaxis2.type == "log" and fig.layout.yaxis3.type in (None, "linear")
    assert by_name["KL, initial condition"].yaxis == "y2" and by_name["L2 of recurrent weights"].yaxis == "y3"


def test_truth_nll_is_a_dotted_reference_in_every_history_figure():
    from lfads_nb import plots

    history = pd.DataFrame([{**row, "valid_truth_nll": 0.45} for row in rows(5)])
    label, colour, dash = plots.METRIC_STYLES["valid_truth_nll"]
    for fig in (dashboard.figures.history_figure(history), plots.history(history)):
        truth = [t for t in fig.data if t.name == label][0]
        assert truth.line.dash == "dot" and truth.line.color == colour
        np.testing.assert_allclose(truth.y, 0.45)
        valid = [t for t in fig.data if t.name == plots.METRIC_STYLES["valid_recon"][0]][0]
        assert valid.yaxis == truth.yaxis and valid.line.color == plots.METRIC_STYLES["valid_recon"][1]


def test_live_dashboard_leaves_static_figures_in_place_of_its_widgets(monkeypatch):
    """A saved notebook keeps no widget state: the dashboard's output must become static figures."""
    class Handle:
        updates = []

        def update(self, obj, raw=False):
            self.updates.append(obj)

    shown = []

    def fake_display(obj, raw=False, display_id=None):
        shown.append(obj)
        return Handle() if display_id else None

    monkeypatch.setattr(dashboard.kernel, "running_kernel", lambda: object())
    monkeypatch.setattr("IPython.display.display", fake_display)
    live = LiveDashboard()
    live.start(3)
    assert shown == [live.widget]
    for row in rows(3):
        live.update(row, example())
    live.finish(pd.DataFrame(rows(3)), "stopped: max_epochs; best epoch 3")
    assert "stopped: max_epochs" in Handle.updates[-1]["text/plain"]  # the widget's output, replaced
    figures = shown[1:]
    assert len(figures) == 2 and all("application/vnd.plotly.v1+json" in b for b in figures)
    assert all("image/png" in b or "text/html" in b for b in figures)  # each with a static copy
    assert live.widget.comm is None and live.curves.comm is None  # widgets closed


def test_text_finish_displays_the_figure_in_a_kernel(monkeypatch):
    shown = []
    monkeypatch.setattr(dashboard.kernel, "running_kernel", lambda: object())
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    progress = TextProgress(stream=io.StringIO())
    progress.start(3)
    progress.finish(pd.DataFrame(rows(3)), "done")
    assert shown == [progress.figure]


# ---------------------------------------------------------------------------------------------
# LiveDashboard
# ---------------------------------------------------------------------------------------------

def trace(fig, name, panel=0):
    return [t for t in fig.data if t.name == name][panel]


def test_live_update_appends_points_one_message_per_epoch():
    live = LiveDashboard()
    live.start(50)
    messages = []
    live.curves.observe(lambda change: messages.append(change["new"]), "_py2js_update")
    history = rows(4)
    for k, row in enumerate(history, 1):
        live.update(row, None)
        assert len(trace(live.curves, "training reconstruction NLL").x) == k
        assert len([m for m in messages if m is not None]) == k  # one batch_update per epoch
    np.testing.assert_allclose(trace(live.curves, "validation reconstruction NLL").y, [r["valid_recon"] for r in history])
    np.testing.assert_allclose(trace(live.curves, "KL weight ramp").y, [0, 0.25, 0.5, 0.75])
    assert len(trace(live.curves, "sample-validation NLL").x) == 0  # never reported
    assert "epoch 4/50" in live.status.value and "best valid 0.695 (epoch 4)" in live.status.value


def test_live_traces_stay_bounded():
    live = LiveDashboard(max_points=50)
    live.start(1000)
    for row in rows(301):
        live.update(row, None)
    x = trace(live.curves, "validation reconstruction NLL").x
    assert 40 <= len(x) <= 50 and x[0] == 1 and x[-1] == 301  # thinned evenly, last epoch kept


def test_live_example_rates_are_plotted():
    live = LiveDashboard(example_neurons=3)
    live.start(5)
    ex = example(n_neurons=2)
    live.update(rows(1)[0], ex)
    np.testing.assert_allclose(trace(live.example, "inferred", 0).y, ex["rates"][:, 0])
    np.testing.assert_allclose(trace(live.example, "true", 1).y, ex["rates_true"][:, 1])
    np.testing.assert_allclose(trace(live.example, "spikes", 0).x, ex["time"][[3, 7, 8]])
    np.testing.assert_allclose(trace(live.example, "spikes", 0).text, [1, 2, 1])
    assert len(trace(live.example, "inferred", 2).x) == 0  # only 2 neurons for 3 panels
    assert [a.text for a in live.example.layout.annotations] == ["neuron n0", "neuron n1", " "]
    assert "trial 17" in live.example.layout.title.text
    live.update(rows(2)[1], example(n_neurons=2, truth=False))
    assert len(trace(live.example, "true", 0).x) == 0
    bad = example(n_neurons=2)
    bad["rates"] = bad["rates"].T
    with pytest.raises(DataError, match="rates"):
        live.update(rows(3)[2], bad)


def test_button_click_sets_stop_requested():
    live = LiveDashboard()
    live.start(10)
    live.update(rows(1)[0], None)
    assert not live.stop_requested
    assert dashboard.kernel.handle_widget_messages() == 0  # no kernel: nothing to read, nothing breaks
    live.button.click()
    assert live.stop_requested and live.button.disabled
    live.finish(pd.DataFrame(rows(2)), "stopped: stop_button; best epoch 1")
    assert len(trace(live.curves, "training reconstruction NLL").x) == 2  # finish redraws the whole history
    assert "stopped: stop_button" in live.status.value and live.button.description == "Stopped"


def test_base_progress_is_silent_and_never_stops():
    progress = Progress()
    progress.start(3)
    progress.update({"epoch": 0, "valid_recon": 2.0}, None)
    progress.update({"epoch": 1, "valid_recon": 1.0}, None)
    progress.finish(pd.DataFrame(progress.rows), "done")
    assert not progress.stop_requested and progress.best_valid() == (1.0, 1)


# ---------------------------------------------------------------------------------------------
# In real kernels
# ---------------------------------------------------------------------------------------------

CLICK_CELL = """
import time
from lfads_nb.dashboard import make_progress
progress = make_progress()
print("READY", type(progress).__name__, progress.button.model_id, flush=True)
progress.start(100)
while not progress.stop_requested:  # only the click ends it (the test's timeouts guard a hang)
    time.sleep(0.01)  # a training step
first_cell_done = True
print("STOPPED", progress.stop_requested, flush=True)
"""


# Hang guards, not measurements: a busy machine may take long to start a kernel or run a cell; no
# assertion depends on how long anything took.
KERNEL_TIMEOUT = 300


def kernel_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("LFADS_NB_LIVE", "JPY_SESSION_NAME")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
    return env


def test_stop_button_click_reaches_a_running_cell_in_a_real_kernel():
    """The browser's click (a comm_msg 'custom' {'event': 'click'} to the Button) must end the
    loop while the cell runs (nothing else ends it), and a cell queued behind it must run only after it."""
    from jupyter_client import KernelManager

    km = KernelManager(kernel_name="python3")  # argv 'python' runs as sys.executable
    km.start_kernel(env=kernel_env(JPY_SESSION_NAME=str(REPO / "train.ipynb")), cwd=str(REPO))
    kc = km.client()
    kc.start_channels()
    streams = {}  # parent msg_id -> stream texts

    def read_iopub_until(parent, word):
        while not any(word in text for text in streams.get(parent, [])):
            msg = kc.get_iopub_msg(timeout=KERNEL_TIMEOUT)
            assert msg["msg_type"] != "error", msg["content"]
            if msg["msg_type"] == "stream":
                streams.setdefault(msg["parent_header"].get("msg_id"), []).append(msg["content"]["text"])
        return next(text for text in streams[parent] if word in text)

    try:
        kc.wait_for_ready(timeout=KERNEL_TIMEOUT)
        first = kc.execute(CLICK_CELL)
        _, kind, button = read_iopub_until(first, "READY").split()
        assert kind == "LiveDashboard"  # JPY_SESSION_NAME in a kernel: live
        # Queued while the first runs; it fails with NameError if it runs inside the first cell.
        second = kc.execute("print('SECOND', first_cell_done)")
        time.sleep(0.5)  # the loop is polling; nothing has clicked yet
        kc.shell_channel.send(kc.session.msg("comm_msg", {
            "comm_id": button, "data": {"method": "custom", "content": {"event": "click"}}}))
        replies = []  # (msg_id, status) of the two cells, in the order the kernel answered
        while len(replies) < 2:
            reply = kc.get_shell_msg(timeout=KERNEL_TIMEOUT)
            if reply["parent_header"].get("msg_id") in (first, second):  # not e.g. a late kernel_info reply
                replies.append((reply["parent_header"]["msg_id"], reply["content"]["status"]))
        stopped, second_ran = read_iopub_until(first, "STOPPED"), read_iopub_until(second, "SECOND")
    except queue.Empty:
        pytest.fail(f"the kernel did not answer within {KERNEL_TIMEOUT} s; output so far: {streams}")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert replies == [(first, "ok"), (second, "ok")]  # the first cell ended (by the click) before the second ran
    assert stopped.split() == ["STOPPED", "True"]  # printed after polling: still the first cell's output
    assert second_ran.split() == ["SECOND", "True"]


def test_papermill_gets_text_progress_without_being_told(tmp_path, monkeypatch):
    import papermill

    monkeypatch.delenv("LFADS_NB_LIVE", raising=False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import os\nfrom lfads_nb.dashboard import make_progress\n"
        "print(type(make_progress()).__name__, 'JPY_SESSION_NAME' in os.environ, 'JPY_PARENT_PID' in os.environ)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "in.ipynb")
    papermill.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                               progress_bar=False, cwd=str(REPO))
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert out.cells[0].outputs[0]["text"].split() == ["TextProgress", "False", "True"]


# ---------------------------------------------------------------------------------------------
# Population-based training
# ---------------------------------------------------------------------------------------------

PBT_SIZES = dict(ic_enc_dim=6, ci_enc_dim=5, con_dim=7, ic_dim=4, gen_dim=8, fac_dim=3, co_dim=0)
PBT_TRAIN = dict(batch_size=8, kl_ramp_epochs=2, l2_ramp_epochs=2)


def tiny_pbt(progress=None, checkpoint_dir=None, **pbt_kw):
    import torch

    import lfads_nb
    from data_generators import chaotic_rnn
    from lfads_nb.tune.pbt import PBTConfig, pbt

    torch.set_num_threads(1)
    ds = chaotic_rnn(seed=0, n_units=12, n_bins=8, n_conditions=10, trials_per_condition=3)
    pc = PBTConfig(**{"population": 4, "generation_epochs": 2, "max_generations": 3, "seed": 1, **pbt_kw})
    return pbt(ds, pbt_config=pc, train_config=lfads_nb.TrainConfig(**PBT_TRAIN), model_sizes=PBT_SIZES,
                        checkpoint_dir=checkpoint_dir, progress=progress)


class Recorder(dashboard.PBTProgress):
    """Records every call; asks to stop once ``stop_after`` training steps were polled."""

    def __init__(self, stop_after=None):
        super().__init__()
        self.calls, self.polls, self.stop_after = [], 0, stop_after

    def epoch(self, generation, epoch, metrics):
        super().epoch(generation, epoch, metrics)
        self.calls.append(("epoch", generation, epoch, metrics["fitness"].copy()))

    def generation(self, history):
        self.calls.append(("generation", history.sizes["generation"]))

    @property
    def stop_requested(self):
        self.polls += 1
        return self.stop_after is not None and self.polls >= self.stop_after

    def finish(self, history, message):
        self.calls.append(("finish", message))


def test_make_pbt_progress_follows_the_same_rules(no_switch):
    assert type(dashboard.make_pbt_progress()) is dashboard.PBTTextProgress  # pytest: no kernel
    assert type(dashboard.make_pbt_progress(live=True)) is dashboard.PBTLiveDashboard
    no_switch.setenv("LFADS_NB_LIVE", "1")
    assert type(dashboard.make_pbt_progress()) is dashboard.PBTLiveDashboard
    assert type(dashboard.make_pbt_progress(live=False)) is dashboard.PBTTextProgress
    no_switch.setenv("LFADS_NB_LIVE", "0")
    no_switch.setenv("JPY_SESSION_NAME", "/tmp/some.ipynb")
    no_switch.setattr(dashboard.kernel, "running_kernel", lambda: object())
    assert type(dashboard.make_pbt_progress()) is dashboard.PBTTextProgress
    no_switch.delenv("LFADS_NB_LIVE")
    assert type(dashboard.make_pbt_progress()) is dashboard.PBTLiveDashboard  # a Jupyter frontend
    no_switch.setenv("LFADS_NB_LIVE", "on")
    with pytest.raises(ConfigError, match="LFADS_NB_LIVE"):
        dashboard.make_pbt_progress()


def test_pbt_reports_every_epoch_and_generation_then_finishes():
    progress = Recorder()
    result = tiny_pbt(progress)
    kinds = [c[0] for c in progress.calls]
    # burn-in 2 epochs + 3 generations of 2: one generation call after each, then finish
    assert kinds == ["epoch", "epoch", "generation"] * 4 + ["finish"]
    assert [c[2] for c in progress.calls if c[0] == "epoch"] == list(range(1, 9))
    assert [c[1] for c in progress.calls if c[0] == "epoch"] == [0, 0, 1, 1, 2, 2, 3, 3]
    last_epoch = [c for c in progress.calls if c[0] == "epoch"][-1]
    np.testing.assert_allclose(last_epoch[3], result.history["fitness"].values[-1])  # the fitness judged
    assert progress.calls[-1][1].startswith("stopped: max_generations")
    assert progress.polls == 8 * 3  # after every training step: 24 train trials / batch 8


def test_pbt_default_progress_is_text_outside_jupyter(no_switch, capsys):
    tiny_pbt(max_generations=1)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("generation 0 (epoch 2): best fitness") and "member" in lines[0] and "lr" in lines[0]
    assert lines[1].startswith("generation 1 (epoch 4)")
    assert lines[2].startswith("stopped: max_generations; best fitness")


def test_stop_ends_the_generation_saves_and_resume_goes_on(tmp_path):
    import torch

    progress = Recorder(stop_after=3 * 3 + 1)  # the first step of generation 1's second epoch
    stopped = tiny_pbt(progress, tmp_path)
    assert stopped.stop_reason == "stop_button"
    assert stopped.history.sizes["generation"] == 2  # the burn-in and the stopped generation 1
    assert stopped.history["end_epoch"].values.tolist() == [2, 4]  # the partial epoch counts as the last
    assert progress.calls[-1][1].startswith("stopped: stop_button")
    saved = torch.load(tmp_path / "pbt.pt", weights_only=True)["run_state"]
    assert saved["stop_reason"] == "stop_button" and saved["generation"] == 2 and len(saved["rows"]) == 2
    assert (tmp_path / "best.pt").exists()
    resumed = tiny_pbt(Recorder(), tmp_path)  # goes on with generation 2
    assert resumed.stop_reason == "max_generations" and resumed.history.sizes["generation"] == 4
    np.testing.assert_array_equal(resumed.history["fitness"].values[:2], stopped.history["fitness"].values)
    assert resumed.history["end_epoch"].values.tolist() == [2, 4, 6, 8]


def test_pbt_text_progress_lines_and_static_figure():
    out = io.StringIO()
    progress = dashboard.PBTTextProgress(stream=out)
    result = tiny_pbt(progress, max_generations=2)
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 3 + 1 and "elapsed" in lines[0] and lines[-1].startswith("stopped: max_generations")
    best = result.history.isel(generation=2)["fitness"].values
    assert f"best fitness {np.nanmin(best):.5f} (member {int(np.nanargmin(best))}:" in lines[2]
    assert isinstance(progress.figure, go.Figure) and progress.figure.data[-1].name == "best so far"


def test_pbt_live_dashboard_updates_curves_and_generation_figures():
    live = dashboard.PBTLiveDashboard(max_points=5)
    result = tiny_pbt(live)
    assert len(live.fitness.data) == 4  # one fitness curve per member
    member_2 = live.fitness.data[2]
    assert len(member_2.x) <= 6 and member_2.x[-1] == 8  # thinned, the last epoch kept
    np.testing.assert_allclose(member_2.y[-1], result.history["fitness"].values[-1, 2])
    assert [s.x0 for s in live.fitness.layout.shapes] == [2, 4, 6, 8]  # generation ends
    hps, lineage = live.generations.children
    assert isinstance(hps, go.FigureWidget) and len(hps.data) == len(lfads_space()) * 4
    assert lineage.layout.title.text.startswith("PBT lineage")
    assert "max_generations" in live.status.value and live.button.description == "Done"
    assert not live.stop_requested
    live.button.click()
    assert live.stop_requested and live.button.disabled


def lfads_space():
    from lfads_nb.tune.search import DEFAULT_SPACE

    return DEFAULT_SPACE


PBT_CLICK_CELL = """
from lfads_nb.dashboard import make_pbt_progress
import test_dashboard
progress = make_pbt_progress()
print("READY", type(progress).__name__, progress.button.model_id, flush=True)
result = test_dashboard.tiny_pbt(progress, max_generations=10000, stop_patience=10000)  # only the button stops it
print("STOPPED", result.stop_reason, progress.button.description, flush=True)
"""


def test_pbt_stop_button_click_reaches_a_running_pbt_in_a_real_kernel():
    from jupyter_client import KernelManager

    km = KernelManager(kernel_name="python3")
    env = kernel_env(JPY_SESSION_NAME=str(REPO / "pbt.ipynb"))
    env["PYTHONPATH"] += os.pathsep + str(REPO / "tests")  # the cell imports tiny_pbt from this file
    km.start_kernel(env=env, cwd=str(REPO))
    kc = km.client()
    kc.start_channels()
    texts = []

    def read_until(word):
        while not any(word in t for t in texts):
            msg = kc.get_iopub_msg(timeout=KERNEL_TIMEOUT)
            assert msg["msg_type"] != "error", msg["content"]
            if msg["msg_type"] == "stream":
                texts.append(msg["content"]["text"])
        return next(t for t in texts if word in t)

    try:
        kc.wait_for_ready(timeout=KERNEL_TIMEOUT)
        kc.execute(PBT_CLICK_CELL)
        _, kind, button = read_until("READY").split()
        assert kind == "PBTLiveDashboard"  # JPY_SESSION_NAME in a kernel: live
        time.sleep(2.0)  # the run is in its first generations
        kc.shell_channel.send(kc.session.msg("comm_msg", {
            "comm_id": button, "data": {"method": "custom", "content": {"event": "click"}}}))
        stopped = read_until("STOPPED")
    except queue.Empty:
        pytest.fail(f"the kernel did not answer within {KERNEL_TIMEOUT} s; output so far: {texts}")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    _, reason, description = stopped.split()
    assert reason == "stop_button" and description == "Stopped"  # ended by the click, not by 10000 generations
