"""Models: LFADS (``lfads``, with a GRU or neural-ODE generator), its fused GRU kernels (``_fused_gru``), the
Neural Data Transformer baseline (``ndt``), observation models (``observations``) and multisession
stitching (``multisession``: one core, a read-in and an observation model per session)."""
from .lfads import LFADS, LFADSConfig, LFADSOutput, NeuralODEGenerator, Noise, draw_noise
from .multisession import StitchedConfig, StitchedLFADS
from .ndt import NDT, NDTConfig
from .observations import OBSERVATIONS, ObservationModel, make_observation, observation_spec

__all__ = ["LFADS", "LFADSConfig", "LFADSOutput", "NDT", "NDTConfig", "NeuralODEGenerator", "Noise", "OBSERVATIONS",
           "ObservationModel", "StitchedConfig", "StitchedLFADS", "draw_noise", "make_observation", "observation_spec"]
