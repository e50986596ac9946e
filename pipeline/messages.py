"""The messages this system publishes, validated by the same pydantic models the docs publish.

Subscribers should parse with ``parse_message``; anything that does not validate is rejected with
``MalformedMessageError`` naming the problem. Schema: docs/ML_API.md.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from core.errors import PermanentError

SCHEMA_VERSION: Literal[1] = 1
HORIZONS = ("15m", "1h", "4h", "12h")


class MalformedMessageError(PermanentError):
    """A message on a signals channel does not match the published schema."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION


class DirectionProbabilities(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    long: float = Field(ge=0.0, le=1.0)
    short: float = Field(ge=0.0, le=1.0)
    flat: float = Field(ge=0.0, le=1.0)


class SignalMessage(_Message):
    """One symbol's signal for one minute; ``sequence`` increases with every new signal stored."""

    type: Literal["signal"] = "signal"
    sequence: int = Field(ge=1)
    symbol: str = Field(min_length=1)
    minute: datetime
    bar_end: datetime
    model_version: str
    direction: Literal["LONG", "SHORT", "NEUTRAL"]
    confidence: float = Field(ge=0.0, le=1.0)
    probabilities: dict[str, DirectionProbabilities]
    returns: dict[str, float]
    risk: dict[str, float]
    entry_price: float = Field(gt=0.0)
    stop_loss: float | None = Field(default=None, gt=0.0)
    take_profit: float | None = Field(default=None, gt=0.0)
    expires_at: datetime


class HeartbeatMessage(_Message):
    """Sent once per minute whatever happened, so that silence is never read as "no signal"."""

    type: Literal["heartbeat"] = "heartbeat"
    minute: datetime
    status: str
    model_version: str | None
    symbols_asked: int = Field(ge=0)
    signals: int = Field(ge=0)
    actionable: int = Field(ge=0)
    failed: int = Field(ge=0)
    sent_at: datetime
    # Why a minute produced nothing (missed, skipped, failed); absent when it ran.
    note: str | None = None


Message = Annotated[SignalMessage | HeartbeatMessage, Field(discriminator="type")]
_MESSAGE: TypeAdapter[SignalMessage | HeartbeatMessage] = TypeAdapter(Message)


def parse_message(raw: str | bytes) -> SignalMessage | HeartbeatMessage:
    try:
        return _MESSAGE.validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'message'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise MalformedMessageError(f"malformed signals message: {problems}") from exc


def message_json_schema() -> dict[str, object]:
    return _MESSAGE.json_schema()
