"""Tuning: the tunable hyperparameters of each model family (``hyperparameters``), random search
(``search``), the batched population of models (``population``) and population-based training in
one process (``pbt``) or on Ray workers (``ray_backend``), both driving the same loop.

``lfads_nb.pbt`` is the function ``lfads_nb.tune.pbt.pbt``; here ``pbt`` names its module.
"""
from .hyperparameters import HYPERPARAMETERS, Tunable, tunables
from .pbt import PBTConfig, PBTResult
from .population import Population
from .ray_backend import ray_pbt
from .search import DEFAULT_SPACE, NDT_SPACE, Hyperparameter, SearchResult, SearchSpace, default_space, random_search

__all__ = ["DEFAULT_SPACE", "HYPERPARAMETERS", "Hyperparameter", "NDT_SPACE", "PBTConfig", "PBTResult", "Population",
           "SearchResult", "SearchSpace", "Tunable", "default_space", "random_search", "ray_pbt", "tunables"]
