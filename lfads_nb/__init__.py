"""lfads_nb: learn, explore and train LFADS and its family from Jupyter.

The flat names below are the public API. The subpackages show the architecture, each using only
those listed before it and the modules ``errors``, ``transforms``, ``checkpoint``, ``metrics`` and
``plots``: ``data`` (the Dataset model, data kinds, sessions), ``io`` (files), ``models`` (LFADS, NDT,
observation models, the registry of model families with ``build_model`` and ``load_model``),
``dashboard`` (training progress, the explorer), ``training`` (the feed, the one epoch, ``train``,
``infer``) and ``tune`` (search, population-based training, Ray). Importing it makes every plotly figure shown in a Jupyter kernel
carry a static copy beside the interactive one (``lfads_nb.display``).
"""
import sys as _sys

from . import display, dynamics, metrics, plots, tune
from .data import KINDS, DataKind, kind_of, make_dataset, split, validate
from .dashboard import Explorer, explore
from .errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from .io import export_lfads_h5, load, save, save_scores
from .models import LFADS, NDT, LFADSConfig, NDTConfig, StitchedLFADS, build_model, load_model
from .tune.pbt import PBTConfig, PBTResult
from .tune.search import DEFAULT_SPACE, EMG_SPACE, Hyperparameter, SearchSpace, random_search
from .training import TrainConfig, TrainResult, infer, train

# Old module paths that the README and the tutorials use, kept for the modules that moved into
# subpackages: each is registered in sys.modules and as an attribute, so ``import lfads_nb.pbt``,
# ``from lfads_nb.pbt import pbt`` and ``lfads_nb.pbt.pbt`` all reach the moved module itself.
_MOVED = {
    "pbt": tune.pbt,
    "ray_backend": tune.ray_backend,
    "search": tune.search,
}
for _old, _module in _MOVED.items():
    _sys.modules[f"{__name__}.{_old}"] = _module
    globals()[_old] = _module
del _old, _module

display.activate()

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DEFAULT_SPACE",
    "DataError",
    "EMG_SPACE",
    "DataKind",
    "Hyperparameter",
    "KINDS",
    "LFADS",
    "LFADSConfig",
    "PBTConfig",
    "PBTResult",
    "SearchSpace",
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
    "metrics",
    "plots",
    "random_search",
    "save",
    "save_scores",
    "split",
    "train",
    "validate",
]
