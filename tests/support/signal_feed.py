"""Helpers for the durable feed tests: messages, and stream entries written as the publisher does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import redis

from pipeline.messages import DirectionProbabilities, HeartbeatMessage, SignalMessage

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
SYMBOLS = [f"S{i:02d}/USDT:USDT" for i in range(30)]


def signal(sequence: int, symbol: str = "BTC/USDT:USDT", minute: datetime = T0) -> SignalMessage:
    return SignalMessage(
        sequence=sequence,
        symbol=symbol,
        minute=minute,
        bar_end=minute,
        model_version="v1",
        direction="LONG",
        confidence=0.7,
        probabilities={"1h": DirectionProbabilities(long=0.7, short=0.2, flat=0.1)},
        returns={"1h": 0.003},
        risk={"drawdown_1h": 0.004},
        entry_price=100.0,
        stop_loss=99.0,
        take_profit=102.0,
        expires_at=minute + timedelta(minutes=15),
    )


def heartbeat(minute: datetime = T0, signals: int = 30) -> HeartbeatMessage:
    return HeartbeatMessage(
        minute=minute,
        status="done",
        model_version="v1",
        symbols_asked=signals,
        signals=signals,
        actionable=signals,
        failed=0,
        sent_at=minute + timedelta(seconds=20),
    )


def xadd(client: redis.Redis, stream: str, message: SignalMessage | HeartbeatMessage) -> str:
    """One entry exactly as the publisher writes it."""
    sequence = (
        str(message.sequence) if isinstance(message, SignalMessage) else f"{message.minute:%Y-%m-%dT%H:%MZ}"
    )
    fields = {"type": message.type, "sequence": sequence, "data": message.model_dump_json()}
    entry_id = client.xadd(stream, fields, maxlen=1_000_000, approximate=True)  # type: ignore[arg-type]
    return entry_id.decode()  # type: ignore[union-attr]


def write_minutes(client: redis.Redis, stream: str, minutes: int, first_sequence: int = 1) -> list[str]:
    """``minutes`` × (30 signals + 1 heartbeat); returns the entry ids in order."""
    ids = []
    sequence = first_sequence
    for m in range(minutes):
        minute = T0 + timedelta(minutes=m)
        for symbol in SYMBOLS:
            ids.append(xadd(client, stream, signal(sequence, symbol, minute)))
            sequence += 1
        ids.append(xadd(client, stream, heartbeat(minute)))
    return ids


def pending(client: redis.Redis, stream: str, group: str) -> int:
    return int(client.xpending(stream, group)["pending"])
