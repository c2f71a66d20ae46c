"""lfads_nb.explore: linked parts for every data kind (spikes, EMG, calcium events) and model
(LFADS with a controller, NODE, NDT), checked against the arrays they must show: the highlighted
path is the selected trial's PCA projection (computed here with numpy's SVD), the time marker sits
at that trial's state at the chosen bin in the 3-D view and at that time in every panel; picking a
trial through the widgets changes both figures; the static path (live=False, as under papermill)
makes no widgets; bad input names the problem."""
import numpy as np
import plotly.graph_objects as go
import pytest
import torch

import lfads_nb
from data_generators import attractor, calcium_2p, chaotic_rnn, emg
from lfads_nb.data.calcium import frame_binned
from lfads_nb.errors import DataError

torch.set_num_threads(1)
SMALL = dict(ic_enc_dim=6, ci_enc_dim=5, con_dim=5, ic_dim=4, gen_dim=6, fac_dim=4)


def _spikes():
    return chaotic_rnn(seed=0, n_conditions=3, trials_per_condition=4, n_units=10, n_bins=15)


def _emg():
    return emg(seed=0, n_trials=10, n_bins=20, n_channels=5)


def _events():
    return frame_binned(calcium_2p(seed=0, n_neurons=8, n_conditions=3, trials_per_condition=4, n_frames=10))


def _inferred(ds, family="lfads", **sizes):
    if family == "ndt":
        model = lfads_nb.build_model(ds, seed=0, model="ndt", d_model=8, n_layers=1)
    else:
        model = lfads_nb.build_model(ds, seed=0, **{**SMALL, **sizes})
    return lfads_nb.infer(model, ds)


def _trace(fig, name):
    return next(t for t in fig.data if t.name == name)


def _pca_paths(latents):
    x = latents.transpose("trial", "time", ...).values.astype(np.float64)
    flat = x.reshape(-1, x.shape[-1])
    _, _, vt = np.linalg.svd(flat - flat.mean(0), full_matrices=False)
    return (x - flat.mean(0)) @ vt[:3].T


@pytest.mark.parametrize("make, family, sizes, variable", [
    (_spikes, "lfads", dict(co_dim=2), "factors"),
    (_emg, "lfads", dict(co_dim=1), "factors"),
    (_events, "lfads", dict(co_dim=0, generator="node", node_hidden=8), "factors"),
    (_spikes, "ndt", {}, "latents"),
])
def test_static_explorer_shows_the_selected_trial_in_every_part(make, family, sizes, variable):
    ds = make()
    out = _inferred(ds, family, **sizes)
    trial = ds.trial.values[5]
    explorer = lfads_nb.explore(out, ds, live=False, trial=trial)
    assert explorer.widget is None and explorer.variable == variable
    explorer.set_time(7)
    expected = _pca_paths(out[variable])[5]
    # one panel per PC plane (PC1-PC2, PC1-PC3); PCs are defined up to sign: compare |projection|
    selected = [t for t in explorer.trajectories.data if t.name == "selected trial"]
    markers = [t for t in explorer.trajectories.data if t.name == "time marker"]
    assert len(selected) == len(markers) == 2
    for (a, b), path, marker in zip(((0, 1), (0, 2)), selected, markers):
        np.testing.assert_allclose(np.abs(path.x), np.abs(expected[:, a]), atol=1e-5)
        np.testing.assert_allclose(np.abs(path.y), np.abs(expected[:, b]), atol=1e-5)
        np.testing.assert_allclose(np.abs([marker.x[0], marker.y[0]]), np.abs(expected[7, [a, b]]), atol=1e-5)
    t = float(ds.time.values[7])
    shapes = explorer.trial_figure.layout.shapes
    assert len(shapes) == (3 if out.sizes.get("inferred_input", 0) else 2)
    assert all(s.x0 == s.x1 == t for s in shapes)
    kind = lfads_nb.kind_of(ds)
    first = explorer.channels[0]
    inferred = next(tr for tr in explorer.trial_figure.data if tr.name and tr.name.startswith("inferred,"))
    np.testing.assert_allclose(inferred.y, out[kind.output].sel(trial=trial).values[:, first], rtol=1e-6)
    names = {tr.name for tr in explorer.trial_figure.data}
    assert any(n.startswith("true,") for n in names if n) == (kind.truth in ds)
    assert any(n.startswith("input") for n in names if n) == (sizes.get("co_dim", 0) > 0)
    figures = explorer.figures()
    assert len(figures) == 2 and all(type(f) is go.Figure for f in figures)
    assert f"trial {trial}" in figures[0].layout.title.text and f"t = {t:.3f} s" in figures[1].layout.title.text


