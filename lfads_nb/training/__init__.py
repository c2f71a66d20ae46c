"""Training: the feed from data to batches (``feed``), and the loop, the shared epoch and inference (``loop``).

Named ``training``, not ``train``: ``lfads_nb.train`` is the training function.
"""
from .feed import Feed, make_feed
from .loop import TrainConfig, TrainResult, check_device, infer, inference_latency, run_epoch, train

__all__ = ["Feed", "TrainConfig", "TrainResult", "check_device", "infer", "inference_latency", "make_feed", "run_epoch",
           "train"]
