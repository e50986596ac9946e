"""The candle stream end to end: the real ccxt pro feed against the local Bybit WebSocket server, REST
repair through the real exchange source against the local Bybit REST server, PostgreSQL, Redis.

One simulated clock drives both servers and the service, so a 5-minute disconnect or a 10-minute
outage takes no time. Every scenario counts the store: each (symbol, minute) of the checked range
exactly once, real wherever the exchange had the candle, a flagged filler only where it had none.
Waits are on events (Redis pub/sub of the watermarks, the WS server's state), never on sleeps.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest

from core.timegrid import MINUTE_MS
from data import db
from data.store import GapRecord, Outage, group_outages
from data.stream.watermark import RedisWatermarks
from tests.conftest import REDIS_URL
from tests.fakes.exchange_server import FakeExchangeServer
from tests.support.stream import (
    EXCHANGE,
    FAST_STREAM,
    WAIT_S,
    CountingFeed,
    StreamRig,
    real_values,
    redis_watermarks,
    stream_rig,
    symbol_ids,
    unified,
)

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z; each stream starts 30 s into this minute
START = T0 + 30_000
CONTEXT_BARS = 96  # the model's input window (FEATURE_SPEC.context)
BAR_MINUTES = 15
GRACE_MS = int(FAST_STREAM["hole_grace_s"] * 1000)


@pytest.fixture
def pg(pg_url: str) -> str:
    db.upgrade(pg_url)
    return pg_url


@contextmanager
def rig_on(pg: str, ids: Sequence[str], **options: Any) -> Iterator[StreamRig]:
    with ExitStack() as stack:
        marks = stack.enter_context(redis_watermarks(REDIS_URL, [unified(i) for i in ids]))
        yield stack.enter_context(stream_rig(pg, ids, start_ms=START, watermarks=marks, **options))


def minutes_channel(rig: StreamRig) -> Any:
    assert isinstance(rig.watermarks, RedisWatermarks)
    pubsub = rig.watermarks.client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"candles:{EXCHANGE}:minutes")
    return pubsub


def announcement(pubsub: Any, open_ms: int, timeout: float = WAIT_S) -> dict[str, Any]:
    """The stream's "minute complete" message for ``open_ms`` (others' messages are skipped)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        message = pubsub.get_message(timeout=left)
        if message is None:
            continue
        payload: dict[str, Any] = json.loads(message["data"])
        if payload["minute_open_ms"] == open_ms:
            return payload
    pytest.fail(f"minute {open_ms} was not announced within {timeout} s")


def test_500_symbols_one_minute_unconfirmed_then_confirmed(pg: str) -> None:
    ids = symbol_ids(500, "E2EW")
    with rig_on(pg, ids, sync_initial_minutes=3) as rig:
        rig.rest.clear_requests()
        minutes = minutes_channel(rig)
        try:
            # The forming candle of every symbol, then the minute closes and the final ones arrive.
            assert rig.push(T0, confirm=False, rng=random.Random(1)) == 500
            rig.clock.set(T0 + MINUTE_MS)
            assert rig.push(T0, rng=random.Random(2)) == 500
            assert rig.wait_marks(T0) == set(rig.symbols)
            assert announcement(minutes, T0) == {"minute_open_ms": T0, "symbols": 500, "lagging": []}
        finally:
            minutes.close()
        assert rig.marks() == dict.fromkeys(rig.symbols, T0)
        assert rig.kline_requests() == []  # the whole minute came over the WebSocket
    stats = rig.service.stats  # final once the stream thread stopped
    assert T0 in stats.minute_latency_s
    assert (stats.unconfirmed, stats.written, stats.duplicates, stats.rejected) == (500, 500, 0, 0)
    assert (stats.repairs, stats.reconnects, stats.flush_errors) == (1, 0, 0)  # the start-up sync only
    rig.assert_exactly_once(rig.history_start_ms, T0 + MINUTE_MS)
    assert rig.store.gaps(EXCHANGE) == []


