"""lfads_nb.plots: each figure builds from a small dataset with the expected traces and labels."""
import numpy as np
import xarray as xr
import pandas as pd
import plotly.graph_objects as go
import pytest

from lfads_nb import DataError, make_dataset
from lfads_nb import metrics, plots

BIN = 0.01


@pytest.fixture(scope="module")
def ds():
    rng = np.random.default_rng(0)
    n_trials, n_time, n_neurons = 8, 30, 5
    latents = np.cumsum(rng.normal(0, 0.3, (n_trials, n_time, 5)), axis=1)
    rates = 10 * np.exp(0.3 * latents[..., :3] @ rng.normal(0, 1, (3, n_neurons)))
    behavior = latents[..., :2] * 2.0
    out = make_dataset(rng.poisson(rates * BIN), BIN, split_labels=["train"] * 6 + ["valid"] * 2,
                       condition=[0, 1, 2, 0, 1, 2, 0, 1], trial_ids=np.arange(100, 108),
                       rates_true=rates, latents_true=latents, behavior=behavior)
    out["behavior"].attrs["units"] = "cm/s"
    return out


def test_raster_ticks_match_spikes(ds):
    fig = plots.raster(ds, 103)
    assert isinstance(fig, go.Figure)
    (trace,) = fig.data
    spikes = ds["spikes"].sel(trial=103)
    assert len(trace.x) == int((spikes > 0).sum())  # one tick per bin with spikes
    assert "trial 103" in fig.layout.title.text and "condition 0" in fig.layout.title.text
    assert fig.layout.xaxis.title.text == "time (s)" and fig.layout.yaxis.title.text == "neuron"


def test_raster_with_rates_heatmap(ds):
    fig = plots.raster(ds, 100, rates="rates_true")
    assert [type(t).__name__ for t in fig.data] == ["Scatter", "Heatmap"]
    heat = fig.data[1]
    np.testing.assert_allclose(np.asarray(heat.z), ds["rates_true"].sel(trial=100).values.T, rtol=1e-6)
    assert fig.layout.annotations[1].text == "rates_true (Hz)"
    assert fig.layout.xaxis2.title.text == "time (s)"
    with pytest.raises(DataError, match="needs \\(trial, time, neuron\\) rates"):
        plots.raster(ds, 100, rates="latents_true")


def test_unknown_trial_names_the_valid_range(ds):
    for call in (lambda: plots.raster(ds, 3), lambda: plots.rates_heatmap(ds, 3),
                 lambda: plots.compare_rates(ds["rates_true"], ds, 3),
                 lambda: plots.decoding(ds["behavior"], ds["behavior"], 3),
                 lambda: plots.latents_3d(ds, trials=[100, 3])):
        with pytest.raises(DataError, match="ids from 100 to 107 \\(8 in all\\)"):
            call()


def test_rates_heatmap(ds):
    fig = plots.rates_heatmap(ds, 101)
    (heat,) = fig.data
    assert isinstance(heat, go.Heatmap)
    np.testing.assert_allclose(np.asarray(heat.z), ds["rates_true"].sel(trial=101).values.T, rtol=1e-6)
    assert fig.layout.title.text.startswith("rates_true (Hz), trial 101")
    assert fig.layout.xaxis.title.text == "time (s)" and fig.layout.yaxis.title.text == "neuron"
    assert plots.rates_heatmap(ds, 101, "latents_true").layout.yaxis.title.text == "latent"
    with pytest.raises(DataError, match="no variable 'factors'"):
        plots.rates_heatmap(ds, 101, "factors")


def test_latents_3d_projects_onto_principal_components(ds):
    fig = plots.latents_3d(ds)
    lines = [t for t in fig.data if t.mode == "lines"]
    assert len(lines) == ds.sizes["trial"] and len(fig.data) == ds.sizes["trial"] + 1  # + start markers
    assert "top 3 principal components" in fig.layout.title.text
    assert fig.layout.scene.xaxis.title.text == "PC1 (a.u.)"
    # One legend entry per condition, trials of a condition share a colour.
    assert sum(t.showlegend for t in lines) == 3
    colours = {t.name: t.line.color for t in lines}
    assert len(set(colours.values())) == 3
    # The projection keeps the trajectory geometry: PC scores have the latents' centred norm.
    points = ds["latents_true"].values.reshape(-1, 5)
    total = ((points - points.mean(0)) ** 2).sum()
    kept = sum((np.asarray(t.x) ** 2 + np.asarray(t.y) ** 2 + np.asarray(t.z) ** 2).sum() for t in lines)
    assert kept <= total and kept > 0.5 * total


