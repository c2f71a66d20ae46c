"""Every tutorial runs under papermill with small CI parameters, stays stripped, and is a batch job.

The standard these tests enforce (and the parts they cannot) is written down in tutorials/STANDARD.md.

The executed copies land in ``test-artifacts/tutorials/<name>/`` so a failing run can be read.
Cells tagged ``nbval-check-output`` must reproduce their output when nbval (lax) re-runs the
executed notebook: the outputs that should be stable (shapes, seeded statistics) really are.
"""
from __future__ import annotations

import ast
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import papermill
import pytest
import xarray as xr

import lfads_nb

from lfads_nb._run_notebooks import check_claims, declared_claims, execute, tutorial_paths

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = tutorial_paths(ROOT / "tutorials")
ARTIFACTS = ROOT / "test-artifacts" / "tutorials"

# Small, CI-sized parameters per tutorial; the notebooks' own defaults are teaching-sized.
CI_PARAMETERS = {
    "01_synthetic_data.ipynb": {"n_conditions": 20, "trials_per_condition": 5},
    "02_train_lfads.ipynb": {"n_conditions": 12, "trials_per_condition": 5, "max_epochs": 3,
                             "gen_dim": 16, "ic_enc_dim": 16, "ic_dim": 8, "fac_dim": 6,
                             "co_dim": 1, "ci_enc_dim": 8, "con_dim": 8,
                             "n_posterior_samples": 2, "output_path": "rates_ci.nc", "scores_path": "lfads_scores_ci.nc"},
    "03_identity_overfitting.ipynb": {"n_models": 2, "max_epochs": 2, "n_conditions": 8, "trials_per_condition": 5,
                                      "n_bins": 12, "ic_enc_dim": 8, "ci_enc_dim": 6, "con_dim": 6, "co_dim": 1,
                                      "ic_dim": 4, "gen_dim": 12, "fac_dim": 4,
                                      "scores_path": "identity_overfitting_scores_ci.nc"},
    "04_autolfads_pbt.ipynb": {"n_conditions": 6, "trials_per_condition": 3, "population": 2, "burn_in_epochs": 1,
                               "generation_epochs": 1, "max_generations": 1, "batch_size": 8, "ic_enc_dim": 6,
                               "ic_dim": 4, "gen_dim": 8, "fac_dim": 3, "co_dim": 1, "ci_enc_dim": 4, "con_dim": 4,
                               "n_posterior_samples": 2, "output_path": "pbt_ci.nc",
                               "scores_path": "pbt_scores_ci.nc"},
    "05_emg_autolfads.ipynb": {"n_trials": 30, "max_epochs": 2, "batch_size": 10, "population": 2,
                               "burn_in_epochs": 1, "generation_epochs": 1, "max_generations": 1, "gen_dim": 8,
                               "ic_enc_dim": 6, "ic_dim": 4, "ci_enc_dim": 4, "con_dim": 4, "co_dim": 1, "fac_dim": 3,
                               "output_path": "emg_ci.nc", "scores_path": "emg_scores_ci.nc"},
    "06_calcium_radical.ipynb": {"n_neurons": 12, "n_conditions": 4, "trials_per_condition": 5, "n_frames": 6,
                                 "sweep_hz": [4.0], "gen_dim": 8, "ic_enc_dim": 8, "ic_dim": 4, "fac_dim": 3,
                                 "max_epochs": 2, "batch_size": 8, "output_path": "radical_ci.nc",
                                 "scores_path": "radical_scores_ci.nc"},
    "07_multisession.ipynb": {"n_sessions": 3, "units_per_session": 8, "n_conditions": 6, "trials_per_condition": 5,
                              "poor_trials_per_condition": 3, "n_bins": 20, "gen_dim": 8, "ic_enc_dim": 8, "ic_dim": 4,
                              "fac_dim": 4, "max_epochs": 2, "batch_size": 16, "n_components": 3,
                              "output_path": "stitched_ci.nc", "scores_path": "multisession_scores_ci.nc"},
    "08_expressive_dynamics.ipynb": {"n_trials": 40, "max_epochs": 2, "large_dim": 6, "output_path": "node_ci.nc",
                                     "scores_path": "scores_ci.nc"},
    "09_explore_dynamics.ipynb": {"n_trials": 40, "node_epochs": 2, "gru_epochs": 2, "large_dim": 6,
                                  "fixed_point_starts": 16, "fixed_point_steps": 100,
                                  "output_path": "explore_ci.nc", "scores_path": "explore_scores_ci.nc"},
    "10_neural_data_transformer.ipynb": {"n_conditions": 4, "lfads_epochs": 2, "ndt_epochs": 2, "ndt_d_model": 8,
                                         "ndt_layers": 1, "latency_repeats": 3, "output_path": "ndt_ci.nc",
                                         "scores_path": "ndt_scores_ci.nc"},
}

