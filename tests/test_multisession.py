"""Multisession stitching: PCR read-ins, mixed batches, training, checkpoints and inference with
several sessions (lfads_nb.models.multisession, lfads_nb.training.feed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import lfads_nb
from data_generators import chaotic_rnn_multisession
from lfads_nb import ConfigError, DataError
from lfads_nb.dashboard import Progress
from lfads_nb.data import make_sessions
from lfads_nb.models.multisession import StitchedLFADS, pcr_read_in
from lfads_nb.checkpoint import load_checkpoint
from lfads_nb.models.registry import LFADS_LOSS_WEIGHTS
from lfads_nb.training import make_feed
from lfads_nb.training.feed import session_view
from lfads_nb.training.loop import loss_weights, validation_metrics, validation_nll

SIZES = dict(gen_dim=16, ic_enc_dim=8, ic_dim=8, fac_dim=6, co_dim=0)


def small_tree(**options):
    settings = dict(n_sessions=3, units_per_session=[8, 10, 6], shared_units=2, n_conditions=6,
                    trials_per_condition=[5, 5, 2], n_bins=12)
    return chaotic_rnn_multisession(0, **{**settings, **options})


def config(**options):
    return lfads_nb.TrainConfig(**{"max_epochs": 2, "batch_size": 16, "kl_ramp_epochs": 1, "l2_ramp_epochs": 1,
                                   **options})


def test_pcr_read_in_is_least_squares_of_psths_onto_global_pcs():
    """Closed form: condition-averaged PSTHs of the train trials (no smoothing), the top PCs of
    the sessions' PSTHs side by side from numpy's eigh of their covariance (not the SVD the code
    uses), and per session numpy lstsq from its centred PSTHs onto the PC scores."""
    tree = small_tree()
    names = list(tree.children)
    K = 4
    model = lfads_nb.build_model(tree, seed=0, smooth_bins=0.0, encod_dim=K, **SIZES)
    psths = {}
    for name in names:
        ds = tree[name].to_dataset()
        train = ds.sel(trial=ds.split == "train")
        psths[name] = np.concatenate([train.spikes.values[train.condition.values == c].mean(0)
                                      for c in range(6)]).astype(float)  # (C T, N)
    stacked = np.concatenate([psths[n] for n in names], axis=1)
    centred = stacked - stacked.mean(0)
    eigenvalues, vectors = np.linalg.eigh(centred.T @ centred)
    pcs = vectors[:, np.argsort(eigenvalues)[::-1][:K]]
    scores = centred @ pcs
    for name in names:
        mean = psths[name].mean(0)
        expected, *_ = np.linalg.lstsq(psths[name] - mean, scores, rcond=None)
        read_in = model.sessions[name].read_in
        weight = read_in.weight.detach().double().numpy()
        signs = np.sign(np.sum(weight * expected, axis=0))  # a PC's sign is arbitrary
        np.testing.assert_allclose(weight * signs, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(read_in.bias.detach().double().numpy() * signs, -mean @ expected, rtol=1e-4,
                                   atol=1e-5)
        assert not read_in.weight.requires_grad  # frozen by default
        x = torch.as_tensor(psths[name], dtype=torch.float32)
        np.testing.assert_allclose(read_in(x).double().numpy() * signs, (psths[name] - mean) @ expected, atol=1e-4)
    _, explained = pcr_read_in({n: tree[n].to_dataset() for n in names}, K, 0.0)
    assert explained == pytest.approx(np.sort(eigenvalues)[::-1][:K].sum() / eigenvalues.sum(), rel=1e-6)


def test_session_missing_a_condition_for_pcr_is_refused_with_the_fix():
    tree = small_tree()
    poor = tree["session2"].to_dataset()
    poor = poor.sel(trial=poor.condition != 3)
    broken = make_sessions({"session0": tree["session0"].to_dataset(), "session1": tree["session1"].to_dataset(),
                            "session2": poor})
    with pytest.raises(DataError, match=r"Session 'session2' has no training trials of conditions \[3\].*Drop"):
        lfads_nb.build_model(broken, **SIZES)


def test_sessions_with_different_bin_widths_or_time_bins_are_refused():
    tree = small_tree()
    first, second = tree["session0"].to_dataset(), tree["session1"].to_dataset()
    slower = second.assign_coords(time=(np.arange(second.sizes["time"]) + 0.5) * 0.02).assign_attrs(bin_width=0.02)
    shorter = second.isel(time=slice(0, 10))
    for other, what in [(slower, "bin width"), (shorter, "number of time bins")]:
        mixed = xr.DataTree.from_dict({"a": first, "b": other})
        with pytest.raises(DataError, match=f"Session 'b' has {what}.*same kind, bin width and trial length. Bring "
                                            "them to one grid"):
            lfads_nb.build_model(mixed, **SIZES)


def test_too_wide_read_in_and_external_inputs_are_refused():
    tree = small_tree()
    with pytest.raises(ConfigError, match="encod_dim <= "):
        lfads_nb.build_model(tree, encod_dim=500, **SIZES)
    ds = tree["session0"].to_dataset()
    ds["ext_input"] = (("trial", "time", "ext_input_dim"), np.zeros((ds.sizes["trial"], ds.sizes["time"], 1)))
    with_inputs = make_sessions({"session0": ds, "session1": tree["session1"].to_dataset()})
    with pytest.raises(DataError, match="external inputs.*drop_vars"):
        lfads_nb.build_model(with_inputs, **SIZES)


def test_every_step_mixes_the_sessions_in_proportion_and_an_epoch_shows_each_trial_once():
    tree = small_tree(trials_per_condition=[10, 5, 2])
    feed = make_feed(tree, config(batch_size=20))
    n_train = {name: len(part.train_idx) for name, part in feed.sessions.items()}
    assert feed.steps_per_epoch == int(np.ceil(sum(n_train.values()) / 20))
    feed.shuffle(torch.Generator().manual_seed(0))
    seen = {name: [] for name in n_train}
    for step in range(feed.steps_per_epoch):
        batches = feed.draw_training_batch(feed.step_trials(step), config(batch_size=20))
        assert set(batches) == set(n_train)  # every session in every step here
        for name, batch in batches.items():
            share = n_train[name] / feed.steps_per_epoch
            assert abs(batch.target.shape[0] - share) < 1  # proportional to the session's size
            seen[name].append(batch.target.shape[0])
    for name, part in feed.sessions.items():
        assert sum(seen[name]) == n_train[name]
        assert sorted(part.order.tolist()) == sorted(part.train_idx.tolist())


def test_loss_over_sessions_is_the_mean_over_all_their_counted_entries():
    """Trials do not interact in the core, so running two sessions' trials together must give
    each session the NLL it gets alone; recon is then the entry-weighted mean (float64)."""
    tree = small_tree()
    model = lfads_nb.build_model(tree, seed=0, **SIZES).double().eval()
    feed = make_feed(tree, config(), dtype=torch.float64)
    feed.shuffle(torch.Generator().manual_seed(0))
    batches = feed.draw_training_batch(feed.step_trials(0), config())
    weights = loss_weights(LFADS_LOSS_WEIGHTS, config(kl_ic_scale=0, kl_co_scale=0, l2_gen_scale=0, l2_con_scale=0),
                           1.0, 1.0)
    out, params = model.run_sessions(batches, sample=False)
    _, parts = model.objective(out, batches, weights, params)
    sums = sum(validation_nll(model, session_view(name), b)[1] for name, b in batches.items())
    assert float(parts["train_recon"].detach()) == pytest.approx(float((sums[0] / sums[1]).detach()), rel=1e-12)


def test_training_with_sessions_checkpoints_and_resumes_exactly(tmp_path):
    tree = small_tree()
    build = lambda: lfads_nb.build_model(tree, seed=0, **SIZES)  # noqa: E731
    whole = lfads_nb.train(build(), tree, config(max_epochs=3), checkpoint_dir=tmp_path / "whole", progress=Progress())
    lfads_nb.train(build(), tree, config(max_epochs=2), checkpoint_dir=tmp_path / "split", progress=Progress())
    resumed = lfads_nb.train(build(), tree, config(max_epochs=3), checkpoint_dir=tmp_path / "split",
                             progress=Progress())
    np.testing.assert_array_equal(whole.history["valid_recon"], resumed.history["valid_recon"])
    for key, value in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)
    ckpt = load_checkpoint(tmp_path / "whole" / "best.pt")  # weights_only=True
    assert ckpt["model_family"] == "stitchedlfads"
    loaded = lfads_nb.load_model(tmp_path / "whole" / "best.pt")
    assert isinstance(loaded, StitchedLFADS) and list(loaded.sessions) == list(tree.children)
    for key, value in whole.model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    a, b = lfads_nb.infer(whole.model, tree), lfads_nb.infer(loaded, tree)
    for name in tree.children:
        xr.testing.assert_allclose(a[name].to_dataset(), b[name].to_dataset())


def test_frozen_read_ins_stay_put_and_trainable_ones_learn():
    tree = small_tree()
    frozen = lfads_nb.build_model(tree, seed=0, **SIZES)
    start = {n: e.read_in.weight.detach().clone() for n, e in frozen.sessions.items()}
    readout = {n: e.observation.readout.weight.detach().clone() for n, e in frozen.sessions.items()}
    lfads_nb.train(frozen, tree, config(), progress=Progress())
    trainable = lfads_nb.build_model(tree, seed=0, train_read_in=True, **SIZES)
    lfads_nb.train(trainable, tree, config(), progress=Progress())
    for name, ends in frozen.sessions.items():
        torch.testing.assert_close(ends.read_in.weight, start[name], rtol=0, atol=0)
        assert not torch.equal(ends.observation.readout.weight, readout[name])  # each read-out trains
        assert not torch.equal(trainable.sessions[name].read_in.weight, start[name])


def test_infer_returns_each_sessions_trials_time_bins_and_neurons(tmp_path):
    tree = small_tree()
    model = lfads_nb.build_model(tree, seed=0, **SIZES)
    out = lfads_nb.infer(model, tree)
    assert list(out.children) == list(tree.children)
    for name in tree.children:
        ds, result = tree[name].to_dataset(), out[name].to_dataset()
        for coord in ("trial", "time", "neuron", "split", "condition"):
            np.testing.assert_array_equal(result[coord].values, ds[coord].values)
        assert result["rates"].dims == ("trial", "time", "neuron") and result["rates"].attrs["units"] == "Hz"
        assert result["factors"].shape == (ds.sizes["trial"], ds.sizes["time"], SIZES["fac_dim"])
        # one session alone gives the same as within the tree
        alone = lfads_nb.infer(model.for_session(name), ds)
        xr.testing.assert_allclose(alone, result)
    lfads_nb.save(out, tmp_path / "out.nc")
    back = lfads_nb.load(tmp_path / "out.nc")
    xr.testing.assert_allclose(back["session1"].to_dataset()["rates"], out["session1"].to_dataset()["rates"])


def test_wrong_model_or_sessions_are_refused_by_name():
    tree = small_tree()
    single = lfads_nb.build_model(tree["session0"].to_dataset(), seed=0, **SIZES)
    with pytest.raises(DataError, match=r"need a model built on them.*build_model\(tree"):
        lfads_nb.infer(single, tree)
    with pytest.raises(DataError, match=r"need a model built on them"):
        lfads_nb.train(single, tree, config(), progress=Progress())
    stitched = lfads_nb.build_model(tree, seed=0, **SIZES)
    two = make_sessions({"session0": tree["session0"].to_dataset(), "session1": tree["session1"].to_dataset()})
    with pytest.raises(DataError, match=r"built for sessions \['session0', 'session1', 'session2'\]"):
        lfads_nb.infer(stitched, two)
    with pytest.raises(DataError, match="Session 'session1' of the model has 10 neurons"):
        stitched.for_session("session1").check_data(tree["session0"].to_dataset())


def test_dashboard_example_names_the_session():
    tree = small_tree()

    class Recording(Progress):
        def update(self, row, example):
            super().update(row, example)
            self.example = example

    progress = Recording()
    lfads_nb.train(lfads_nb.build_model(tree, seed=0, **SIZES), tree, config(max_epochs=1), progress=progress)
    assert str(progress.example["trial"]).endswith("of session0")
    assert progress.example["rates"].shape == (12, 3) and np.isfinite(progress.rows[0]["valid_truth_nll"])


def test_session_decoding_r2_against_sklearn_and_shared_versus_private_spaces():
    """Reference: sklearn's PCA and LinearRegression on the same rows. Factors that are one
    affine map of the truth in every session decode across sessions as well as within; a
    different map per session decodes within but not across."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(1)
    split = np.array(["train"] * 8 + ["valid"] * 4)

    def da(values, dim):
        return xr.DataArray(values, dims=("trial", "time", dim), coords={"split": ("trial", split)})

    truth = {f"s{i}": rng.standard_normal((12, 7, 6)) for i in range(3)}
    shared_map = rng.standard_normal((6, 8))
    shared = {n: da(t @ shared_map + 0.1 * rng.standard_normal((12, 7, 8)), "factor") for n, t in truth.items()}
    truth = {n: da(t, "latent") for n, t in truth.items()}
    scores = lfads_nb.metrics.session_decoding_r2(shared, truth, n_components=3)
    rows = lambda d, label: d.values[split == label].reshape(-1, d.shape[-1])  # noqa: E731
    pca = PCA(3).fit(np.concatenate([rows(t, "train") for t in truth.values()]))
    fit = LinearRegression().fit(np.concatenate([rows(shared[n], "train") for n in ("s1", "s2")]),
                                 pca.transform(np.concatenate([rows(truth[n], "train") for n in ("s1", "s2")])))
    expected = r2_score(pca.transform(rows(truth["s0"], "valid")), fit.predict(rows(shared["s0"], "valid")))
    assert float(scores.across_r2.sel(session="s0")) == pytest.approx(expected, rel=1e-8)
    assert abs(float(scores.across_r2.mean() - scores.within_r2.mean())) < 0.05
    private = {n: da(truth[n].values @ rng.standard_normal((6, 8)), "factor") for n in truth}
    apart = lfads_nb.metrics.session_decoding_r2(private, truth, n_components=3)
    assert float(apart.within_r2.min()) > 0.99 and float(apart.across_r2.max()) < 0.5
    with pytest.raises(DataError, match="two or more sessions"):
        lfads_nb.metrics.session_decoding_r2({"s0": shared["s0"]}, {"s0": truth["s0"]})


