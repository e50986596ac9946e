"""The 240-feature spec and the engine that computes it, for training and for the live minute.

``FEATURE_SPEC`` is the ordered, versioned list of features (names, groups, parameters, warm-ups)
with a stable hash; ``compute(bars)`` returns them for every bar of one symbol;
``build_live_batch(panel, scaler)`` returns the scaled ``[symbols, 96, 240]`` float32 tensor.
"""

from ml.features.engine import FeatureInputError, compute, compute_series, compute_window
from ml.features.live import LiveBatch, SymbolQuality, build_live_batch
from ml.features.spec import (
    CONTEXT,
    FEATURE_SPEC,
    FeatureDef,
    FeatureSpec,
    FeatureSpecMismatchError,
)

__all__ = [
    "CONTEXT",
    "FEATURE_SPEC",
    "FeatureDef",
    "FeatureInputError",
    "FeatureSpec",
    "FeatureSpecMismatchError",
    "LiveBatch",
    "SymbolQuality",
    "build_live_batch",
    "compute",
    "compute_series",
    "compute_window",
]
