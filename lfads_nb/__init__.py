"""lfads_nb: learn, explore and train LFADS and its family from Jupyter."""
from .data import make_dataset, split, validate
from .errors import CheckpointError, ConfigError, DataError, TrainingDiverged

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "TrainingDiverged",
    "make_dataset",
    "split",
    "validate",
]