def test_a_connection_dropped_mid_minute_is_repaired_over_rest_after_the_reconnect(pg: str) -> None:
    ids = symbol_ids(40, "E2ED")
    pushed, missed = ids[:20], ids[20:]
    with rig_on(pg, ids, sync_initial_minutes=3) as rig:
        rig.close_minute(T0)
        assert rig.wait_marks(T0) == set(rig.symbols)
        rig.rest.clear_requests()
        # Minute T0+1 closes; half of its final candles arrive, then the connection is cut.
        t1 = T0 + MINUTE_MS
        rig.clock.set(t1 + MINUTE_MS)
        assert rig.push(t1, pushed) == 20
        assert rig.wait_marks(t1, [unified(i) for i in pushed]) == {unified(i) for i in pushed}
        assert rig.ws.drop_connections() == 1
        rig.reconnected(2)
        assert rig.wait_marks(t1) == set(rig.symbols)
        # Exactly the half that never arrived went to REST, once each.
        assert sorted(rig.kline_requests()) == sorted(missed)
        # The new connection streams on.
        rig.close_minute(t1 + MINUTE_MS)
        assert rig.wait_marks(t1 + MINUTE_MS) == set(rig.symbols)
        assert sorted(rig.kline_requests()) == sorted(missed)
        assert rig.ws.stats().connections == 2
    assert rig.service.stats.reconnects == 1
    rig.assert_exactly_once(rig.history_start_ms, t1 + 2 * MINUTE_MS)
    assert rig.store.gaps(EXCHANGE) == []


def test_a_five_minute_disconnect_is_repaired_over_rest(pg: str) -> None:
    ids = symbol_ids(40, "E2EF")
    with rig_on(pg, ids, sync_initial_minutes=3) as rig:
        rig.close_minute(T0)
        assert rig.wait_marks(T0) == set(rig.symbols)
        rig.rest.clear_requests()
        # The connection goes dead (no pushes, no pongs) while five minutes close on the exchange...
        rig.ws.pause()
        for k in range(1, 6):
            assert rig.close_minute(T0 + k * MINUTE_MS) == 0
        # ... until it is finally lost; the service reconnects and first catches up over REST.
        rig.ws.drop_connections()
        rig.ws.resume()
        rig.reconnected(2)
        assert rig.wait_marks(T0 + 5 * MINUTE_MS) == set(rig.symbols)
        assert sorted(rig.kline_requests()) == sorted(ids)  # five minutes in one request per symbol
        rig.close_minute(T0 + 6 * MINUTE_MS)
        assert rig.wait_marks(T0 + 6 * MINUTE_MS) == set(rig.symbols)
    assert rig.service.stats.reconnects == 1
    rig.assert_exactly_once(rig.history_start_ms, T0 + 7 * MINUTE_MS)
    assert rig.store.gaps(EXCHANGE) == []


def test_duplicates_and_out_of_order_pushes_are_stored_once_without_rest(pg: str) -> None:
    ids = symbol_ids(20, "E2EO")
    feeds: list[CountingFeed] = []

    def counting(feed: Any) -> CountingFeed:
        feeds.append(CountingFeed(feed))
        return feeds[-1]

    # A long grace: the candle before an early one arrives on the stream, it must not go to REST.
    with rig_on(pg, ids, sync_initial_minutes=3, stream={"hole_grace_s": 10.0}, wrap_feed=counting) as rig:
        (feed,) = feeds
        rig.rest.clear_requests()
        rig.clock.set(T0 + MINUTE_MS)
        for _ in range(3):  # the same closed candle three times
            assert rig.push(T0) == 20
        assert rig.wait_marks(T0) == set(rig.symbols)
        # Minute t+1 arrives (twice) before minute t; then a late repeat of an already stored one.
        t = T0 + MINUTE_MS
        rig.clock.set(t + 2 * MINUTE_MS)
        assert rig.push(t + MINUTE_MS) == 20
        assert rig.push(t + MINUTE_MS) == 20
        assert feed.wait_for(100)  # received, buffered: the watermark cannot pass the missing t
        assert rig.marks() == dict.fromkeys(rig.symbols, T0)
        assert rig.push(t) == 20
        assert rig.push(T0) == 20
        assert rig.wait_marks(t + MINUTE_MS) == set(rig.symbols)
        assert rig.kline_requests() == []
    stats = rig.service.stats  # final once the stream thread stopped
    # T0: 2 repeats + 1 late one; t+1: 1 repeat; per symbol.
    assert (stats.duplicates, stats.written, stats.received) == (4 * 20, 3 * 20, 7 * 20)
    assert stats.repairs == 1  # the start-up sync only
    rig.assert_exactly_once(rig.history_start_ms, t + 2 * MINUTE_MS)


