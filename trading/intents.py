"""Order intents: what the signals callback asks the execution worker to do.

The client order id is derived from the signal key (symbol, minute, model version), so a retried
callback, a redelivered task or a second worker always produces the same id, and the unique
constraint on ``order_intents.client_order_id`` (and the exchange's own) makes the order happen once.
Exit orders get ids derived the same way (``exit_client_id``).
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


def client_order_id(symbol: str, minute: datetime, model_version: str) -> str:
    """A deterministic id of at most 36 characters (Bybit's limit for orderLinkId)."""
    key = f"{symbol}|{minute.isoformat()}|{model_version}".encode()
    return "mls-" + hashlib.sha256(key).hexdigest()[:32]


def exit_client_id(*parts: object) -> str:
    """Deterministic client id of an exit order (36 characters, Bybit's orderLinkId limit)."""
    key = "|".join(str(p) for p in parts).encode()
    return "mlx-" + hashlib.sha256(key).hexdigest()[:32]


class OrderIntentMessage(BaseModel):
    """The argument of ``tasks.orders.execute`` (JSON); carries no credentials, ever."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    client_order_id: str = Field(min_length=8, max_length=36)
    signal_id: int
    symbol: str
    # Instants, timezone-aware (a naive time is refused): the signal's, read from a UtcDateTime column.
    minute: AwareDatetime
    model_version: str
    direction: str = Field(pattern="^(LONG|SHORT)$")
    confidence: float = Field(ge=0.0, le=1.0)
    entry_price: float = Field(gt=0.0)
    stop_loss: float | None = None
    take_profit: float | None = None
    # The intent is refused after this instant (the signal's expiry; see tasks.signals.publish).
    expires_at: AwareDatetime | None = None
