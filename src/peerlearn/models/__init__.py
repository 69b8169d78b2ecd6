"""Model zoo: every model is a flat float32 vector plus a shared layout."""

from peerlearn.models.generic import model_from_module
from peerlearn.models.hooks import FastPaths
from peerlearn.models.layout import ParamLayout
from peerlearn.models.spec import ModelSpec
from peerlearn.models.zoo import MODELS, build_model

__all__ = ["MODELS", "FastPaths", "ModelSpec", "ParamLayout", "build_model", "model_from_module"]
