"""lfads_nb: learn, explore and train LFADS and its family from Jupyter.

The flat names below are the public API. The subpackages show the architecture, each using only
those listed before it and the modules ``errors``, ``transforms``, ``checkpoint``, ``metrics`` and
``plots``: ``data`` (the Dataset model, data kinds, sessions), ``io`` (files), ``models`` (LFADS, NDT,
observation models, the registry of model families with ``build_model`` and ``load_model``),
``dashboard`` (training progress, the explorer), ``training`` (the feed, the one epoch, ``train``,
``infer``) and ``tune`` (search, population-based training, Ray). Importing it makes every plotly figure shown in a Jupyter kernel
carry a static copy beside the interactive one (``lfads_nb.display``). ``lfads_nb.pbt`` is the
function (population-based training, ``lfads_nb.tune.pbt``); ``lfads_nb.score`` scores an
inference by its data kind (``lfads_nb.metrics``).
"""
from . import display, dynamics, metrics, plots, tune
from .data import KINDS, DataKind, kind_of, make_dataset, make_sessions, split, validate
from .dashboard import Explorer, explore
from .errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from .io import export_lfads_h5, load, save, save_scores
from .metrics import score
from .models import LFADS, NDT, LFADSConfig, NDTConfig, StitchedLFADS, build_model, load_model
from .tune.pbt import PBTConfig, PBTResult, pbt
from .tune.ray_backend import ray_pbt
from .tune.search import DEFAULT_SPACE, EMG_SPACE, NDT_SPACE, Hyperparameter, SearchSpace, random_search
from .training import TrainConfig, TrainResult, infer, train

display.activate()

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DEFAULT_SPACE",
    "DataError",
    "DataKind",
    "EMG_SPACE",
    "Explorer",
    "Hyperparameter",
    "KINDS",
    "LFADS",
    "LFADSConfig",
    "NDT",
    "NDTConfig",
    "NDT_SPACE",
    "PBTConfig",
    "PBTResult",
    "SearchSpace",
    "StitchedLFADS",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "build_model",
    "dynamics",
    "explore",
    "export_lfads_h5",
    "infer",
    "kind_of",
    "load",
    "load_model",
    "make_dataset",
    "make_sessions",
    "metrics",
    "pbt",
    "plots",
    "random_search",
    "ray_pbt",
    "save",
    "save_scores",
    "score",
    "split",
    "train",
    "validate",
]