def test_inputs_and_echo(ds):
    inputs = xr.DataArray(np.random.default_rng(0).normal(size=(ds.sizes["trial"], ds.sizes["time"], 2)),
                          dims=("trial", "time", "inferred_input"),
                          coords={"trial": ds.trial, "time": ds.time, "inferred_input": [0, 1]})
    echo = xr.DataArray([0.0, 0.4, 0.1], dims=("lag",), coords={"lag": [-1, 0, 1]})
    fig = plots.inputs_and_echo(xr.Dataset({"inputs": inputs}), ds, 102, echo, marker_time=0.05, echo_max=0.5)
    spikes, u0, u1, bars = fig.data
    np.testing.assert_allclose(np.asarray(spikes.y), ds.spikes.sel(trial=102).sum("neuron"))
    np.testing.assert_allclose(np.asarray(u1.y), inputs.sel(trial=102, inferred_input=1))
    assert [u0.name, u1.name] == ["input u0", "input u1"] and list(bars.x) == [-1, 0, 1]
    assert len(fig.layout.shapes) == 2 and fig.layout.yaxis2.range == (-0.01, 0.5)


def test_latents_2d_small_multiples_match_the_3d_projection(ds):
    """The 2-D figure draws the same PC scores as the 3-D one: PC1-PC2 plane, then PCs over time."""
    flat, scene = plots.latents_2d(ds, trials=[101, 102]), plots.latents_3d(ds, trials=[101, 102])
    lines3d = [t for t in scene.data if t.mode == "lines"]
    plane = [t for t in flat.data if t.mode == "lines" and t.xaxis == "x"]
    assert len(plane) == 2 and sum(t.mode == "lines" for t in flat.data) == 2 * 4
    np.testing.assert_allclose(np.asarray(plane[1].y), np.asarray(lines3d[1].y), rtol=1e-6)
    over_time = [t for t in flat.data if t.mode == "lines" and t.xaxis != "x"][:3]  # trial 101: PC1, PC2, PC3
    np.testing.assert_allclose(np.asarray(over_time[2].y), np.asarray(lines3d[0].z), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(over_time[0].x), ds.time.values)
    assert flat.layout.xaxis.title.text == "PC1 (a.u.)" and flat.layout.height >= 500
    assert "principal components" in flat.layout.title.text


def test_latents_3d_three_dims_and_trial_selection(ds):
    three = ds.drop_dims("latent").assign(latents_true=ds["latents_true"].isel(latent=slice(0, 3)))
    fig = plots.latents_3d(three, trials=[104, 105], color_by="split")
    lines = [t for t in fig.data if t.mode == "lines"]
    assert len(lines) == 2
    np.testing.assert_allclose(np.asarray(lines[0].x), three["latents_true"].sel(trial=104, latent=0).values,
                               rtol=1e-6)
    assert "principal" not in fig.layout.title.text
    assert fig.layout.scene.zaxis.title.text == "latent 2 (a.u.)"
    with pytest.raises(DataError, match="needs at least 3"):
        plots.latents_3d(ds.drop_dims("latent").assign(latents_true=ds["latents_true"].isel(latent=slice(0, 2))))
    with pytest.raises(DataError, match="not a coordinate"):
        plots.latents_3d(ds, color_by="monkey")


def test_latents_3d_without_conditions_uses_one_colour(ds):
    """Data with no 'condition' coord (e.g. an LFADS HDF5 file) plot in one colour by default."""
    lines = [t for t in plots.latents_3d(ds.drop_vars("condition")).data if t.mode == "lines"]
    assert len(lines) == ds.sizes["trial"] and len({t.line.color for t in lines}) == 1
    assert sum(t.showlegend for t in lines) == 1 and lines[0].name == "trajectory"