def test_a_symbol_the_stream_stops_is_kept_current_by_the_laggard_repair(pg: str) -> None:
    ids = symbol_ids(20, "E2ES")
    stopped, others = unified(ids[0]), [unified(i) for i in ids[1:]]
    with rig_on(pg, ids, sync_initial_minutes=3) as rig:
        rig.ws.stop_pushing([ids[0]])
        rig.rest.clear_requests()
        for k in range(3):
            m = T0 + k * MINUTE_MS
            assert rig.close_minute(m) == len(others)  # nothing pushed for the stopped symbol
            assert rig.wait_marks(m, others) == set(others)  # the others do not wait for it
            assert rig.marks([stopped]) == {stopped: m - MINUTE_MS}
            # Past the minute's grace, the once-a-minute check fetches it over REST.
            rig.clock.set(m + MINUTE_MS + GRACE_MS)
            assert rig.wait_marks(m, [stopped]) == {stopped}
        assert rig.kline_requests() == [ids[0]] * 3  # one request a minute, for that symbol only
        assert rig.store.quarantined(EXCHANGE) == {}
    rig.assert_exactly_once(rig.history_start_ms, T0 + 3 * MINUTE_MS)
    assert rig.store.gaps(EXCHANGE) == []


def test_an_exchange_wide_outage_is_filled_recorded_once_and_signals_return_8_minutes_after(
    pg: str,
) -> None:
    ids = symbol_ids(5, "E2EX")
    history = 1500  # the 96-bar window of 15 minutes needs 1440 stored minutes
    outage = T0 + 2 * MINUTE_MS  # the exchange prints nothing for 10 minutes from here ...
    back = outage + 10 * MINUTE_MS  # ... and trades again from this minute on
    last = back + 10 * MINUTE_MS

    def exchange_without_the_outage(rest: FakeExchangeServer) -> None:
        # Neither the WebSocket nor REST has those minutes: the REST server serves exactly these rows.
        for symbol_id in ids:
            rows = [
                [ts, *real_values(symbol_id, ts)]
                for ts in range(T0 - (history + 60) * MINUTE_MS, last, MINUTE_MS)
                if not outage <= ts < back
            ]
            rest.set_candles(symbol_id, rows)

    def reasons(rig: StreamRig, anchor: int) -> dict[str, str]:
        panel = rig.store.read_bars(EXCHANGE, rig.symbols, anchor, CONTEXT_BARS, BAR_MINUTES)
        assert panel.complete.all()  # whole bars throughout: the outage is filled, not missing
        pipeline = rig.settings.pipeline
        return panel.quality_reasons(
            CONTEXT_BARS, pipeline.max_filled_share, pipeline.min_real_share_newest_bar
        )

    with rig_on(pg, ids, sync_initial_minutes=history, prepare_rest=exchange_without_the_outage) as rig:
        for m in (T0, T0 + MINUTE_MS):
            rig.close_minute(m)
        assert rig.wait_marks(outage - MINUTE_MS) == set(rig.symbols)
        assert reasons(rig, outage) == {}  # signals before the outage
        # Ten minutes pass with nothing from the exchange; then the first candle after it arrives.
        rig.rest.clear_requests()
        assert rig.close_minute(back) == len(ids)
        assert rig.wait_marks(back) == set(rig.symbols)
        assert sorted(rig.kline_requests()) == sorted(ids)  # the hole was asked for over REST: nothing
        assert rig.marks() == dict.fromkeys(rig.symbols, back)  # ingestion resumes with that candle
        # How soon signals come back: the newest 15-minute bar must be at least half traded.
        signals_back: int | None = None
        for anchor in range(back + MINUTE_MS, last + MINUTE_MS, MINUTE_MS):
            if anchor > back + MINUTE_MS:
                rig.close_minute(anchor - MINUTE_MS)
                assert rig.wait_marks(anchor - MINUTE_MS) == set(rig.symbols)
            found = reasons(rig, anchor)
            if not found:
                signals_back = signals_back or anchor
                continue
            assert signals_back is None, f"signals stopped again at {anchor}"
            assert set(found) == set(rig.symbols)
            assert all("newest bar" in r for r in found.values()), found
        assert signals_back == back + 8 * MINUTE_MS
    assert rig.service.stats.rejected == 0
    assert rig.store.quarantined(EXCHANGE) == {}
    # The outage is recorded once per symbol, and reported as ONE exchange-wide outage.
    gaps = rig.store.gaps(EXCHANGE)
    assert gaps == [GapRecord(s, outage, back, 10, 10, True) for s in sorted(rig.symbols)]
    wide, own = group_outages(gaps, len(ids), rig.settings.data.outage_min_share)
    assert (wide, own) == ([Outage(outage, back, sorted(rig.symbols))], [])
    rig.assert_exactly_once(
        rig.history_start_ms, last, filled=lambda _symbol, open_ms: outage <= open_ms < back
    )
