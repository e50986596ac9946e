"""Make sure a minute's symbols have their newest closed candle stored before features are computed.

With the stream service running (``mlsignals data stream``) the candles are already arriving: wait
for the symbols' watermarks, on an event, up to ``pipeline.candle_wait_seconds``. Whatever is still
missing then (or everything, when no stream runs) is fetched over REST, concurrently, through the
source (the exchange gateway bounds the concurrency and the request rate).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from core.settings import Settings
from core.timegrid import MINUTE_MS, iso_minute
from data.ingest import Ingestor
from data.sources.base import CandleSource
from data.store import CandleStore
from data.stream.watermark import WatermarkStore
from data.validation import ValidationPolicy

# Between two REST polls for a candle the exchange has not published yet. No event exists to wait
# on over REST; the stream service is the event-driven path.
REST_POLL_INTERVAL_S = 0.5


@dataclass
class Freshness:
    """Per symbol: why it has no closed candle for the minute (absent when it has one)."""

    failures: dict[str, str] = field(default_factory=dict)
    from_stream: int = 0
    from_rest: int = 0
    waited_s: float = 0.0


def ensure_closed_candles(
    store: CandleStore,
    source: CandleSource,
    settings: Settings,
    symbols: Sequence[str],
    minute_ms: int,
    *,
    watermarks: WatermarkStore | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Freshness:
    target = minute_ms - MINUTE_MS
    began = time.monotonic()
    deadline = began + settings.pipeline.candle_wait_seconds
    out = Freshness()
    waiting = list(symbols)
    if watermarks is not None and watermarks.is_alive(source.name):
        reached = watermarks.wait(source.name, waiting, target, settings.pipeline.candle_wait_seconds)
        out.from_stream = len(reached)
        waiting = [s for s in waiting if s not in reached]
    out.waited_s = round(time.monotonic() - began, 4)
    if waiting:
        out.from_rest = len(waiting)
        out.failures = _sync_until(store, source, settings, waiting, minute_ms, deadline, sleep)
        if watermarks is not None:
            fresh = store.newest(source.name, [s for s in waiting if s not in out.failures])
            watermarks.advance(source.name, {s: c.open_time for s, c in fresh.items()})
    return out


def _sync_until(
    store: CandleStore,
    source: CandleSource,
    settings: Settings,
    symbols: Sequence[str],
    minute_ms: int,
    deadline: float,
    sleep: Callable[[float], None],
) -> dict[str, str]:
    """Fetch candles up to (not including) ``minute_ms`` for all ``symbols`` at once.

    An exchange publishes the just-closed candle a moment after the minute turns, so symbols whose
    newest candle is still missing are asked again until the deadline (at least once).
    """
    ingestor = Ingestor(
        store,
        source,
        ValidationPolicy.from_settings(settings),
        max_workers=settings.ml_integration.max_parallel,
    )
    waiting = list(symbols)
    failures: dict[str, str] = {}
    while True:
        report = ingestor.sync(waiting, initial_minutes=settings.data.sync_initial_minutes, end_ms=minute_ms)
        for symbol, outcome in report.failed.items():
            if outcome.rule != "stale":
                failures[symbol] = f"{outcome.rule}: {outcome.detail}"
        newest = store.newest(source.name, [s for s in waiting if s not in failures])
        waiting = [
            s
            for s in waiting
            if s not in failures and (s not in newest or newest[s].open_time < minute_ms - MINUTE_MS)
        ]
        if not waiting or time.monotonic() >= deadline:
            break
        sleep(REST_POLL_INTERVAL_S)
    for symbol in waiting:
        failures[symbol] = f"no closed candle for {iso_minute(minute_ms - MINUTE_MS)} yet"
    return failures