def test_compare_rates(ds):
    inferred = metrics.smooth_spikes(ds["spikes"], BIN, 0.03)
    fig = plots.compare_rates(inferred, ds, 102, neurons=[1, 3])
    assert len(fig.data) == 4  # true + inferred per neuron
    assert [a.text for a in fig.layout.annotations] == ["neuron 1", "neuron 3"]
    np.testing.assert_allclose(np.asarray(fig.data[2].y), ds["rates_true"].sel(trial=102, neuron=3))
    np.testing.assert_allclose(np.asarray(fig.data[3].y), inferred.sel(trial=102, neuron=3))
    assert fig.layout.yaxis.title.text == "rate (Hz)" and fig.layout.xaxis2.title.text == "time (s)"
    assert len(plots.compare_rates(inferred, ds, 102).data) == 2 * plots.DEFAULT_NEURONS
    with pytest.raises(DataError, match="neuron ids \\[9\\]"):
        plots.compare_rates(inferred, ds, 102, neurons=[9])
    with pytest.raises(DataError, match="different time bins"):
        plots.compare_rates(inferred.isel(time=slice(0, 10)), ds, 102)
    # the baseline as a third, dashed trace per neuron
    with_base = plots.compare_rates(inferred * 2, ds, 102, neurons=[1, 3], baseline=inferred)
    bases = [t for t in with_base.data if t.name == "smoothed spikes"]
    assert len(bases) == 2 and bases[0].line.dash == "dash" and [t.showlegend for t in bases] == [True, False]
    np.testing.assert_allclose(np.asarray(bases[1].y), inferred.sel(trial=102, neuron=3))


def test_decoding(ds):
    pred = metrics.decode_behavior(ds["rates_true"], ds["behavior"], train_trials="train", bin_width=BIN)
    fig = plots.decoding(ds["behavior"], pred, 106)
    assert len(fig.data) == 4 and [t.name for t in fig.data[:2]] == ["true", "decoded"]
    np.testing.assert_allclose(np.asarray(fig.data[1].y), pred.sel(trial=106).isel(behavior_dim=0))
    assert fig.layout.yaxis.title.text == "0 (cm/s)" and fig.layout.xaxis2.title.text == "time (s)"
    assert "trial 106" in fig.layout.title.text


def test_history_groups_and_log_axes():
    # The columns lfads_nb.training writes, plus a text column.
    epochs = np.arange(1, 21)
    df = pd.DataFrame({
        "epoch": epochs,
        "train_loss": 1.0 + 1.0 / epochs,
        "train_recon": 1000.0 / epochs,  # spans > 10x: log
        "kl_ic": np.linspace(1.0, 2.0, 20),  # within 2x: linear
        "kl_co": np.linspace(2.0, 3.0, 20),
        "l2": np.linspace(5.0, 4.0, 20),
        "valid_recon": np.where(epochs % 5 == 0, 1100.0 / epochs, np.nan),  # logged every 5 epochs
        "kl_ramp": np.clip(epochs / 10, 0, 1),
        "l2_ramp": np.clip(epochs / 10, 0, 1),
        "lr": 1e-2 * 0.8 ** epochs,
        "epoch_seconds": np.full(20, 0.5),
        "valid_rate_r2": np.linspace(0.1, 0.8, 20),
        "note": ["x"] * 20,  # not numeric: ignored
    })
    fig = plots.history(df)
    assert [a.text for a in fig.layout.annotations] == [
        "reconstruction (and the objective)", "KL divergence (before weighting)", "L2 penalty (before weighting)",
        "learning rate", "regulariser ramps", "time per epoch", "other metrics"]
    names = ["train_loss", "train_recon", "valid_recon", "kl_ic", "kl_co", "l2", "lr", "kl_ramp", "l2_ramp",
             "epoch_seconds"]
    assert [t.name for t in fig.data] == [plots.METRIC_STYLES[n][0] for n in names] + ["valid_rate_r2"]
    assert [t.line.color for t in fig.data[:-1]] == [plots.METRIC_STYLES[n][1] for n in names]  # shared colours
    assert len(fig.data[2].x) == 4  # NaN epochs skipped
    types = [getattr(fig.layout, f"yaxis{i if i > 1 else ''}").type for i in range(1, 8)]
    assert types == ["log", "linear", "linear", "log", "linear", "linear", "linear"]
    assert fig.layout.yaxis.title.text == "NLL per entry (nats) (log)" and fig.layout.yaxis.exponentformat == "power"
    assert fig.layout.yaxis2.title.text == "KL per trial (nats)"
    assert fig.layout.xaxis7.title.text == "epoch"
    with pytest.raises(DataError, match="reset_index"):
        plots.history(df.set_index("epoch"))
    with pytest.raises(DataError, match="no numeric metric"):
        plots.history(df[["epoch", "note"]])


