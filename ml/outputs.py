"""What a loaded model version hands the minute's inference step, and how horizons are named."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ml.model.schema import OutputSchema


@dataclass(frozen=True)
class ModelOutputs:
    """What the inference step needs from a loaded model version."""

    version: str
    outputs: npt.NDArray[np.float32]  # [B, 20]
    temperature: float
    schema: OutputSchema


def horizon_label(bars: int, bar_minutes: int) -> str:
    minutes = bars * bar_minutes
    return f"{minutes // 60}h" if minutes % 60 == 0 else f"{minutes}m"
