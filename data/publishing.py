"""After the signals are stored: publish them on the bus and hand back what needs an order.

Channels: ``signals`` (every signal), ``signals:<SYMBOL>`` (one symbol's), and the heartbeat
channel (one message per minute). Messages are validated by ``data.messages`` before they leave.
"""

from __future__ import annotations

from datetime import UTC, datetime

from core.settings import Settings
from data.bus import SignalBus
from data.messages import DirectionProbabilities, HeartbeatMessage, SignalMessage
from data.models import SignalRecord
from data.signal_store import SignalStore


def signal_message(row: SignalRecord) -> SignalMessage:
    return SignalMessage(
        sequence=row.id,
        symbol=row.symbol,
        minute=row.minute,
        bar_end=row.bar_end,
        model_version=row.model_version,
        direction=row.direction,
        confidence=row.confidence,
        probabilities={h: DirectionProbabilities(**p) for h, p in row.probabilities.items()},
        returns=row.returns,
        risk=row.risk,
        entry_price=row.entry_price,
        stop_loss=row.stop_loss,
        take_profit=row.take_profit,
        expires_at=row.expires_at,
    )


def symbol_channel(settings: Settings, symbol: str) -> str:
    return f"{settings.pipeline.channel}:{symbol}"


def publish_pending(
    store: SignalStore, bus: SignalBus, settings: Settings, minute: datetime, model_version: str
) -> int:
    """Publish the minute's signals not yet published; returns how many were sent now."""
    rows = store.unpublished(minute, model_version)
    messages: list[tuple[str, str]] = []
    for row in rows:
        payload = signal_message(row).model_dump_json()
        messages.append((settings.pipeline.channel, payload))
        messages.append((symbol_channel(settings, row.symbol), payload))
    bus.publish_many(messages)
    store.mark_published([r.id for r in rows])
    return len(rows)


def publish_heartbeat(
    bus: SignalBus,
    settings: Settings,
    *,
    minute: datetime,
    status: str,
    model_version: str | None,
    symbols_asked: int,
    signals: int,
    actionable: int,
    failed: int,
) -> HeartbeatMessage:
    beat = HeartbeatMessage(
        minute=minute,
        status=status,
        model_version=model_version,
        symbols_asked=symbols_asked,
        signals=signals,
        actionable=actionable,
        failed=failed,
        sent_at=datetime.now(UTC),
    )
    bus.publish_many([(settings.pipeline.heartbeat_channel, beat.model_dump_json())])
    return beat