def test_scatter_metric_hover_shows_hyperparameters():
    table = pd.DataFrame({"valid_nll": [0.31, 0.29, 0.30], "rate_r2": [0.7, 0.8, 0.75],
                          "kl_weight": [1e-4, 1e-3, 1e-2], "dropout": [0.1, 0.2, 0.3]})
    fig = plots.scatter_metric(table, "valid_nll", "rate_r2", color="dropout")
    (trace,) = fig.data
    np.testing.assert_allclose(np.asarray(trace.x), table["valid_nll"])
    assert "kl_weight" in trace.hovertemplate and "dropout" in trace.hovertemplate
    assert fig.layout.xaxis.title.text == "valid_nll" and fig.layout.yaxis.title.text == "rate_r2"
    assert "3 models" in fig.layout.title.text
    with pytest.raises(DataError, match="no column 'bps'"):
        plots.scatter_metric(table, "valid_nll", "bps")


# ----------------------------------------------------------------------------- population-based training

def pbt_history():
    """A 4-generation, 4-member history in pbt's own format (lfads_nb.tune.pbt._history), values by hand.

    Generation 2: member 3 copied member 0 and member 1 copied member 2; generation 3: member 0
    copied member 3. The best fitness (0.5) is member 0 at generation 3, whose ancestry is
    member 0 (g0), 0 (g1), 3 (g2, copied from 0), 0 (g3, copied from 3).
    """
    import dataclasses
    import json

    from lfads_nb.tune.pbt import _history, _RunState
    from lfads_nb.tune.search import Hyperparameter, SearchSpace

    space = SearchSpace([Hyperparameter("lr", 1e-5, 5e-3, log=True), Hyperparameter("dropout", 0.0, 0.6, log=False),
                         Hyperparameter("l2_gen_scale", 1e-4, 1.0, log=True)])
    fitness = np.array([[1.0, 1.1, 0.9, 1.2], [0.8, 1.0, 0.7, 0.95], [0.7, 0.66, 0.6, 0.65], [0.5, 0.62, 0.55, np.nan]])
    parent = np.array([[0, 1, 2, 3], [0, 1, 2, 3], [0, 2, 2, 0], [3, 1, 2, 3]])
    lr = np.array([[4e-3] * 4, [4e-3] * 4, [4e-3, 3e-3, 4e-3, 5e-3], [4.5e-3, 3e-3, 4e-3, 5e-3]])
    state = _RunState(4)
    for g in range(4):
        state.rows.append({"fitness": fitness[g], "parent": parent[g], "end_epoch": 3 + 2 * g, "seconds": 1.0,
                           "valid_recon": fitness[g], "train_loss": fitness[g] + 0.1, "lr": lr[g],
                           "dropout": np.full(4, 0.1 + 0.05 * g), "l2_gen_scale": np.full(4, 1e-3 * 10 ** g)})
    settings = {"space": {n: dataclasses.asdict(hp) for n, hp in space.items()}}
    h = _history(state, space, settings)
    assert json.loads(h.attrs["space"]).keys() == {"lr", "dropout", "l2_gen_scale"}
    return h


def test_pbt_hyperparameters_one_stepped_line_per_member_log_axis_for_log_scaled():
    h = pbt_history()
    fig = plots.pbt_hyperparameters(h)
    assert [a.text for a in fig.layout.annotations] == ["lr", "dropout", "l2_gen_scale"]
    assert len(fig.data) == 3 * 4  # 3 hyperparameters x 4 members
    lr_member_1 = fig.data[1]
    assert lr_member_1.name == "member 1" and lr_member_1.line.shape == "hv"
    np.testing.assert_allclose(lr_member_1.y, h["lr"].sel(member=1).values)
    np.testing.assert_array_equal(lr_member_1.x, [0, 1, 2, 3])
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.range == pytest.approx((np.log10(1e-5), np.log10(5e-3)))
    assert fig.layout.yaxis2.type != "log" and fig.layout.yaxis2.range == (0.0, 0.6)  # dropout: linear
    assert fig.layout.yaxis3.type == "log"
    assert sum(t.showlegend is not False for t in fig.data) == 4  # one legend entry per member
    assert fig.data[0].line.color == fig.data[4].line.color  # a member keeps its colour across panels


