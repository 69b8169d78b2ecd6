"""The compute model now lives in ``peerlearn.compute.cost_model`` (both engines use it)."""

from peerlearn.compute.cost_model import compute_factors, training_time

__all__ = ["compute_factors", "training_time"]
