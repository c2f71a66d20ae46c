"""The errors lfads_nb raises for bad input: each message names the problem and the fix."""


class DataError(ValueError):
    """The data (a Dataset or a file) does not follow the lfads_nb data model."""


class ConfigError(ValueError):
    """A hyperparameter, option or argument is out of range or inconsistent."""


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or belongs to a different model."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
