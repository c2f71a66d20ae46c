"""Data: the Dataset model and its validation (``schema``) and the data kinds (``kinds``)."""
from .kinds import KINDS, DataKind, get_kind, kind_of
from .schema import (DIMS, SPLITS, TRUTH_VARIABLES, describe_ids, encoder_bins, heldin_mask, make_dataset,
                     observed_variable, select_ids, split, validate)

__all__ = ["DIMS", "KINDS", "SPLITS", "TRUTH_VARIABLES", "DataKind", "describe_ids", "encoder_bins", "get_kind",
           "heldin_mask", "kind_of", "make_dataset", "observed_variable", "select_ids", "split", "validate"]
