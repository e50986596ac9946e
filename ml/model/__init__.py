"""UnifiedPatchTST: its typed configuration, the network and the output contract."""

from ml.model.config import DIRECTION_CLASSES, RISK_NAMES, RISK_WINDOWS, ModelConfig
from ml.model.network import RevIN, UnifiedPatchTST, build_model, count_parameters
from ml.model.schema import DEFAULT_OUTPUT_SCHEMA, DIRECTION, RETURNS, RISK, OutputSchema

__all__ = [
    "DEFAULT_OUTPUT_SCHEMA",
    "DIRECTION",
    "DIRECTION_CLASSES",
    "RETURNS",
    "RISK",
    "RISK_NAMES",
    "RISK_WINDOWS",
    "ModelConfig",
    "OutputSchema",
    "RevIN",
    "UnifiedPatchTST",
    "build_model",
    "count_parameters",
]
