"""The output contract: what each of the 20 outputs means, pinned and stored with every version.

Consumers never index the output vector with literals; they use these slices. A version whose
stored schema differs from the one its config implies is refused at load time.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from ml.model.config import DIRECTION_CLASSES, RISK_NAMES, RISK_WINDOWS, ModelConfig

SCHEMA_VERSION = 1

RETURNS = slice(0, 4)
DIRECTION = slice(4, 16)
RISK = slice(16, 20)


class OutputSchema(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    names: tuple[str, ...]
    horizons: tuple[int, ...]
    bar_minutes: int
    direction_classes: tuple[str, ...]
    risk_names: tuple[str, ...]
    risk_windows: tuple[int, ...]
    return_scales: tuple[float, ...]
    risk_scales: tuple[float, ...]
    direction_thresholds: tuple[float, ...]
    activations: dict[str, str]

    @classmethod
    def from_config(cls, config: ModelConfig) -> OutputSchema:
        names = [f"return_h{h}" for h in config.horizons]
        names += [f"logit_h{h}_{c.lower()}" for h in config.horizons for c in DIRECTION_CLASSES]
        names += list(RISK_NAMES)
        return cls(
            names=tuple(names),
            horizons=config.horizons,
            bar_minutes=config.bar_minutes,
            direction_classes=DIRECTION_CLASSES,
            risk_names=RISK_NAMES,
            risk_windows=RISK_WINDOWS,
            return_scales=config.return_scales,
            risk_scales=config.risk_scales,
            direction_thresholds=config.direction_thresholds,
            activations={
                "returns": "tanh; return = output * return_scale",
                "direction": "raw logits; probabilities = softmax(logits / temperature) per horizon",
                "risk": "softplus; fraction of entry price = output * risk_scale",
            },
        )

    @property
    def n_outputs(self) -> int:
        return len(self.names)

    def slices(self) -> dict[str, tuple[int, int]]:
        return {"returns": (0, 4), "direction": (4, 16), "risk": (16, 20)}

    def to_json(self) -> str:
        doc: dict[str, Any] = self.model_dump()
        doc["slices"] = self.slices()
        return json.dumps(doc, indent=1)

    @classmethod
    def from_json(cls, text: str) -> OutputSchema:
        doc = json.loads(text)
        doc.pop("slices", None)
        return cls.model_validate(doc)


DEFAULT_OUTPUT_SCHEMA = OutputSchema.from_config(ModelConfig())
