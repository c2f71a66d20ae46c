"""plots.state_fit: the figure shows what metrics.state_r2 scores (checked on latents with a known answer);
plots.fixed_points_true_space: one colour per model across its panels."""
import numpy as np
import pytest
import xarray as xr

from lfads_nb import DataError, plots


def _da(values, dim):
    return xr.DataArray(values, dims=("trial", "time", dim),
                        coords={"trial": np.arange(values.shape[0]), "time": 0.01 * np.arange(values.shape[1])})


def test_state_fit_panels_and_scores():
    rng = np.random.default_rng(0)
    true = _da(rng.normal(size=(5, 20, 3)), "latent")
    exact = _da(true.values @ rng.normal(size=(3, 3)) + 1.0, "generator")  # an affine image: R^2 1
    extra = _da(np.concatenate([true.values, rng.normal(size=(5, 20, 7))], -1), "generator")
    fig = plots.state_fit(true, {"exact": exact, "extra": extra}, trial=2)
    assert len(fig.data) == 2 * 3 * 2  # 2 models x 3 components x (inferred, fitted)
    assert fig.layout.annotations[0].text == "exact: state R² 1.00"
    assert fig.layout.annotations[1].text.startswith("extra: state R² 0.")
    # for the exact model the dashed prediction lies on the solid state
    np.testing.assert_allclose(fig.data[0].y, fig.data[1].y, atol=1e-8)
    with pytest.raises(DataError, match="valid trials"):
        plots.state_fit(true, {"exact": exact}, trial=99)


def test_true_space_gives_each_model_one_colour_in_both_panels():
    """plots.fixed_points_true_space: a model's markers have the same colour (and symbol) in the x-y and x-z
    panels, and two models differ; the true points are drawn where they are."""
    from lfads_nb import dynamics

    rng = np.random.default_rng(0)
    latents = xr.DataArray(rng.normal(size=(4, 10, 3)), dims=("trial", "time", "latent"),
                           coords={"latent": ["x", "y", "z"]})
    true = np.array([[0.0, 0.0, -2.0], [1.0, 1.0, 0.5]])
    fig = plots.fixed_points_true_space(latents, true, {"node_3": true + 0.1, "gru_large": true[:1]},
                                   labels={"node_3": ["1", "2"]})
    markers = {}
    for trace in fig.data:
        if trace.name and trace.name.startswith("found by"):
            markers.setdefault(trace.name, set()).add((trace.marker.color, trace.marker.symbol))
    assert set(markers) == {"found by node_3", "found by gru_large"}
    assert all(len(styles) == 1 for styles in markers.values())  # one style across both panels
    assert markers["found by node_3"] != markers["found by gru_large"]
    assert [list(t.text) for t in fig.data if t.name == "found by node_3"] == [["1", "2"]] * 2
    truth = [t for t in fig.data if t.name == "true fixed points"]
    assert len(truth) == 2 and list(truth[1].y) == [-2.0, 0.5]  # the x-z panel plots z