def test_pbt_fitness_members_and_best_so_far():
    h = pbt_history()
    fig = plots.pbt_fitness(h)
    assert [t.name for t in fig.data] == ["member 0", "member 1", "member 2", "member 3", "best so far"]
    np.testing.assert_allclose(fig.data[4].y, [0.9, 0.7, 0.6, 0.5])  # running minimum, NaN ignored
    assert np.isnan(fig.data[3].y[3])  # a diverged member shows as a gap
    assert "nats per entry" in fig.layout.yaxis.title.text and "generation" in fig.layout.xaxis.title.text


def test_pbt_lineage_copies_and_ancestry_of_the_best():
    h = pbt_history()
    fig = plots.pbt_lineage(h)
    kept, copied, ancestry, dots = fig.data
    segments = lambda tr: {(tr.x[k], tr.y[k], tr.x[k + 1], tr.y[k + 1]) for k in range(0, len(tr.x), 3)}
    assert segments(copied) == {(1, 0, 2, 3), (1, 2, 2, 1), (2, 3, 3, 0)}  # (g-1, parent) -> (g, member)
    assert len(segments(kept)) == 3 * 4 - 3
    assert (1, 1, 2, 1) not in segments(kept)  # member 1 did not keep its weights at generation 2
    assert list(ancestry.x) == [0, 1, 2, 3] and list(ancestry.y) == [0, 0, 3, 0]
    assert len(dots.x) == 16
    # coloured by rank within the generation (generation 0's fitness 1.0, 1.1, 0.9, 1.2), 1 = best
    np.testing.assert_allclose(np.asarray(dots.marker.color, dtype=float)[:4], [2, 3, 1, 4])
    assert np.asarray(dots.marker.color, dtype=float)[15] == 4  # a diverged (NaN) member ranks last


def test_pbt_plots_reject_what_is_not_a_history():
    for fn in (plots.pbt_hyperparameters, plots.pbt_fitness, plots.pbt_lineage):
        with pytest.raises(DataError, match="PBTResult.history"):
            fn(pd.DataFrame({"fitness": [1.0]}))
        with pytest.raises(DataError, match="PBTResult.history"):
            fn(pbt_history().drop_vars("parent"))


def test_latency_scores_has_readable_ticks_and_labels():
    """Two models a decade apart: at least two labelled ticks in ms between them, readable axis
    titles (not the raw column names), one labelled point per model."""
    table = pd.DataFrame({"latency_ms": [0.9, 8.5], "rate_r2": [0.6, 0.8]}, index=pd.Index(["ndt", "lfads"], name="model"))
    fig = plots.latency_scores(table)
    ticks = [t for t in fig.layout.xaxis.tickvals if 0.9 <= t <= 8.5]
    assert len(ticks) >= 2 and all(text.endswith(" ms") for text in fig.layout.xaxis.ticktext)
    assert fig.layout.yaxis.title.text.startswith("rate R²") and "rate_r2" not in fig.layout.title.text
    assert [t.text[0] for t in fig.data] == ["ndt", "lfads"]
    with pytest.raises(DataError, match="latency_ms"):
        plots.latency_scores(table.drop(columns="latency_ms"))


def test_validation_curves_draw_each_model_the_truth_and_the_curriculum():
    epochs = np.arange(6)
    h = pd.DataFrame({"epoch": epochs, "valid_recon": 2.0 - 0.1 * epochs, "valid_truth_nll": 1.3,
                      "train_bins": [2, 4, 6, 6, 6, 6]})
    fig = plots.validation_curves({"gru_3": h, "node_3": h.assign(valid_recon=h.valid_recon - 0.05)})
    assert [t.name for t in fig.data] == ["gru_3", "node_3"]
    assert fig.layout.shapes[0].y0 == 1.3  # the truth's NLL
    assert fig.layout.shapes[1].x1 == 2.5  # epochs 1-2 trained on fewer bins than whole trials
    assert fig.layout.yaxis.title.text == "validation NLL per entry (nats)"
    with pytest.raises(DataError, match="valid_recon"):
        plots.validation_curves({"a": h.drop(columns="valid_recon")})
