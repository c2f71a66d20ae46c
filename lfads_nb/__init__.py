"""lfads_nb: learn, explore and train LFADS and its family from Jupyter."""
from . import metrics, plots
from .data import make_dataset, split, validate
from .errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from .io import export_lfads_h5, load, save
from .kinds import KINDS, DataKind, kind_of
from .model import LFADS, LFADSConfig
from .pbt import PBTConfig, PBTResult
from .search import DEFAULT_SPACE, Hyperparameter, SearchSpace, random_search
from .training import TrainConfig, TrainResult, build_model, infer, load_model, train

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DEFAULT_SPACE",
    "DataError",
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
    "split",
    "train",
    "validate",
]
