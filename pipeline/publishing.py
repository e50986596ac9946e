"""After the signals are stored: publish them on the bus and hand back what needs an order.

Channels: ``signals`` (every signal), ``signals:<SYMBOL>`` (one symbol's), and the heartbeat
channel (one message per minute status). Each message also goes to the durable stream
(``pipeline.stream_key``), once (``pipeline.bus``). Messages are validated by ``pipeline.messages``.
The shadow challenger's signals go to ``signals:shadow`` (``pipeline.shadow_channel``) only: never
the champion's channels, never the durable stream.
"""

from __future__ import annotations

from datetime import UTC, datetime

from core.settings import Settings
from data.models import SignalRecord
from pipeline.bus import BusItem, SignalBus
from pipeline.messages import DirectionProbabilities, HeartbeatMessage, SignalMessage
from pipeline.signal_store import SignalStore


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
    store: SignalStore,
    bus: SignalBus,
    settings: Settings,
    minute: datetime,
    model_version: str,
    *,
    shadow: bool = False,
) -> int:
    """Publish the minute's signals of ``model_version`` not yet published; returns how many were
    sent now.

    The champion's go to ``pipeline.channel``, their symbol's channel and the durable stream. With
    ``shadow`` (the shadow challenger's) they go to ``pipeline.shadow_channel`` alone: no symbol
    channel and never the durable stream, which is what consumers act on.

    The rows are marked published after the bus took them; a step that dies in between is redone
    by its redelivery, and the bus drops what it already sent.
    """
    rows = store.unpublished(minute, model_version)
    items = [
        BusItem(
            dedupe_id=f"signal:{row.id}",
            kind="signal",
            sequence=str(row.id),
            payload=signal_message(row).model_dump_json(),
            channels=(
                (settings.pipeline.shadow_channel,)
                if shadow
                else (settings.pipeline.channel, symbol_channel(settings, row.symbol))
            ),
            stream=not shadow,
        )
        for row in rows
    ]
    sent = bus.publish_once(items)
    store.mark_published([r.id for r in rows])
    return sent


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
    note: str | None = None,
) -> HeartbeatMessage:
    """One heartbeat per minute and status (a repeated step does not repeat it)."""
    beat = HeartbeatMessage(
        minute=minute,
        status=status,
        model_version=model_version,
        symbols_asked=symbols_asked,
        signals=signals,
        actionable=actionable,
        failed=failed,
        note=note,
        sent_at=datetime.now(UTC),
    )
    minute_iso = beat.minute.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")
    item = BusItem(
        dedupe_id=f"heartbeat:{minute_iso}:{status}",
        kind="heartbeat",
        sequence=minute_iso,
        payload=beat.model_dump_json(),
        channels=(settings.pipeline.heartbeat_channel,),
    )
    bus.publish_once([item])
    return beat
