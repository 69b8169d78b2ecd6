"""The built-in models' registrations; the architectures and builders are in ``zoo`` (imported
when a run builds one, so that validating a config does not import torch)."""

from __future__ import annotations

from peerlearn.components import register_model

register_model(
    "mlp",
    "peerlearn.models.zoo:_mlp",
    inputs=("vector", "image"),
    size_keys=("hidden",),
    description="fully connected ReLU network on flattened features; e.g. digits",
)
register_model(
    "gn_lenet",
    "peerlearn.models.zoo:_gn_lenet",
    inputs=("image",),
    description="LeNet-style CNN with GroupNorm (3 conv 5x5 + linear); CIFAR-10 / Fashion-MNIST",
)
register_model(
    "matrix_factorization",
    "peerlearn.models.zoo:_matrix_factorization",
    task="regression",
    inputs=("ratings",),
    size_keys=("factors",),
    description="user/item embeddings, rating = dot product; MovieLens",
)
register_model(
    "resnet8",
    "peerlearn.models.resnet8:build",
    inputs=("image",),
    description="ResNet-8 with GroupNorm (16/32/64 channels), generic vmap path; CIFAR-10",
)
