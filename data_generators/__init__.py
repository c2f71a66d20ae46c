"""Synthetic datasets with known ground truth, as lfads_nb Datasets.

- ``chaotic_rnn``: the original LFADS chaotic RNN set (and its input-pulse, tanh-rate and
  partially observed variants); ``chaotic_rnn_benchmark``: the gain 2.5 peer-benchmark preset.
- ``calcium_2p``: two-photon calcium events of Lorenz-driven neurons, sampled at staggered sub-frame
  times (RADICaL); ``lfads_nb.calcium.frame_binned`` gives its frame-binned view.
- ``lorenz``: Poisson neurons driven by the Lorenz attractor (defaults: the Lorenz-29 shape).
- ``observe_random_neurons``: a random subset of neurons observed in each bin (SBTT's setting).
- ``velocity_readout``: the fixed linear "hand velocity" map of the latents both use.

Every generator is deterministic for a given ``seed`` and records its settings in ``ds.attrs``.
"""
from .behavior import VELOCITY_DIMS, velocity_readout
from .calcium import calcium_2p
from .chaotic_rnn import chaotic_rnn, chaotic_rnn_benchmark
from .common import stratified_split
from .lorenz import integrate_lorenz, lorenz, lorenz_derivative
from .missing import observe_random_neurons

__all__ = [
    "VELOCITY_DIMS",
    "calcium_2p",
    "chaotic_rnn",
    "chaotic_rnn_benchmark",
    "integrate_lorenz",
    "lorenz",
    "lorenz_derivative",
    "observe_random_neurons",
    "stratified_split",
    "velocity_readout",
]
