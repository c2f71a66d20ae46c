"""Models: LFADS (``lfads``, with a GRU or neural-ODE generator), its fused GRU kernels (``_fused_gru``), the
Neural Data Transformer baseline (``ndt``) and observation models (``observations``)."""
from .lfads import LFADS, LFADSConfig, LFADSOutput, NeuralODEGenerator, Noise, draw_noise
from .ndt import NDT, NDTConfig
from .observations import OBSERVATIONS, ObservationModel, make_observation, observation_spec

__all__ = ["LFADS", "LFADSConfig", "LFADSOutput", "NDT", "NDTConfig", "NeuralODEGenerator", "Noise", "OBSERVATIONS",
           "ObservationModel", "draw_noise", "make_observation", "observation_spec"]
