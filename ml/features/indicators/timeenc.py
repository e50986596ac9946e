"""Time of day and day of week of each bar's end, as points on circles (never a raw timestamp)."""

from __future__ import annotations

import math

import numpy as np

from ml.features.context import Ctx
from ml.features.indicators.registry import KindTable
from ml.features.kernels import Array

KINDS = KindTable()

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
# 1970-01-01 was a Thursday; shifting by three days puts Monday 00:00 UTC at phase 0.
_MONDAY_OFFSET_MS = 3 * DAY_MS


@KINDS.register
def time(ctx: Ctx, *, period: str, harmonic: int, fn: str) -> Array:
    end = ctx.end_ms
    if period == "day":
        phase = (end % DAY_MS).astype(np.float64) * (1.0 / DAY_MS)
    elif period == "week":
        phase = ((end + _MONDAY_OFFSET_MS) % WEEK_MS).astype(np.float64) * (1.0 / WEEK_MS)
    else:
        raise ValueError(f"unknown period {period!r}")
    angle = (2.0 * math.pi * harmonic) * phase
    return np.sin(angle) if fn == "sin" else np.cos(angle)
