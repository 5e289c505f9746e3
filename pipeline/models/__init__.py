"""Teacher and student ViTs built with timm, their weights, and tile embeddings.

``build_model`` builds by name (``h-optimus-0``, ``h0-mini``, ``tiny-teacher``, ``tiny-student`` or any
timm name), ``load_weights`` reads a local safetensors / torch / DINOv2 file strictly, and ``embed``
turns uint8 NHWC tiles into class-token (+ mean patch token) embeddings.
"""

from pipeline.models.embedding import Pooling, embed, embedding_dim, normalise, pool_tokens
from pipeline.models.registry import HOPTIMUS_MEAN, HOPTIMUS_STD, MODEL_SPECS, ViTSpec, build_model, swiglu_mlp_ratio
from pipeline.models.weights import WeightsError, load_weights, read_state_dict, weights_sha256

__all__ = [
    "HOPTIMUS_MEAN",
    "HOPTIMUS_STD",
    "MODEL_SPECS",
    "Pooling",
    "ViTSpec",
    "WeightsError",
    "build_model",
    "embed",
    "embedding_dim",
    "load_weights",
    "normalise",
    "pool_tokens",
    "read_state_dict",
    "swiglu_mlp_ratio",
    "weights_sha256",
]
