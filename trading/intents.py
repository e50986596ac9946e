"""Order intents: what the signals callback asks the execution worker to do.

The client order id is derived from the signal key (symbol, minute, model version), so a retried
callback, a redelivered task or a second worker always produces the same id, and the unique
constraint on ``order_intents.client_order_id`` (and the exchange's own) makes the order happen once.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.timegrid import as_utc


def client_order_id(symbol: str, minute: datetime, model_version: str) -> str:
    """A deterministic id of at most 36 characters (Bybit's limit for orderLinkId)."""
    key = f"{symbol}|{minute.isoformat()}|{model_version}".encode()
    return "mls-" + hashlib.sha256(key).hexdigest()[:32]


class OrderIntentMessage(BaseModel):
    """The argument of ``tasks.orders.execute`` (JSON); carries no credentials, ever."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    client_order_id: str = Field(min_length=8, max_length=36)
    signal_id: int
    symbol: str
    minute: datetime
    model_version: str
    direction: str = Field(pattern="^(LONG|SHORT)$")
    confidence: float = Field(ge=0.0, le=1.0)
    entry_price: float = Field(gt=0.0)
    stop_loss: float | None = None
    take_profit: float | None = None
    # The intent is refused after this instant (the signal's expiry; see tasks.signals.publish).
    expires_at: datetime | None = None

    @field_validator("minute", "expires_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # SQLite hands the signal's times back without their zone; every time here is UTC.
        return None if value is None else as_utc(value)
