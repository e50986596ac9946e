"""Per-symbol watermarks: the open time of the newest closed candle stored with nothing missing before it.

The stream service advances them as it writes; a feature task of minute ``t`` waits until its
symbols' watermarks reach ``t - 1`` minute. Waiting is on an event (Redis pub/sub in the distributed
run, a condition variable in the embedded one), never a polling loop. Watermarks only move forward,
whoever advances them (the stream, or a feature task that had to fetch over REST).

Redis keys, per exchange ``X``: ``candles:X:wm`` (hash symbol -> open ms), ``candles:X:alive`` (set by
the running stream service with a short TTL), ``candles:X:reconnects`` (how often the stream service
reconnected, ever: the metrics exporter reads it), channel ``candles:X:wm`` (JSON of the marks that
moved) and channel ``candles:X:minutes`` (each minute the stream completed, for observers).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import redis

from core.logging import get_logger

log = get_logger(__name__)

# Sets each field to the larger of its stored and given value; returns the fields that moved.
_ADVANCE = """
local moved = {}
for i = 1, #ARGV, 2 do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  if (not current) or tonumber(current) < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    table.insert(moved, ARGV[i])
    table.insert(moved, ARGV[i + 1])
  end
end
return moved
"""


class WatermarkStore(Protocol):
    def advance(self, exchange: str, marks: Mapping[str, int]) -> dict[str, int]:
        """Move the given marks forward (never back) and wake waiters; returns those that moved."""
        ...

    def get(self, exchange: str, symbols: Sequence[str]) -> dict[str, int]: ...

    def wait(self, exchange: str, symbols: Sequence[str], open_ms: int, timeout_s: float) -> set[str]:
        """Block until every symbol's mark is at least ``open_ms`` or the timeout passes; returns
        the symbols that got there."""
        ...

    def mark_alive(self, exchange: str, ttl_s: int) -> None: ...

    def is_alive(self, exchange: str) -> bool: ...

    def count_reconnect(self, exchange: str) -> None: ...

    def reconnects(self, exchange: str) -> int: ...

    def announce_minute(self, exchange: str, open_ms: int, symbols: int, lagging: Sequence[str]) -> None: ...


def _keys(exchange: str) -> tuple[str, str, str, str]:
    base = f"candles:{exchange}"
    return f"{base}:wm", f"{base}:alive", f"{base}:wm", f"{base}:minutes"


def _reconnects_key(exchange: str) -> str:
    return f"candles:{exchange}:reconnects"


class RedisWatermarks:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._advance = client.register_script(_ADVANCE)

    def advance(self, exchange: str, marks: Mapping[str, int]) -> dict[str, int]:
        if not marks:
            return {}
        key, _, channel, _ = _keys(exchange)
        flat: list[Any] = [v for pair in marks.items() for v in pair]
        raw = self._advance(keys=[key], args=flat)
        moved = {_text(raw[i]): int(raw[i + 1]) for i in range(0, len(raw), 2)}
        if moved:
            self.client.publish(channel, json.dumps(moved))
        return moved

    def get(self, exchange: str, symbols: Sequence[str]) -> dict[str, int]:
        if not symbols:
            return {}
        values = self.client.hmget(_keys(exchange)[0], list(symbols))
        return {s: int(v) for s, v in zip(symbols, values, strict=True) if v is not None}

    def wait(self, exchange: str, symbols: Sequence[str], open_ms: int, timeout_s: float) -> set[str]:
        deadline = time.monotonic() + timeout_s
        wanted = set(symbols)
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            # Subscribe before reading: a mark that moves in between is then seen as a message.
            pubsub.subscribe(_keys(exchange)[2])
            reached = {s for s, v in self.get(exchange, list(wanted)).items() if v >= open_ms}
            while reached != wanted:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                message = pubsub.get_message(timeout=left)
                if message is None:
                    continue
                moved = json.loads(message["data"])
                reached |= {s for s, v in moved.items() if s in wanted and int(v) >= open_ms}
            return reached
        finally:
            pubsub.close()

    def mark_alive(self, exchange: str, ttl_s: int) -> None:
        self.client.set(_keys(exchange)[1], str(int(time.time() * 1000)), ex=ttl_s)

    def is_alive(self, exchange: str) -> bool:
        return bool(self.client.exists(_keys(exchange)[1]))

    def count_reconnect(self, exchange: str) -> None:
        self.client.incr(_reconnects_key(exchange))

    def reconnects(self, exchange: str) -> int:
        return int(self.client.get(_reconnects_key(exchange)) or 0)

    def announce_minute(self, exchange: str, open_ms: int, symbols: int, lagging: Sequence[str]) -> None:
        payload = {"minute_open_ms": open_ms, "symbols": symbols, "lagging": list(lagging)[:50]}
        self.client.publish(_keys(exchange)[3], json.dumps(payload))


class MemoryWatermarks:
    """The embedded run's watermarks: one process, threads wait on a condition variable."""

    def __init__(self) -> None:
        self._marks: dict[tuple[str, str], int] = {}
        self._alive_until: dict[str, float] = {}
        self._reconnects: dict[str, int] = {}
        self._changed = threading.Condition()
        self.minutes: list[tuple[str, int, int]] = []
        # The symbols that were behind at each announced minute, by (exchange, open_ms).
        self.lagging: dict[tuple[str, int], tuple[str, ...]] = {}

    def advance(self, exchange: str, marks: Mapping[str, int]) -> dict[str, int]:
        with self._changed:
            moved = {s: v for s, v in marks.items() if self._marks.get((exchange, s), -1) < v}
            for s, v in moved.items():
                self._marks[(exchange, s)] = v
            if moved:
                self._changed.notify_all()
            return moved

    def get(self, exchange: str, symbols: Sequence[str]) -> dict[str, int]:
        with self._changed:
            return {s: self._marks[(exchange, s)] for s in symbols if (exchange, s) in self._marks}

    def wait(self, exchange: str, symbols: Sequence[str], open_ms: int, timeout_s: float) -> set[str]:
        deadline = time.monotonic() + timeout_s

        def reached() -> set[str]:
            return {s for s in symbols if self._marks.get((exchange, s), -1) >= open_ms}

        with self._changed:
            while (got := reached()) != set(symbols):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return got

    def mark_alive(self, exchange: str, ttl_s: int) -> None:
        with self._changed:
            self._alive_until[exchange] = time.monotonic() + ttl_s

    def is_alive(self, exchange: str) -> bool:
        with self._changed:
            return self._alive_until.get(exchange, 0.0) > time.monotonic()

    def count_reconnect(self, exchange: str) -> None:
        with self._changed:
            self._reconnects[exchange] = self._reconnects.get(exchange, 0) + 1

    def reconnects(self, exchange: str) -> int:
        with self._changed:
            return self._reconnects.get(exchange, 0)

    def announce_minute(self, exchange: str, open_ms: int, symbols: int, lagging: Sequence[str]) -> None:
        with self._changed:
            self.minutes.append((exchange, open_ms, symbols))
            self.lagging[(exchange, open_ms)] = tuple(lagging)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