NBVAL_CHECKED = {"01_synthetic_data.ipynb"}


def _cells(path):
    return json.loads(Path(path).read_text())["cells"]


def test_every_tutorial_has_ci_parameters():
    names = [p.name for p in TUTORIALS]
    assert names, "no tutorials found"
    assert set(names) == set(CI_PARAMETERS), "add CI parameters for every tutorial (and only those)"


@pytest.mark.parametrize("notebook", TUTORIALS, ids=lambda p: p.name)
def test_committed_without_outputs(notebook):
    nb = json.loads(notebook.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{notebook.name}: strip outputs before committing"
            assert cell.get("execution_count") is None
    assert "widgets" not in nb.get("metadata", {}), f"{notebook.name}: saved widget state"


@pytest.mark.parametrize("notebook", TUTORIALS, ids=lambda p: p.name)
def test_parameters_cell_is_annotated(notebook):
    tagged = [c for c in _cells(notebook) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    source = "".join(tagged[0]["source"])
    tree = ast.parse(source)
    assigned = [n for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))]
    assert assigned and all(isinstance(n, ast.AnnAssign) for n in assigned), "type-annotate every parameter"
    lines = [ln for ln in source.splitlines() if ":" in ln and "=" in ln and not ln.lstrip().startswith("#")]
    assert all("#" in ln for ln in lines), "comment every parameter"
    names = {n.target.id for n in assigned}
    assert set(CI_PARAMETERS[notebook.name]) <= names, "CI parameters must be parameters of the notebook"
    # papermill must parse every line (it gives up on some, e.g. an '=' inside a comment)
    assert set(papermill.inspect_notebook(str(notebook))) == names


def test_tutorial_02_teaches_the_chaotic_rnn_recipe():
    """Tutorial 02's schedule parameters are ``recipes.CHAOTIC_RNN_TRAINING``, the one tutorial 10
    trains its LFADS by, so the two cannot drift apart."""
    from lfads_nb.recipes import CHAOTIC_RNN_TRAINING

    defaults = {name: ast.literal_eval(p["default"])
                for name, p in papermill.inspect_notebook(str(ROOT / "tutorials" / "02_train_lfads.ipynb")).items()
                if name in CHAOTIC_RNN_TRAINING}
    assert defaults == CHAOTIC_RNN_TRAINING


SCREEN_LINES = 30  # a code cell longer than a screen belongs in lfads_nb/


@pytest.mark.parametrize("notebook", TUTORIALS, ids=lambda p: p.name)
def test_reads_like_a_lecture(notebook):
    """Goals and prerequisites first, exercises with collapsed solutions, a summary and what comes next."""
    cells = _cells(notebook)
    opening = "".join(cells[0]["source"])
    assert cells[0]["cell_type"] == "markdown" and "Learning goals" in opening and "Prerequisites" in opening
    closing = "".join(cells[-1]["source"])
    assert cells[-1]["cell_type"] == "markdown" and "Summary" in closing and "next" in closing
    markdown = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert "Exercises" in markdown and "<details>" in markdown
    for cell in cells:
        if cell["cell_type"] == "code":
            lines = "".join(cell["source"]).splitlines()
            assert len(lines) <= SCREEN_LINES, f"{notebook.name}: a {len(lines)}-line cell belongs in the library"


PLOTLY_JSON = "application/vnd.plotly.v1+json"


