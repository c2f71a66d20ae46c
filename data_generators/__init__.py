"""Synthetic datasets with known ground truth, as lfads_nb Datasets.

- ``chaotic_rnn``: the original LFADS chaotic RNN set (and its input-pulse, tanh-rate and
  partially observed variants); ``chaotic_rnn_benchmark``: the gain 2.5 peer-benchmark preset.
- ``calcium_2p``: two-photon calcium events of Lorenz-driven neurons, sampled at staggered sub-frame
  times (RADICaL); ``lfads_nb.data.calcium.frame_binned`` gives its frame-binned view.
- ``chaotic_rnn_multisession``: one chaotic RNN seen by several sessions with different units
  (a DataTree of sessions, for stitching).
- ``lorenz``: Poisson neurons driven by the Lorenz attractor (defaults: the Lorenz-29 shape).
- ``emg``: rectified EMG from gait synergies with known muscle activation and cross-channel artifacts.
- ``attractor``: Poisson neurons reading out a Lorenz, Rossler or Arneodo attractor (the sets of
  Sedler et al. 2023: 10 neurons, log-linear rates, true state).
- ``observe_random_neurons``: a random subset of neurons observed in each bin (SBTT's setting).
- ``velocity_readout``: the fixed linear "hand velocity" map of the latents both use.

Every generator is deterministic for a given ``seed`` and records its settings in ``ds.attrs``.
"""
from .attractors import attractor, true_fixed_points, true_jacobians
from .behavior import VELOCITY_DIMS, velocity_readout
from .calcium import calcium_2p
from .chaotic_rnn import chaotic_rnn, chaotic_rnn_benchmark
from .emg import emg
from .common import stratified_split
from .lorenz import integrate_lorenz, lorenz, lorenz_derivative
from .multisession import chaotic_rnn_multisession
from .missing import observe_random_neurons

__all__ = [
    "attractor",
    "VELOCITY_DIMS",
    "calcium_2p",
    "chaotic_rnn",
    "chaotic_rnn_benchmark",
    "chaotic_rnn_multisession",
    "emg",
    "integrate_lorenz",
    "lorenz",
    "lorenz_derivative",
    "observe_random_neurons",
    "stratified_split",
    "true_fixed_points",
    "true_jacobians",
    "velocity_readout",
]
