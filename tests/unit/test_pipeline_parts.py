"""The pipeline's storage and messaging parts on their own: window store, bus, lock, ledger, signals."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import redis

from data.db import get_engine
from pipeline.bus import BusItem, MemoryBus, RedisBus
from pipeline.ledger import DONE, RUNNING, SKIPPED_LATE, RunLedger
from pipeline.locks import MemoryMinuteLock, RedisMinuteLock
from pipeline.messages import (
    HeartbeatMessage,
    MalformedMessageError,
    SignalMessage,
    message_json_schema,
    parse_message,
)
from pipeline.publishing import publish_heartbeat, publish_pending
from pipeline.signal_store import SignalStore
from pipeline.window_store import MemoryWindowStore, RedisWindowStore, window_key
from tests.conftest import REDIS_URL
from trading.intents import client_order_id

MINUTE = datetime(2026, 11, 24, 10, 31, tzinfo=UTC)


def signal_row(symbol: str, direction: str = "LONG", version: str = "v1") -> dict[str, object]:
    return {
        "symbol": symbol,
        "minute": MINUTE,
        "model_version": version,
        "bar_end": MINUTE,
        "direction": direction,
        "confidence": 0.7,
        "probabilities": {"1h": {"long": 0.7, "short": 0.2, "flat": 0.1}},
        "returns": {"1h": 0.004},
        "risk": {"drawdown_1h": 0.01},
        "entry_price": 100.0,
        "stop_loss": 99.0 if direction != "NEUTRAL" else None,
        "take_profit": 101.5 if direction != "NEUTRAL" else None,
        "expires_at": MINUTE + timedelta(minutes=15),
        "schema_version": 1,
    }


def prediction_row(symbol: str, version: str = "v1") -> dict[str, object]:
    return {
        "symbol": symbol,
        "minute": MINUTE,
        "model_version": version,
        "outputs": [0.0] * 20,
        "temperature": 1.0,
    }


@pytest.mark.parametrize("kind", ["memory", pytest.param("redis", marks=pytest.mark.integration)])
def test_window_store_round_trip_and_missing_keys(kind: str, request: pytest.FixtureRequest) -> None:
    store = (
        MemoryWindowStore() if kind == "memory" else RedisWindowStore(request.getfixturevalue("clean_redis"))
    )
    window = np.random.default_rng(0).normal(size=(96, 240)).astype(np.float32)
    store.put_many({window_key("run", "A"): window}, ttl_seconds=30)
    got = store.get_many([window_key("run", "A"), window_key("run", "B")], (96, 240))
    assert got[1] is None
    assert got[0] is not None
    np.testing.assert_array_equal(got[0], window)
    with pytest.raises(ValueError, match="bytes"):
        store.get_many([window_key("run", "A")], (96, 241))


def test_memory_window_store_expires() -> None:
    store = MemoryWindowStore()
    store.put_many({"k": np.zeros((2, 2), dtype=np.float32)}, ttl_seconds=-1)
    assert store.get_many(["k"], (2, 2)) == [None]


@pytest.mark.integration
def test_redis_window_keys_carry_a_ttl(clean_redis: redis.Redis) -> None:
    RedisWindowStore(clean_redis).put_many({"k": np.zeros((2, 2), dtype=np.float32)}, ttl_seconds=30)
    assert 0 < clean_redis.ttl("k") <= 30


def test_minute_lock_is_taken_once() -> None:
    lock = MemoryMinuteLock()
    assert lock.acquire("m", 60)
    assert not lock.acquire("m", 60)
    assert lock.acquire("other", 60)


@pytest.mark.integration
def test_redis_minute_lock_is_taken_once(clean_redis: redis.Redis) -> None:
    lock = RedisMinuteLock(clean_redis)
    assert lock.acquire("2026-11-24T10:31:00Z", 60)
    assert not RedisMinuteLock(redis.Redis.from_url(REDIS_URL)).acquire("2026-11-24T10:31:00Z", 60)


def test_ledger_claims_each_minute_once(migrated_url: str) -> None:
    ledger = RunLedger(get_engine(migrated_url))
    first = ledger.claim(MINUTE, status=RUNNING, model_version="v1", symbols_asked=3)
    assert first is not None
    assert ledger.claim(MINUTE, status=RUNNING, model_version="v1", symbols_asked=3) is None
    ledger.update(first, failures={"A": "bad"}, timings={"features": 0.5})
    ledger.update(first, status=DONE, signals_made=2, timings={"publish": 0.1}, finished=True)
    run = ledger.get(MINUTE)
    assert run is not None
    assert run.status == DONE
    assert run.failures == {"A": "bad"}
    assert run.timings == {"features": 0.5, "publish": 0.1}
    assert run.finished_at is not None


def test_ledger_closes_overdue_runs(migrated_url: str) -> None:
    ledger = RunLedger(get_engine(migrated_url))
    ledger.claim(MINUTE, status=RUNNING, model_version="v1", symbols_asked=1)
    ledger.claim(MINUTE + timedelta(minutes=1), status=SKIPPED_LATE, model_version=None, symbols_asked=0)
    assert [r.minute for r in ledger.expire_overdue(datetime.now(UTC), "lost")] == [MINUTE]
    run = ledger.get(MINUTE)
    assert run is not None
    assert (run.status, run.note) == ("failed", "lost")
    assert next(r.minute.replace(tzinfo=UTC) for r in ledger.recent(5)) == MINUTE + timedelta(minutes=1)


def test_signal_upsert_is_idempotent_and_the_outbox_sends_once(migrated_url: str) -> None:
    store = SignalStore(get_engine(migrated_url))
    bus = MemoryBus()
    inbox = bus.subscribe()
    from core.settings import Settings

    settings = Settings()
    rows = [signal_row("A"), signal_row("B", "NEUTRAL")]
    assert store.upsert(rows, [prediction_row("A"), prediction_row("B")]) == 2
    assert store.upsert(rows, [prediction_row("A"), prediction_row("B")]) == 0
    assert publish_pending(store, bus, settings, MINUTE, "v1") == 2
    assert publish_pending(store, bus, settings, MINUTE, "v1") == 0
    channels = [inbox.get_nowait()[0] for _ in range(4)]
    assert sorted(channels) == ["signals", "signals", "signals:A", "signals:B"]
    pending = store.orders_pending(MINUTE, "v1")
    assert [r.symbol for r in pending] == ["A"]
    store.mark_orders_enqueued([r.id for r in pending])
    assert store.orders_pending(MINUTE, "v1") == []
    assert len(store.for_minute(MINUTE)) == 2


def test_messages_validate_and_reject_malformed_input() -> None:
    beat = publish_heartbeat(
        MemoryBus(),
        __import__("core.settings").settings.Settings(),
        minute=MINUTE,
        status="done",
        model_version="v1",
        symbols_asked=2,
        signals=2,
        actionable=1,
        failed=0,
    )
    assert isinstance(parse_message(beat.model_dump_json()), HeartbeatMessage)
    good = SignalMessage(
        sequence=1,
        symbol="A",
        minute=MINUTE,
        bar_end=MINUTE,
        model_version="v1",
        direction="LONG",
        confidence=0.7,
        probabilities={"1h": {"long": 0.7, "short": 0.2, "flat": 0.1}},
        returns={"1h": 0.0},
        risk={},
        entry_price=1.0,
        expires_at=MINUTE,
    )
    assert parse_message(good.model_dump_json()) == good
    bad_inputs: list[str | bytes] = [
        b"not json",
        b"{}",
        json.dumps({**json.loads(good.model_dump_json()), "confidence": 1.5}),
    ]
    for bad in bad_inputs:
        with pytest.raises(MalformedMessageError):
            parse_message(bad)
    with pytest.raises(MalformedMessageError, match="direction"):
        parse_message(json.dumps({**json.loads(good.model_dump_json()), "direction": "UP"}))
    assert "signal" in json.dumps(message_json_schema())


@pytest.mark.integration
def test_redis_bus_publishes_in_order(clean_redis: redis.Redis) -> None:
    pubsub = clean_redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("signals")
    assert pubsub.get_message(timeout=1) is None  # drains the subscribe confirmation
    items = [
        BusItem(f"t{i}", "signal", str(i), payload, (ch,))
        for i, (ch, payload) in enumerate([("signals", "1"), ("signals", "2"), ("other", "x")])
    ]
    RedisBus(clean_redis, "test:stream").publish_once(items)
    got: list[bytes] = []
    while len(got) < 2:
        message = pubsub.get_message(timeout=5)
        assert message is not None
        got.append(message["data"])
    assert got == [b"1", b"2"]


def test_client_order_id_is_deterministic_and_short() -> None:
    a = client_order_id("BTC/USDT:USDT", MINUTE, "v1")
    assert a == client_order_id("BTC/USDT:USDT", MINUTE, "v1")
    assert a != client_order_id("BTC/USDT:USDT", MINUTE, "v2")
    assert len(a) <= 36


def test_published_schema_in_the_docs_matches_the_models() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "ML_API.md").read_text()
    block = text.split("## JSON Schema", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    assert json.loads(block) == message_json_schema()
