"""Checkpoint files (lfads_nb.checkpoint): format version, foreign files, the resume rule, PBT's export,
ema."""
import dataclasses
import math

import numpy as np
import pytest
import torch

import lfads_nb
from data_generators import chaotic_rnn
from lfads_nb.checkpoint import FORMAT, check_settings, ema, load_checkpoint, model_checkpoint, save_checkpoint
from lfads_nb.tune.pbt import _best_checkpoint, _RunState
from lfads_nb.tune.population import Population

torch.set_num_threads(1)
SIZES = dict(ic_enc_dim=6, ci_enc_dim=5, con_dim=7, ic_dim=4, gen_dim=8, fac_dim=3, co_dim=0)


def _data():
    return chaotic_rnn(seed=0, n_units=12, n_bins=8, n_conditions=4, trials_per_condition=3)


def _model_file(path, **extra):
    model = lfads_nb.build_model(_data(), seed=0, **SIZES)
    config = dataclasses.asdict(lfads_nb.TrainConfig())
    save_checkpoint(model_checkpoint(dataclasses.asdict(model.config), model.state_dict(), config, **extra), path)
    return model


def test_a_saved_model_checkpoint_is_stamped_and_loads(tmp_path):
    model = _model_file(tmp_path / "m.pt")
    assert torch.load(tmp_path / "m.pt", weights_only=True)["format"] == FORMAT
    assert not (tmp_path / "m.pt.tmp").exists()  # written to a temporary file, then renamed
    loaded = lfads_nb.load_model(tmp_path / "m.pt")
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_a_checkpoint_of_another_format_is_refused_with_the_fix(tmp_path):
    _model_file(tmp_path / "m.pt")
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    torch.save({**ckpt, "format": FORMAT + 1}, tmp_path / "newer.pt")
    refused = rf"format {FORMAT + 1}, but this lfads_nb reads format {FORMAT}. Load it with the lfads_nb version"
    with pytest.raises(lfads_nb.CheckpointError, match=refused):
        lfads_nb.load_model(tmp_path / "newer.pt")
    del ckpt["format"]  # written before the field existed: format 1, a layout without session ends
    torch.save(ckpt, tmp_path / "older.pt")
    with pytest.raises(lfads_nb.CheckpointError, match="format 1, but this lfads_nb reads format 2"):
        lfads_nb.load_model(tmp_path / "older.pt")


@pytest.mark.parametrize("content", [{"weight": torch.ones(3)}, torch.ones(3), [1, 2]],
                         ids=["state dict", "tensor", "list"])
def test_a_foreign_pt_file_is_refused(tmp_path, content):
    torch.save(content, tmp_path / "other.pt")
    with pytest.raises(lfads_nb.CheckpointError, match=r"not an lfads_nb checkpoint.*best.pt or last.pt from train"):
        lfads_nb.load_model(tmp_path / "other.pt")
    with pytest.raises(lfads_nb.CheckpointError, match="no settings"):
        load_checkpoint(tmp_path / "other.pt", ("settings",))


def test_resume_rule_names_what_changed_and_allows_what_may_change():
    saved = {"train_config": {"lr": 1e-3, "device": "cuda", "max_epochs": 5}, "model_config": {"gen_dim": 8}}
    now = {"train_config": {"lr": 1e-3, "device": "cpu", "max_epochs": 9.0}, "model_config": {"gen_dim": 8}}
    check_settings("run/last.pt", saved, now, may_change=("train_config.device", "train_config.max_epochs"))
    with pytest.raises(lfads_nb.CheckpointError, match=r"\(train_config.max_epochs\).*only train_config.device may"):
        check_settings("run/last.pt", saved, now, may_change=("train_config.device",))
    now["model_config"] = {"gen_dim": 8, "fac_dim": 3}  # a field one side lacks differs too
    with pytest.raises(lfads_nb.CheckpointError, match=r"\(model_config.fac_dim\).*resume=False"):
        check_settings("run/last.pt", saved, now, may_change=("train_config.device", "train_config.max_epochs"))
    tuples = {"space": {"lr": (1, 2)}}
    check_settings("pbt.pt", {"space": {"lr": [1, 2]}}, tuples)  # as read back from JSON


def test_pbt_best_member_checkpoint_loads_with_load_model(tmp_path):
    ds = _data()
    members = [lfads_nb.build_model(ds, seed=s, **SIZES) for s in (0, 1)]
    train_config = lfads_nb.TrainConfig(batch_size=8)
    population = Population(members, train_config, {"lr": [1e-3, 2e-3], "dropout": [0.1, 0.2]})
    state = _RunState(2)
    state.best_generation = 3
    state.best_member = {"state": population.model.member_state_dict(1), "hparams": population.member_hparams(1),
                         "config": dataclasses.asdict(population.member_config(1))}
    settings = {"train_config": dataclasses.asdict(train_config), "model": {"family": "lfads"}}
    save_checkpoint(_best_checkpoint(state, settings), tmp_path / "best.pt")
    loaded = lfads_nb.load_model(tmp_path / "best.pt")
    expected = population.member_model(1)
    assert loaded.config == expected.config and loaded.config.dropout == pytest.approx(0.2)
    for name, value in expected.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    raw = load_checkpoint(tmp_path / "best.pt")
    assert raw["train_config"]["lr"] == pytest.approx(2e-3) and "dropout" not in raw["train_config"]
    assert raw["pbt_generation"] == 3


def test_ema_smooths_and_starts_afresh_without_a_previous_value():
    assert ema(None, 2.0) == 2.0
    assert ema(math.nan, 2.0) == 2.0  # a member whose loss was NaN
    assert ema(1.0, 2.0) == pytest.approx(0.3 * 1.0 + 0.7 * 2.0)
    assert type(ema(1.0, np.float64(2.0))) is float  # PBT passes numpy values
    smoothed = None
    for loss in (4.0, 2.0, 2.0, 2.0):
        smoothed = ema(smoothed, loss)
    assert smoothed == pytest.approx(2.0 + 2.0 * 0.3 ** 3)  # the first epoch's excess decays by 0.3 an epoch
