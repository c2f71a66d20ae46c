"""Data: the Dataset model and its validation (``schema``), the data kinds (``kinds``), several
sessions as a DataTree (``sessions``) and the preprocessing of two kinds: EMG artifacts
(``artifacts``: detection, masking, the artifact-free validation NLL) and two-photon calcium
(``calcium``: OASIS deconvolution, staggered sampling, the frame-binned view)."""
from .kinds import KINDS, DataKind, get_kind, kind_of
from .schema import (DIMS, SPLITS, TRUTH_VARIABLES, describe_ids, encoder_bins, heldin_mask, make_dataset,
                     observed_variable, sample_validation_mask, select_ids, split, training_values,
                     validate)
from .sessions import make_sessions, session_names, sessions_of, validate_sessions

__all__ = ["DIMS", "KINDS", "SPLITS", "TRUTH_VARIABLES", "DataKind", "describe_ids", "encoder_bins", "get_kind",
           "heldin_mask", "kind_of", "make_dataset", "make_sessions", "observed_variable", "sample_validation_mask", "select_ids",
           "session_names", "sessions_of", "split", "training_values", "validate", "validate_sessions"]