def test_session_decoding_r2_aligned_maps_private_spaces_back_by_condition_means():
    """Factors that are a different affine map of the truth per session decode across sessions only
    after the alignment: condition-mean latents of another session mapped by least squares onto
    this session's (reference: the alignment map from numpy lstsq on the condition means, then the
    decoder from sklearn's LinearRegression on the mapped rows). Shuffling the condition labels of
    the 'valid' trials changes nothing (the alignment reads 'train' trials only); without a
    'condition' coord it is refused by name."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(2)
    split = np.array(["train"] * 16 + ["valid"] * 8)
    condition = np.tile(np.arange(4), 6)
    base = rng.standard_normal((4, 7, 6))  # per-condition trajectories of the true state

    def da(values, dim, labels=condition):
        return xr.DataArray(values, dims=("trial", "time", dim),
                            coords={"split": ("trial", split), "condition": ("trial", labels)})

    truth = {f"s{i}": base[condition] + 0.3 * rng.standard_normal((24, 7, 6)) for i in range(3)}
    maps = {n: (rng.standard_normal((6, 8)), rng.standard_normal(8)) for n in truth}
    private = {n: da(t @ maps[n][0] + maps[n][1], "factor") for n, t in truth.items()}
    truth = {n: da(t, "latent") for n, t in truth.items()}
    scores = lfads_nb.metrics.session_decoding_r2(private, truth, n_components=3, align=True)
    assert float(scores.across_r2.max()) < 0.5
    assert float(abs(scores.across_aligned_r2 - scores.within_r2).max()) < 0.05
    rows = lambda d, label: d.values[split == label].reshape(-1, d.shape[-1])  # noqa: E731
    means = lambda d: np.concatenate([d.values[(split == "train") & (condition == c)].mean(0) for c in range(4)])  # noqa: E731
    pca = PCA(3).fit(np.concatenate([rows(t, "train") for t in truth.values()]))
    mapped, targets = [], []
    for other in ("s1", "s2"):
        source = means(private[other])
        mapping, *_ = np.linalg.lstsq(np.hstack([source, np.ones((len(source), 1))]), means(private["s0"]), rcond=None)
        x = rows(private[other], "train")
        mapped.append(np.hstack([x, np.ones((len(x), 1))]) @ mapping)
        targets.append(pca.transform(rows(truth[other], "train")))
    fit = LinearRegression().fit(np.concatenate(mapped), np.concatenate(targets))
    expected = r2_score(pca.transform(rows(truth["s0"], "valid")), fit.predict(rows(private["s0"], "valid")))
    assert float(scores.across_aligned_r2.sel(session="s0")) == pytest.approx(expected, rel=1e-6)
    shuffled = condition.copy()
    shuffled[split == "valid"] = rng.permutation(shuffled[split == "valid"])
    relabelled = {n: d.assign_coords(condition=("trial", shuffled)) for n, d in private.items()}
    again = lfads_nb.metrics.session_decoding_r2(relabelled, truth, n_components=3, align=True)
    np.testing.assert_allclose(again.across_aligned_r2.values, scores.across_aligned_r2.values)
    with pytest.raises(DataError, match="'condition' coord"):
        lfads_nb.metrics.session_decoding_r2({n: d.drop_vars("condition") for n, d in private.items()}, truth,
                                             n_components=3, align=True)


def test_read_in_psths_agree_across_sessions_after_pcr_and_plot():
    """PCR maps every session's PSTHs near the same global scores: the sessions' read-in curves
    are closer to each other than to those of a random read-in (lfads-torch's random, frozen
    projection)."""
    from lfads_nb.models.multisession import read_in_psths

    tree = small_tree(units_per_session=[12, 12, 12], shared_units=0, trials_per_condition=5)
    model = lfads_nb.build_model(tree, seed=0, encod_dim=3, **SIZES)
    curves = read_in_psths(model, tree, range(6))
    assert curves.dims == ("session", "condition", "time", "component") and curves.shape == (3, 6, 12, 3)
    spread = float(curves.std("session").mean() / curves.std(("condition", "time")).mean())
    for ends in model.sessions.values():
        torch.nn.init.normal_(ends.read_in.weight, std=0.3)
    random = read_in_psths(model, tree, range(6))
    assert spread < 0.5 * float(random.std("session").mean() / random.std(("condition", "time")).mean())
    fig = lfads_nb.plots.session_alignment(curves)
    assert len(fig.data) == 3 * 6 * 3 and fig.layout.height >= 500
    with pytest.raises(DataError, match="missing"):
        lfads_nb.plots.session_alignment(curves.rename(component="pc"))


def test_population_of_stitched_members_equals_separate_stitched_models_float64():
    """PBT's engine on several sessions: a population of 2 stitched members (vmap over stacked
    weights, the fused kernels' vmap rules) against 2 separate StitchedLFADS stepped with their
    own loss, clip_grad_norm_ and torch Adam on the same random numbers, in float64. Frozen
    read-ins stay frozen in the population."""

    tree = small_tree()
    members = [lfads_nb.build_model(tree, seed=s, **{**SIZES, "co_dim": 1, "ci_enc_dim": 4, "con_dim": 4}).double()
               for s in (1, 2)]
    torch.set_default_dtype(torch.float64)  # as tests/test_population.py: every tensor made on the way in float64
    try:
        _population_against_references(tree, members)
    finally:
        torch.set_default_dtype(torch.float32)


def _population_against_references(tree, members):
    import copy
    import dataclasses

    from lfads_nb.models.registry import FAMILIES
    from lfads_nb.tune.population import Population, draw_step_noise

    references = [copy.deepcopy(m).train() for m in members]
    hps = {"lr": [1e-2, 3e-3], "cd_rate": [0.3, 0.0], "dropout": [0.1, 0.0], "kl_ic_scale": [1e-3, 0.1]}
    shared = lfads_nb.TrainConfig(batch_size=8)
    pop = Population(members, shared, hps, dtype=torch.float64)
    configs = [dataclasses.replace(shared, **{k: v[i] for k, v in hps.items() if k != "dropout"}) for i in range(2)]
    optims = [torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=c.lr) for m, c in zip(references, configs)]
    names = list(tree.children)
    feed = make_feed(tree, shared, dtype=torch.float64)
    for session in feed.sessions.values():  # the training trials in their order, unshuffled
        session.order = session.train_idx
    gen = torch.Generator().manual_seed(0)
    for step in range(3):
        trials = feed.step_trials(step)
        noise = draw_step_noise(FAMILIES["stitched"], pop.model_config, 2, feed.step_sizes(trials), 12, gen,
                                torch.float64)
        got = pop.step(feed, trials, 0.5, 0.5, noise=noise)
        for i, (model, cfg) in enumerate(zip(references, configs)):
            batches = feed.training_batch(trials, cfg.cd_rate, {n: noise.cd[n][i] for n in trials}, None)
            member_noise = type(noise.model)(*(None if v is None else v[i] for v in noise.model))
            loss, _ = model.loss(batches, loss_weights(LFADS_LOSS_WEIGHTS, cfg, 0.5, 0.5), noise=member_noise,
                                 dropout=hps["dropout"][i])
            optims[i].zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optims[i].step()
            torch.testing.assert_close(got["train_loss"][i], loss.detach(), rtol=1e-10, atol=1e-12)
    for i, model in enumerate(references):
        mine = pop.model.member_state_dict(i)
        for k, v in model.state_dict().items():
            torch.testing.assert_close(mine[k], v, rtol=1e-9, atol=1e-11, msg=f"member {i} {k}")
        for n in names:
            torch.testing.assert_close(mine[f"sessions.{n}.read_in.weight"], members[i].sessions[n].read_in.weight)
    metrics = pop.validate(feed, batch_size=3)
    for i, model in enumerate(references):
        want = validation_metrics(model, feed, 3)["valid_recon"]
        assert metrics["valid_recon"][i].item() == pytest.approx(want.item(), rel=1e-10)
    assert isinstance(pop.member_model(1), StitchedLFADS)


def test_pbt_on_sessions_returns_a_stitched_model_and_a_loadable_best_checkpoint(tmp_path):
    from lfads_nb.tune.pbt import pbt

    tree = small_tree()
    result = pbt(tree, pbt_config=lfads_nb.PBTConfig(population=2, burn_in_epochs=1, generation_epochs=1,
                                                    max_generations=1),
                 train_config=config(), model_sizes=SIZES, checkpoint_dir=tmp_path, progress=None, live=False)
    assert isinstance(result.model, StitchedLFADS) and list(result.model.sessions) == list(tree.children)
    best = lfads_nb.load_model(tmp_path / "best.pt")
    for key, value in result.model.state_dict().items():
        torch.testing.assert_close(best.state_dict()[key], value, rtol=0, atol=0)
    out = lfads_nb.infer(best, tree)
    assert out["session2"].to_dataset().rates.shape == tree["session2"].to_dataset().spikes.shape
    assert np.isfinite(result.history["fitness"].values).all()


def test_tools_for_one_session_name_the_fix_for_a_tree():
    tree = small_tree()
    with pytest.raises(DataError, match=r"got a DataTree of sessions.*to_dataset\(\).*pbt take the whole tree"):
        lfads_nb.random_search(tree, n_models=1)
