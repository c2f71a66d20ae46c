"""Models: LFADS (``lfads``, with a GRU or neural-ODE generator), its fused GRU kernels (``_fused_gru``), the
Neural Data Transformer baseline (``ndt``), observation models (``observations``), multisession
stitching (``multisession``: one core, a read-in and an observation model per session), and the
registry of model families with the protocol they follow, ``build_model`` and ``load_model``
(``registry``)."""
from .lfads import LFADS, LFADSConfig, LFADSOutput, NeuralODEGenerator, Noise, draw_noise
from .multisession import StitchedConfig, StitchedLFADS
from .ndt import NDT, NDTConfig
from .observations import OBSERVATIONS, ObservationModel, make_observation, observation_spec
from .registry import FAMILIES, Family, Model, Tunable, build_model, family_of, get_family, load_model

__all__ = ["FAMILIES", "Family", "LFADS", "LFADSConfig", "LFADSOutput", "Model", "NDT", "NDTConfig",
           "NeuralODEGenerator", "Noise", "OBSERVATIONS", "ObservationModel", "StitchedConfig", "StitchedLFADS",
           "Tunable", "build_model", "draw_noise", "family_of", "get_family", "load_model", "make_observation",
           "observation_spec"]
