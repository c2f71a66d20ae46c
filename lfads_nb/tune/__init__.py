"""Tuning: the tunable hyperparameters (``hyperparameters``), random search (``search``), the batched
population of models (``population``) and population-based training in one process (``pbt``) or as Ray
Tune trials (``ray_backend``).

The function ``pbt`` stays at ``lfads_nb.tune.pbt.pbt``: here ``pbt`` names its module.
"""
from .hyperparameters import HYPERPARAMETERS, Tunable
from .pbt import PBTConfig, PBTResult
from .population import Population
from .ray_backend import RayPBTResult, ray_pbt
from .search import DEFAULT_SPACE, Hyperparameter, SearchResult, SearchSpace, random_search

__all__ = ["DEFAULT_SPACE", "HYPERPARAMETERS", "Hyperparameter", "PBTConfig", "PBTResult", "Population",
           "RayPBTResult", "SearchResult", "SearchSpace", "Tunable", "random_search", "ray_pbt"]
