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
    no_switch.setattr(dashboard, "_kernel", lambda: object())  # "in a Jupyter frontend", switched off
    assert type(make_progress()) is TextProgress
    no_switch.setenv("LFADS_NB_LIVE", "yes")
    with pytest.raises(ConfigError, match="LFADS_NB_LIVE"):
        make_progress()


def test_detection_needs_a_kernel_started_by_a_jupyter_server(no_switch):
    assert type(make_progress()) is TextProgress  # plain Python (pytest): no kernel
    no_switch.setenv("JPY_SESSION_NAME", "/tmp/some.ipynb")
    assert type(make_progress()) is TextProgress  # the variable alone (e.g. a subprocess) is not enough
    no_switch.setattr(dashboard, "_kernel", lambda: object())
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
    np.testing.assert_allclose(by_name["valid recon"].y, history["valid_recon"])
    np.testing.assert_allclose(by_name["learning rate"].y, history["lr"])
    np.testing.assert_array_equal(by_name["train total"].x, np.arange(1, 13))  # epochs completed
    assert len(by_name["valid SV NLL"].x) == 0 and not by_name["valid SV NLL"].showlegend  # absent key
    assert fig.layout.yaxis.type == "log"


def test_text_finish_displays_the_figure_in_a_kernel(monkeypatch):
    shown = []
    monkeypatch.setattr(dashboard, "_kernel", lambda: object())
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
        assert len(trace(live.curves, "train recon").x) == k
        assert len([m for m in messages if m is not None]) == k  # one batch_update per epoch
    np.testing.assert_allclose(trace(live.curves, "valid recon").y, [r["valid_recon"] for r in history])
    np.testing.assert_allclose(trace(live.curves, "KL ramp").y, [0, 0.25, 0.5, 0.75])
    assert len(trace(live.curves, "valid SV NLL").x) == 0  # never reported
    assert "epoch 4/50" in live.status.value and "best valid 0.695 (epoch 4)" in live.status.value


def test_live_traces_stay_bounded():
    live = LiveDashboard(max_points=50)
    live.start(1000)
    for row in rows(301):
        live.update(row, None)
    x = trace(live.curves, "valid recon").x
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
    assert dashboard.handle_widget_messages() == 0  # no kernel: nothing to read, nothing breaks
    live.button.click()
    assert live.stop_requested and live.button.disabled
    live.finish(pd.DataFrame(rows(2)), "stopped: stop_button; best epoch 1")
    assert len(trace(live.curves, "train recon").x) == 2  # finish redraws the whole history
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
t0 = time.monotonic()
while not progress.stop_requested and time.monotonic() - t0 < 30:
    time.sleep(0.01)  # a training step
first_cell_done = time.monotonic()
print("STOPPED", progress.stop_requested, flush=True)
"""


def kernel_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("LFADS_NB_LIVE", "JPY_SESSION_NAME")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
    return env


def test_stop_button_click_reaches_a_running_cell_in_a_real_kernel():
    """The browser's click (a comm_msg 'custom' {'event': 'click'} to the Button) must end the
    loop while the cell runs, and a cell queued behind it must run only after it."""
    from jupyter_client import KernelManager

    km = KernelManager(kernel_name="python3")  # argv 'python' runs as sys.executable
    km.start_kernel(env=kernel_env(JPY_SESSION_NAME=str(REPO / "train.ipynb")), cwd=str(REPO))
    kc = km.client()
    kc.start_channels()
    streams = {}  # parent msg_id -> stream texts

    def read_iopub_until(parent, word):
        while not any(word in text for text in streams.get(parent, [])):
            msg = kc.get_iopub_msg(timeout=30)
            assert msg["msg_type"] != "error", msg["content"]
            if msg["msg_type"] == "stream":
                streams.setdefault(msg["parent_header"].get("msg_id"), []).append(msg["content"]["text"])
        return next(text for text in streams[parent] if word in text)

    try:
        kc.wait_for_ready(timeout=60)
        first = kc.execute(CLICK_CELL)
        _, kind, button = read_iopub_until(first, "READY").split()
        assert kind == "LiveDashboard"  # JPY_SESSION_NAME in a kernel: live
        # Queued while the first runs; it fails with NameError if it runs inside the first cell.
        second = kc.execute("print('SECOND', time.monotonic() > first_cell_done)")
        time.sleep(0.5)  # the loop is polling; nothing has clicked yet
        clicked = time.monotonic()
        kc.shell_channel.send(kc.session.msg("comm_msg", {
            "comm_id": button, "data": {"method": "custom", "content": {"event": "click"}}}))
        replies = {}
        while len(replies) < 2:
            reply = kc.get_shell_msg(timeout=30)
            replies[reply["parent_header"]["msg_id"]] = (reply["content"]["status"], time.monotonic())
        stopped, second_ran = read_iopub_until(first, "STOPPED"), read_iopub_until(second, "SECOND")
    except queue.Empty:
        pytest.fail(f"the kernel did not answer in time; output so far: {streams}")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert replies[first][0] == "ok" and replies[second][0] == "ok"
    assert replies[first][1] - clicked < 5  # ended by the click, not by the 30 s limit
    assert replies[first][1] < replies[second][1]
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
