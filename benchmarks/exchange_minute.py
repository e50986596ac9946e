"""The exchange side of ``bench_pipeline --source exchange``: local Bybit servers and the stream.

History up to the first replayed minute is loaded straight into the store (the point is the
minute, not a backfill through 150 ms requests); from then on candles arrive only as a live
deployment gets them: confirmed klines on the WebSocket, written by the stream service, and the
REST fallback of the feature tasks for whatever the stream has not delivered in time.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis
from sqlalchemy import Engine

from core.settings import Settings
from core.timegrid import MINUTE_MS
from data.candles import candles_from_rows
from data.sources.exchange import ExchangeCandleSource
from data.store import CandleStore
from data.stream.bybit import BybitKlineFeed
from data.stream.service import CandleStreamService, StreamThread
from data.stream.watermark import RedisWatermarks
from data.validation import ValidationPolicy, validate_batch
from ml.features import FEATURE_SPEC
from tests.fakes.bybit_ws import FakeBybitWsServer, running_ws_server
from tests.fakes.exchange_server import FakeExchangeServer, running_exchange_server

LOAD_CHUNK = 50


class SimClock:
    """The stream service's clock: the replayed minute, running on in real time from when it was set."""

    def __init__(self, ms: int) -> None:
        self.set(ms)

    def set(self, ms: int) -> None:
        self._base, self._at = ms, time.monotonic()

    def __call__(self) -> int:
        return self._base + int((time.monotonic() - self._at) * 1000)


@dataclass
class ExchangeMinuteRig:
    ws: FakeBybitWsServer
    ids: list[str]
    clock: SimClock
    service: CandleStreamService

    def close_minute(self, minute_ms: int) -> None:
        """Minute ``minute_ms`` begins: the exchange confirms the previous minute's candles."""
        self.clock.set(minute_ms)
        order = list(self.ids)
        random.shuffle(order)
        self.ws.push_minute(minute_ms - MINUTE_MS, order)

    def stream_latencies(self) -> list[float]:
        return list(self.service.stats.minute_latency_s.values())


def _load_history(store: CandleStore, rest: FakeExchangeServer, ids: list[str], start: int, end: int) -> None:
    policy = ValidationPolicy()
    for i in range(0, len(ids), LOAD_CHUNK):
        batches = []
        for symbol_id in ids[i : i + LOAD_CHUNK]:
            frame = candles_from_rows(rest.candles(symbol_id, start, end))
            batches.append(validate_batch(frame, unified(symbol_id), now_ms=end, policy=policy))
        store.write("bybit", batches)


def unified(symbol_id: str) -> str:
    return f"{symbol_id.removesuffix('USDT')}/USDT:USDT"


@contextmanager
def exchange_minute_rig(
    env: dict[str, str], engine: Engine, n_symbols: int, first: int, latency_s: float
) -> Iterator[ExchangeMinuteRig]:
    """Servers, history and a running stream service; ``env`` is updated for the worker processes."""
    ids = [f"C{i:03d}USDT" for i in range(n_symbols)]
    symbols = [unified(s) for s in ids]
    history_start = first - (FEATURE_SPEC.window * 15 + 30) * MINUTE_MS
    with (
        running_exchange_server(symbols=ids, history_start_ms=history_start, latency_s=latency_s) as rest,
        running_ws_server() as ws,
    ):
        store = CandleStore(engine)
        # Everything before the warm-up minute's candle (first - 2 minutes) is history.
        _load_history(store, rest, ids, history_start, first - MINUTE_MS)
        store.analyze()
        env.update(
            {
                "MLSIG_DATA__SOURCE": "exchange",
                "MLSIG_DATA__SYMBOLS": json.dumps(symbols),
                "MLSIG_EXCHANGE__API_URLS": json.dumps({"all": rest.base_url}),
                "MLSIG_EXCHANGE__WS_URLS": json.dumps({"public.linear": ws.url}),
                "MLSIG_PIPELINE__CANDLE_WAIT_SECONDS": "6",
            }
        )
        settings = Settings(
            data={"source": "exchange", "symbols": symbols},
            exchange={"api_urls": {"all": rest.base_url}, "ws_urls": {"public.linear": ws.url}},
        )
        clock = SimClock(first - MINUTE_MS)
        source = ExchangeCandleSource(settings.exchange)
        marks = RedisWatermarks(redis.Redis.from_url(env["MLSIG_REDIS_URL"]))
        service = CandleStreamService(
            feed=BybitKlineFeed.from_settings(settings.exchange, settings.stream),
            store=store,
            source=source,
            watermarks=marks,
            settings=settings,
            symbols=symbols,
            clock=clock,
        )
        with StreamThread(service):
            ws.wait_subscribed(n_symbols, timeout=60)
            try:
                yield ExchangeMinuteRig(ws, ids, clock, service)
            finally:
                source.close()
