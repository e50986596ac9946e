"""Publishing signals: Redis pub/sub plus a Redis Stream in the distributed run, an in-process bus in
the embedded one.

Every message is published once: ``publish_once`` skips an item whose id it has already sent, so a
redelivered or re-dispatched publish step (docs/ML_INTEGRATION.md) never repeats a message on either
feed. On Redis the check, the ``XADD`` to the durable stream and the ``PUBLISH`` to every channel are
one Lua script: atomic, one round trip for the whole minute. An item marked ``stream=False`` (the
shadow challenger's signals) goes to its pub/sub channels only: the durable stream is what consumers
act on, so it carries the champion's signals alone.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import redis

# How long a sent id is remembered: longer than any redelivery or re-dispatch of a minute's publish.
SENT_TTL_SECONDS = 2 * 86_400


@dataclass(frozen=True)
class BusItem:
    """One message: ``sequence`` identifies it on the stream, ``dedupe_id`` decides "already sent"."""

    dedupe_id: str
    kind: str  # "signal" or "heartbeat": the message's ``type``
    sequence: str
    payload: str
    channels: tuple[str, ...]
    # False: pub/sub only, never the durable stream (the shadow challenger's signals).
    stream: bool = True


class SignalBus(Protocol):
    def publish_once(self, items: Sequence[BusItem]) -> int:
        """Publish the items not sent before, in order; returns how many were sent now."""
        ...


# KEYS[1]: the stream. ARGV: maxlen, ttl, then per item: dedupe key, type, sequence, payload,
# stream flag ("1": append to the stream too), channel count, channels...
_PUBLISH_ONCE = """
local maxlen = ARGV[1]
local ttl = tonumber(ARGV[2])
local i = 3
local sent = 0
while i <= #ARGV do
  local n = tonumber(ARGV[i + 5])
  if redis.call('SET', ARGV[i], '1', 'NX', 'EX', ttl) then
    if ARGV[i + 4] == '1' then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*',
                 'type', ARGV[i + 1], 'sequence', ARGV[i + 2], 'data', ARGV[i + 3])
    end
    for c = 1, n do
      redis.call('PUBLISH', ARGV[i + 5 + c], ARGV[i + 3])
    end
    sent = sent + 1
  end
  i = i + 6 + n
end
return sent
"""


class RedisBus:
    def __init__(
        self, client: redis.Redis, stream_key: str = "signals:stream", maxlen: int = 1_000_000
    ) -> None:
        self.client = client
        self.stream_key = stream_key
        self.maxlen = maxlen
        self._script = client.register_script(_PUBLISH_ONCE)

    def publish_once(self, items: Sequence[BusItem]) -> int:
        if not items:
            return 0
        args: list[str | int] = [self.maxlen, SENT_TTL_SECONDS]
        for item in items:
            args += [f"{self.stream_key}:sent:{item.dedupe_id}", item.kind, item.sequence, item.payload]
            args += ["1" if item.stream else "0", len(item.channels), *item.channels]
        return int(self._script(keys=[self.stream_key], args=args))


class MemoryBus:
    """Fan-out to in-process subscriber queues (the embedded run's live table reads one)."""

    def __init__(self) -> None:
        self._subscribers: list[tuple[frozenset[str] | None, queue.Queue[tuple[str, str]]]] = []
        self._sent: set[str] = set()
        self._lock = threading.Lock()

    def subscribe(self, channels: Sequence[str] | None = None) -> queue.Queue[tuple[str, str]]:
        inbox: queue.Queue[tuple[str, str]] = queue.Queue()
        with self._lock:
            self._subscribers.append((frozenset(channels) if channels else None, inbox))
        return inbox

    def publish_once(self, items: Sequence[BusItem]) -> int:
        with self._lock:
            fresh = [item for item in items if item.dedupe_id not in self._sent]
            self._sent.update(item.dedupe_id for item in fresh)
            subscribers = list(self._subscribers)
        for item in fresh:
            for channel in item.channels:
                for wanted, inbox in subscribers:
                    if wanted is None or channel in wanted:
                        inbox.put((channel, item.payload))
        return len(fresh)
