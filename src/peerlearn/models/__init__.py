"""Model zoo: every model is a flat float32 vector plus a shared layout."""

from peerlearn.models.layout import ParamLayout
from peerlearn.models.zoo import MODELS, ModelSpec, build_model

__all__ = ["MODELS", "ModelSpec", "ParamLayout", "build_model"]