def figures_in_export(executed: Path) -> tuple[int, int]:
    """(plotly figures the executed notebook holds, figures its nbconvert HTML export shows).

    An export shows a figure as a PNG ``<img>`` or as a plotly.js ``plotly-graph-div``; a figure
    stored as plotly JSON alone leaves nothing in the export, nor on GitHub.
    """
    import nbconvert
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    held = sum(PLOTLY_JSON in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    body, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    shown = body.count('src="data:image/png;base64') + body.count('class="plotly-graph-div"')
    return held, shown


def _markdown(cells) -> str:
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def exercises_without_solution(cells) -> list[int]:
    """Numbers of the exercises (numbered items of the '## Exercises' cell, before its first
    <details>) that no '<summary>Solution to N' (or 'Solutions to N and M') answers."""
    text = next("".join(c["source"]) for c in cells if "## Exercises" in "".join(c["source"]))
    listed = text.split("## Exercises", 1)[1].split("<details>", 1)[0]
    numbers = [int(n) for n in re.findall(r"^(\d+)\. ", listed, flags=re.M)]
    solved = {int(n) for names in re.findall(r"<summary>Solutions? to ([\d ,and]+)", _markdown(cells))
              for n in re.findall(r"\d+", names)}
    return [n for n in numbers if n not in solved]


@pytest.mark.parametrize("notebook", TUTORIALS, ids=lambda p: p.name)
def test_meets_the_standard(notebook):
    """The parts of tutorials/STANDARD.md a test can check in the source (the rest is review)."""
    cells = _cells(notebook)
    opening, markdown = "".join(cells[0]["source"]), _markdown(cells)
    assert "**Time.**" in opening, "say in the first cell how long reading, running and the exercises take"
    assert "<summary>Key terms" in markdown, "define terms where first used in a collapsed 'Key terms' box"
    assert re.search(r"\*\*Predict", markdown) and "<summary>Answer" in markdown, \
        "ask a predict-then-reveal question at a key figure, the answer collapsed right below"
    assert exercises_without_solution(cells) == [], "every exercise needs a collapsed '<summary>Solution to N'"
    assert "## References" in markdown and re.search(r"\]\(https?://", markdown), "references with links"
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert "NBVAL_" not in code, "test markers go in cell tags (nbval-check-output), not in the learner's code"
    assert "renderers.default" not in code and "renderer=" not in code, \
        "leave plotly's renderer to lfads_nb (static copies of figures)"


SIDE_BY_SIDE = 2  # papermill runs at a time: each kernel computes on one core, its launcher waits


@pytest.fixture(scope="module")
def side_by_side():
    """Worker processes that run this module's papermill runs ``SIDE_BY_SIDE`` at a time, in order
    of submission (processes, not threads: papermill changes its process's working directory to start
    a kernel in the run's folder); every kernel runs with the text progress (LFADS_NB_LIVE=0)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LFADS_NB_LIVE", "0")  # every worker, and so every kernel, inherits it
        pool = ProcessPoolExecutor(SIDE_BY_SIDE, mp_context=multiprocessing.get_context("spawn"))
        yield pool
        pool.shutdown(cancel_futures=True)  # none left running past this module


def _selected(request, name: str) -> list:
    """The items of test function ``name`` this session runs, in order."""
    return [item for item in request.session.items if item.originalname == name]


@pytest.fixture(scope="module")
def ci_runs(request, side_by_side):
    """The CI-size papermill runs of the tutorials that test_runs_under_papermill checks, all
    submitted at once, each into a clean ``ARTIFACTS/<stem>``: notebook name -> future of its
    executed copy (``result()`` raises what the run raised)."""
    futures = {}
    for item in _selected(request, "test_runs_under_papermill"):
        notebook = item.callspec.params["notebook"]
        out_dir = ARTIFACTS / notebook.stem
        shutil.rmtree(out_dir, ignore_errors=True)  # no checkpoints or files left from an earlier run
        futures[notebook.name] = side_by_side.submit(execute, notebook, out_dir, CI_PARAMETERS[notebook.name])
    return futures


@pytest.mark.parametrize("notebook", TUTORIALS, ids=lambda p: p.name)
def test_runs_under_papermill(notebook, ci_runs):
    out_dir = ARTIFACTS / notebook.stem
    executed = ci_runs[notebook.name].result()
    nb = json.loads(executed.read_text())
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert "widgets" not in nb.get("metadata", {}), "papermill runs must not store widget state"
    warned = [o["text"] for c in nb["cells"] for o in c.get("outputs", [])
              if o.get("output_type") == "stream" and o.get("name") == "stderr" and "Warning" in o["text"]]
    assert not warned, f"catch the warnings you expect and explain them in the text: {warned[0][:300]}"
    claims = declared_claims(notebook)
    if claims:  # at CI sizes a claim proves nothing, but every check must evaluate to one bool
        with xr.open_dataset(out_dir / CI_PARAMETERS[notebook.name]["scores_path"], engine="h5netcdf") as scores:
            check_claims(claims, scores.load())
    held, shown = figures_in_export(executed)
    assert held > 0, "a tutorial without a figure?"
    assert shown >= held, f"the HTML export shows {shown} of {held} figures: show figures with plotly (import lfads_nb)"
    if notebook.name in NBVAL_CHECKED:
        env = dict(os.environ, LFADS_NB_LIVE="0")
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider", str(executed)],
            cwd=out_dir, capture_output=True, text=True, env=env,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def _own_recording(path):
    """A user's recording in the two file kinds tutorial 02 reads: no truth, no conditions."""
    rng = np.random.default_rng(0)
    spikes = rng.poisson(0.3, size=(30, 16, 7))
    if path.suffix == ".nc":  # a saved Dataset with 20 ms bins
        split = np.where(np.arange(30) % 5 == 0, "valid", "train")
        lfads_nb.save(lfads_nb.make_dataset(spikes, 0.02, split_labels=split), path)
    else:  # an LFADS HDF5 file as other tools write it: two arrays and nothing else
        with h5py.File(path, "w") as f:
            f["train_data"], f["valid_data"] = spikes[:24], spikes[24:]


BATCH_JOBS = {}  # test function -> prepare(folder, **its parameters) -> (notebook, papermill parameters, context)


def batch_job(test: str):
    """Register the decorated ``prepare`` as the batch job of test function ``test``."""
    def register(prepare):
        BATCH_JOBS[test] = prepare
        return prepare
    return register


@pytest.fixture(scope="module")
def batch_runs(request, side_by_side, tmp_path_factory):
    """Every selected batch-job test's run, all submitted at once: its data written by its
    ``BATCH_JOBS`` entry into a folder of its own, then tutorials/<notebook> run under papermill in
    ``<folder>/run`` with those parameters, as a batch job would. Test id -> (future of the executed
    copy, the folder, the entry's context)."""
    runs = {}
    for name, prepare in BATCH_JOBS.items():
        for item in _selected(request, name):
            folder = tmp_path_factory.mktemp("batch")
            notebook, params, context = prepare(folder, **(item.callspec.params if hasattr(item, "callspec") else {}))
            runs[item.name] = (side_by_side.submit(execute, ROOT / "tutorials" / notebook, folder / "run", params),
                               folder, context)
    return runs


def batch_result(batch_runs, request) -> tuple[Path, dict]:
    """This test's batch run (``batch_runs``) once it finished, failing on any cell that raised:
    (its folder, the context its job returned)."""
    future, folder, context = batch_runs[request.node.name]
    nb = json.loads(future.result().read_text())
    assert not [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    return folder, context


@batch_job("test_tutorial_as_batch_job_on_own_data")
def own_recording_job(folder, notebook, kind):
    data = folder / f"recording{kind}"
    _own_recording(data)
    params = {k: v for k, v in CI_PARAMETERS[notebook].items() if k not in ("n_conditions", "trials_per_condition")}
    params.update(data_path=str(data), output_path="rates.nc")
    return notebook, params, {"data": data, "params": params}


@pytest.mark.parametrize("notebook, kind", [("02_train_lfads.ipynb", ".nc"), ("02_train_lfads.ipynb", ".h5"),
                                             ("04_autolfads_pbt.ipynb", ".nc"), ("08_expressive_dynamics.ipynb", ".nc"),
                                             ("10_neural_data_transformer.ipynb", ".nc")])
def test_tutorial_as_batch_job_on_own_data(notebook, kind, batch_runs, request):
    """`papermill NN.ipynb out.ipynb -p data_path my.h5 -p output_path rates.nc` on data with no
    truth and no conditions; the bin width comes from the file (20 ms) or the default."""
    tmp_path, context = batch_result(batch_runs, request)
    data, params = context["data"], context["params"]
    out = lfads_nb.load(tmp_path / "run" / "rates.nc")
    bin_width = 0.02 if kind == ".nc" else 0.01
    recording = lfads_nb.load(data, bin_width=bin_width)
    assert out.attrs["bin_width"] == bin_width
    assert list(out.trial.values) == list(recording.trial.values)
    assert (out.split.values == recording.split.values).all()
    assert out.rates.dims == ("trial", "time", "neuron") and bool((out.rates > 0).all())
    if notebook.startswith("02"):  # the comparison table: without truth only bits per spike is a number
        scores = xr.load_dataset(tmp_path / "run" / params["scores_path"])
        assert "lfads" in scores["method"]
        assert scores["rate_r2"].isnull().all() and scores["latent_r2"].isnull().all()
        assert np.isfinite(scores["bits_per_spike"]).all()


@batch_job("test_emg_tutorial_as_batch_job_on_an_emg_file_without_truth")
def emg_file_job(folder):
    from data_generators import emg

    recording = emg(1, n_trials=25, n_bins=40, n_channels=5, bin_width=0.02)
    data = lfads_nb.export_lfads_h5(recording.drop_vars(["emg_mean_true"]), folder / "emg.h5")
    params = {k: v for k, v in CI_PARAMETERS["05_emg_autolfads.ipynb"].items() if k != "n_trials"}
    params.update(data_path=str(data), output_path="emg_mean.nc", scores_path="scores.nc")
    return "05_emg_autolfads.ipynb", params, {"data": data}


def test_emg_tutorial_as_batch_job_on_an_emg_file_without_truth(batch_runs, request):
    """`papermill 05_emg_autolfads.ipynb out.ipynb -p data_path emg.h5` on an LFADS HDF5 file of float
    EMG (20 ms bins stored) with no truth: emg_mean for every trial and bin, and a score table of NaN
    activation and leakage scores (the file has no truth) with every method."""
    tmp_path, context = batch_result(batch_runs, request)
    data = context["data"]
    out = lfads_nb.load(tmp_path / "run" / "emg_mean.nc")
    stored = lfads_nb.load(data, kind="emg")
    assert out.attrs["bin_width"] == 0.02 and list(out.trial.values) == list(stored.trial.values)
    assert out.emg_mean.shape == stored.emg.shape and bool((out.emg_mean > 0).all())
    scores = xr.load_dataset(tmp_path / "run" / "scores.nc")
    assert list(scores["method"].values) == ["lowpass", "lfads", "lfads_cd_shift", "lfads_shift", "lowpass_masked",
                                             "lfads_shift_masked", "autolfads"]
    assert scores["activation_r2"].isnull().all() and scores["artifact_leakage"].isnull().all()


@batch_job("test_calcium_tutorial_as_batch_job_on_events_without_truth_or_fluorescence")
def events_file_job(folder):
    from data_generators import calcium_2p

    recording = calcium_2p(3, n_neurons=12, n_conditions=4, trials_per_condition=5, n_frames=6)
    recording = recording.drop_vars(["rates_true", "latents_true", "spikes_true", "fluorescence"])
    data = lfads_nb.save(recording, folder / "events.nc")
    params = {k: v for k, v in CI_PARAMETERS["06_calcium_radical.ipynb"].items()
              if k not in ("n_neurons", "n_conditions", "trials_per_condition", "n_frames")}
    params.update(data_path=str(data), output_path="events_mean.nc", scores_path="scores.nc")
    return "06_calcium_radical.ipynb", params, {"recording": recording}


def test_calcium_tutorial_as_batch_job_on_events_without_truth_or_fluorescence(batch_runs, request):
    """`papermill 06_calcium_radical.ipynb out.ipynb -p data_path events.nc` on a recording of
    sub-frame events alone (no truth, no fluorescence): events_mean for every trial and sub-frame
    bin, and a score table of NaN with every method."""
    tmp_path, context = batch_result(batch_runs, request)
    recording = context["recording"]
    out = lfads_nb.load(tmp_path / "run" / "events_mean.nc")
    assert list(out.trial.values) == list(recording.trial.values)
    assert out.events_mean.shape == recording.events.shape and bool((out.events_mean > 0).all())
    scores = xr.load_dataset(tmp_path / "run" / "scores.nc")
    assert list(scores["method"].values) == ["smoothing_frame", "smoothing_subframe", "lfads_frame", "radical"]
    assert scores["latent_r2"].isnull().all()


@batch_job("test_multisession_tutorial_as_batch_job_on_a_sessions_file_without_truth")
def sessions_file_job(folder):
    from data_generators import chaotic_rnn_multisession

    tree = chaotic_rnn_multisession(2, n_sessions=2, units_per_session=[6, 9], n_conditions=4,
                                    trials_per_condition=[5, 3], n_bins=15, bin_width=0.02)
    no_truth = lfads_nb.data.make_sessions({name: node.to_dataset().drop_vars(["rates_true", "latents_true", "behavior"])
                                            for name, node in tree.children.items()})
    data = lfads_nb.save(no_truth, folder / "sessions.nc")
    params = {k: v for k, v in CI_PARAMETERS["07_multisession.ipynb"].items()
              if k not in ("n_sessions", "units_per_session", "n_conditions", "trials_per_condition",
                           "poor_trials_per_condition", "n_bins")}
    params.update(data_path=str(data), output_path="stitched.nc", scores_path="scores.nc")
    return "07_multisession.ipynb", params, {"no_truth": no_truth}


def test_multisession_tutorial_as_batch_job_on_a_sessions_file_without_truth(batch_runs, request):
    """`papermill 07_multisession.ipynb out.ipynb -p data_path sessions.nc` on a saved DataTree of
    sessions (netCDF groups, 20 ms bins) with conditions but no truth: each session's inference,
    aligned to its trials, and a score table of NaN with both methods and every session."""
    tmp_path, context = batch_result(batch_runs, request)
    no_truth = context["no_truth"]
    out = lfads_nb.load(tmp_path / "run" / "stitched.nc")
    assert list(out.children) == ["session0", "session1"]
    for name, node in no_truth.children.items():
        inferred = out[name].to_dataset()
        assert list(inferred.trial.values) == list(node.trial.values) and inferred.attrs["bin_width"] == 0.02
        assert inferred.rates.shape == node.spikes.shape and bool((inferred.rates > 0).all())
    scores = xr.load_dataset(tmp_path / "run" / "scores.nc")
    assert list(scores["method"].values) == ["separate", "stitched"]
    assert list(scores["session"].values) == ["session0", "session1"]
    assert scores["rate_r2"].isnull().all()
    assert list(scores["decoder"].values) == ["within", "across", "across_aligned"]
    assert scores["latent_r2"].isnull().all() and scores["latent_r2"].dims == ("method", "decoder", "session")
    assert (scores["steps"] > 0).all() and (scores["best_epoch"] >= 1).all()


@batch_job("test_explore_tutorial_as_batch_job_on_a_file_without_latents")
def spikes_without_latents_job(folder):
    from data_generators import attractor

    recording = attractor("lorenz", seed=2, n_trials=30, n_bins=20).drop_vars(["rates_true", "latents_true"])
    data = lfads_nb.save(recording, folder / "spikes.nc")
    params = {k: v for k, v in CI_PARAMETERS["09_explore_dynamics.ipynb"].items() if k != "n_trials"}
    params.update(data_path=str(data), output_path="rates.nc", scores_path="scores.nc")
    return "09_explore_dynamics.ipynb", params, {"recording": recording}


def test_explore_tutorial_as_batch_job_on_a_file_without_latents(batch_runs, request):
    """`papermill 09_explore_dynamics.ipynb out.ipynb -p data_path spikes.nc` on attractor spikes saved
    without their truth: the models train, the fixed points are searched, the inference is saved for
    every trial, and the score table has both models with integer fixed-point counts, their unstable
    directions as text, and NaN for every comparison with the truth."""
    tmp_path, context = batch_result(batch_runs, request)
    recording = context["recording"]
    out = lfads_nb.load(tmp_path / "run" / "rates.nc")
    assert list(out.trial.values) == list(recording.trial.values) and bool((out.rates > 0).all())
    scores = xr.load_dataset(tmp_path / "run" / "scores.nc")
    assert list(scores["model"].values) == ["node_3", "gru_large"]
    assert scores["n_fixed_points"].dtype.kind == "i" and (scores["n_fixed_points"] >= 0).all()
    assert scores["unstable_counts"].dtype.kind in "OU"
    for name in ("wing_error", "rotation_error", "saddle_growth_error", "saddle_angle", "origin_error"):
        assert scores[name].isnull().all(), name
