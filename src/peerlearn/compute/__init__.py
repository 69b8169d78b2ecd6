"""Local training and evaluation, batched across nodes."""

from peerlearn.compute.evaluator import BatchedEvaluator
from peerlearn.compute.sampler import MinibatchStream
from peerlearn.compute.trainer import BatchedTrainer, TrainJob

__all__ = ["BatchedEvaluator", "BatchedTrainer", "MinibatchStream", "TrainJob"]