def test_live_explorer_links_the_widgets_to_every_part():
    """Picking a condition, then a trial, then sliding time, through the widgets' values as the
    browser sets them: the highlighted path, the marker and the panels follow."""
    ds = _spikes()
    out = _inferred(ds, co_dim=2)
    explorer = lfads_nb.explore(out, ds, live=True)
    assert isinstance(explorer.trajectories, go.FigureWidget) and explorer.widget is not None
    before = np.array(_trace(explorer.trajectories, "selected trial").x)
    heat_before = np.array(explorer.trial_figure.data[0].z)
    condition = str(ds.condition.values[-1])
    explorer._condition_picker.value = condition
    chosen = ds.trial.values[ds.condition.values.astype(str) == condition]
    assert [v for _, v in explorer._trial_picker.options] == list(chosen) and explorer.trial == chosen[0]
    explorer._trial_picker.value = chosen[1]
    assert explorer.trial == chosen[1]
    after = np.array(_trace(explorer.trajectories, "selected trial").x)
    assert not np.allclose(before, after)
    assert not np.array_equal(heat_before, np.array(explorer.trial_figure.data[0].z))
    np.testing.assert_array_equal(np.array(explorer.trial_figure.data[0].z),
                                  ds.spikes.sel(trial=chosen[1]).values.T.astype(np.float32))
    explorer._slider.value = 9
    assert explorer.time_index == 9 and explorer._time_label.value == f"t = {ds.time.values[9]:.3f} s"
    row = int(np.flatnonzero(explorer.trials == chosen[1])[0])
    markers = [t for t in explorer.trajectories.data if t.name == "time marker"]
    assert [m.y[0] for m in markers] == pytest.approx(explorer.paths[row, 9, 1:3])
    assert all(s.x0 == pytest.approx(ds.time.values[9]) for s in explorer.trial_figure.layout.shapes)


def test_explorer_chooses_static_as_the_dashboard_does(monkeypatch):
    ds = _spikes()
    out = _inferred(ds, co_dim=0)
    monkeypatch.setenv("LFADS_NB_LIVE", "0")
    assert lfads_nb.explore(out, ds).widget is None
    monkeypatch.delenv("LFADS_NB_LIVE")
    assert lfads_nb.explore(out, ds).widget is None  # no Jupyter frontend here (as under papermill)


def test_explorer_on_generator_states_and_data_without_truth():
    ds = attractor("lorenz", n_trials=10, n_bins=12).drop_vars(["rates_true", "latents_true"])
    out = _inferred(ds, co_dim=0, generator="node", node_hidden=8)
    explorer = lfads_nb.explore(out, ds, live=False, variable="generator_states")
    assert not any(t.name.startswith("true,") for t in explorer.trial_figure.data if t.name)
    assert explorer.basis.components.shape == (3, 6)


def test_bad_input_names_the_problem():
    ds = _spikes()
    out = _inferred(ds, co_dim=0)
    with pytest.raises(DataError, match="share trials and time bins"):
        lfads_nb.explore(out, ds.isel(time=slice(0, 5)), live=False)
    with pytest.raises(DataError, match="no latent trajectories"):
        lfads_nb.explore(out.drop_vars(["factors", "generator_states"]), ds, live=False)
    with pytest.raises(DataError, match="not in the inferred trials"):
        lfads_nb.explore(out, ds, live=False, trial=10_000)
    with pytest.raises(DataError, match="outside"):
        lfads_nb.explore(out, ds, live=False).set_time(99)
