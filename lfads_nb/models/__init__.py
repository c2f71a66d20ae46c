"""Models: LFADS (``lfads``), its fused GRU kernels (``_fused_gru``) and observation models (``observations``)."""
from .lfads import LFADS, LFADSConfig, LFADSOutput, Noise, draw_noise
from .observations import OBSERVATIONS, ObservationModel, make_observation, observation_spec

__all__ = ["LFADS", "LFADSConfig", "LFADSOutput", "Noise", "OBSERVATIONS", "ObservationModel", "draw_noise",
           "make_observation", "observation_spec"]
