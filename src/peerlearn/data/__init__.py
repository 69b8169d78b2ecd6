"""Datasets and partitioners: what the nodes learn from, and who holds which samples."""

from peerlearn.data.base import Dataset, DatasetNotFound
from peerlearn.data.partition import SCHEMES, Partition, make_partition
from peerlearn.data.registry import DATASETS, load_dataset
from peerlearn.data.roots import data_roots

__all__ = [
    "DATASETS",
    "SCHEMES",
    "Dataset",
    "DatasetNotFound",
    "Partition",
    "data_roots",
    "load_dataset",
    "make_partition",
]
