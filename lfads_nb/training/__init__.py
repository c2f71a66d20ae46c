"""Training: the loop, inference and model loading (``loop``) and the checkpoint files (``checkpoint``).

Named ``training``, not ``train``: ``lfads_nb.train`` is the training function.
"""
from .loop import TrainConfig, TrainResult, build_model, check_device, infer, inference_latency, load_model, train

__all__ = ["TrainConfig", "TrainResult", "build_model", "check_device", "infer", "inference_latency", "load_model", "train"]
