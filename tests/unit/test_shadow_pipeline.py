"""The shadow challenger in the minute's stages (pipeline/stages.py, steps.py, publish_service.py,
publishing.py, bus.py) and in the exporter's signal counters: scored after the champion on the same
tensor, stored under its own version, published on ``pipeline.shadow_channel`` only, never traded,
and a failure of it never touches the champion's minute."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import redis
import redis.exceptions
from prometheus_client import CollectorRegistry
from sqlalchemy import insert, select

from core.settings import Settings
from core.timegrid import floor_minute, iso_minute, now_ms
from data import db
from data.models import SignalRecord
from ml.features import FEATURE_SPEC
from monitoring.exporter import Exporter
from pipeline.bus import BusItem, RedisBus
from pipeline.clock import minute_dt
from pipeline.ledger import DONE, RUNNING, RunLedger
from pipeline.messages import HeartbeatMessage, SignalMessage, parse_message
from pipeline.publish_service import publish_minute
from pipeline.stages import inference_stage
from pipeline.window_store import window_key
from tests.support.models import ShadowFixedModelServer
from trading.intents import OrderIntentMessage
from worker.embedded import build_embedded
from worker.runtime import Runtime

CHAMPION, CHALLENGER = "test-v1", "test-v2"
SYMBOLS = ("A", "B", "C")


class RecordingOrders:
    """The ``OrderQueue`` port: what the publish step asked the orders worker to do."""

    def __init__(self) -> None:
        self.ticks: list[str] = []
        self.intents: list[OrderIntentMessage] = []

    def send_tick(self, minute_iso: str, expires: datetime) -> str:  # noqa: ARG002
        self.ticks.append(minute_iso)
        return f"tick-{len(self.ticks)}"

    def send_intent(self, intent: OrderIntentMessage) -> str:
        self.intents.append(intent)
        return f"intent-{len(self.intents)}"


@pytest.fixture
def runtime(sqlite_url: str) -> Runtime:
    db.upgrade(sqlite_url)
    rt = build_embedded(Settings(database_url=sqlite_url, data={"universe_size": 3}))
    rt.models = ShadowFixedModelServer(CHAMPION, CHALLENGER)
    return rt


def minutes_ago(n: int) -> str:
    return iso_minute(floor_minute(now_ms()) - n * 60_000)


def claim(rt: Runtime, minute: str) -> int:
    run = rt.ledger.claim(minute_dt(minute), status=RUNNING, model_version=CHAMPION, symbols_asked=3)
    assert run is not None
    return run


def window_chunks(rt: Runtime) -> list[list[dict[str, Any]]]:
    rng = np.random.default_rng(0)
    shape = (FEATURE_SPEC.context, FEATURE_SPEC.n_features)
    refs = []
    for symbol in SYMBOLS:
        key = window_key("run", symbol)
        rt.windows.put_many({key: rng.normal(size=shape).astype(np.float32)}, ttl_seconds=60)
        ref = {"symbol": symbol, "ok": True, "key": key, "reason": None, "bar_end_ms": 0, "close": 100.0}
        refs.append(ref)
    return [refs[:2], refs[2:]]


def messages(inbox: Any) -> list[tuple[str, SignalMessage | HeartbeatMessage]]:
    out = []
    while not inbox.empty():
        channel, raw = inbox.get_nowait()
        out.append((channel, parse_message(raw)))
    return out


# ------------------------------------------------------------------------------------ inference


def test_the_challenger_scores_the_same_tensor_after_the_champion(runtime: Runtime) -> None:
    server = cast(ShadowFixedModelServer, runtime.models)
    minute = minutes_ago(1)
    result = inference_stage(runtime, window_chunks(runtime), minute, claim(runtime, minute), CHAMPION)
    assert (server.calls, server.shadow_calls, server.challenger.calls) == (1, 1, 1)
    assert {s["model_version"] for s in result["signals"]} == {CHAMPION}
    shadow = result["shadow"]
    assert shadow["version"] == CHALLENGER
    assert [s["symbol"] for s in shadow["signals"]] == list(SYMBOLS)
    assert {s["model_version"] for s in shadow["signals"] + shadow["predictions"]} == {CHALLENGER}
    assert {"forward", "shadow_forward", "shadow_wait", "shadow_decode"} <= set(result["timings"])
    # Its own outputs, not the champion's.
    champion_out = [p["outputs"] for p in result["predictions"]]
    assert champion_out != [p["outputs"] for p in shadow["predictions"]]

    # Switched off: the champion's rows are the same, and no second pass runs.
    runtime.settings.quality.shadow_enabled = False
    again = inference_stage(runtime, window_chunks(runtime), minute, claim(runtime, minutes_ago(2)), CHAMPION)
    assert "shadow" not in again
    assert "shadow_forward" not in again["timings"]
    assert server.shadow_calls == 1
    assert [p["outputs"] for p in again["predictions"]] == champion_out


@pytest.mark.parametrize(
    "error",
    [RuntimeError("CUDA error: device-side assert"), redis.exceptions.ConnectionError("reset by peer")],
)
def test_a_challenger_that_raises_leaves_the_champions_minute_intact(
    runtime: Runtime, error: BaseException
) -> None:
    """Even an error the champion's stage would retry (a transient one) is the challenger's alone:
    the minute is neither failed nor retried, and the failure is counted and recorded."""
    runtime.models = ShadowFixedModelServer(CHAMPION, CHALLENGER, fail=error)
    minute = minutes_ago(3)
    run = claim(runtime, minute)
    result = inference_stage(runtime, window_chunks(runtime), minute, run, CHAMPION)
    assert [s["symbol"] for s in result["signals"]] == list(SYMBOLS)
    assert result["shadow"] == {"error": f"{type(error).__name__}: {error}"}
    assert runtime.shadow_failures == 1

    orders = RecordingOrders()
    out = publish_minute(runtime, orders, result, minute, run, CHAMPION)
    assert out["signals"] == len(SYMBOLS)
    assert "shadow" not in out
    row = runtime.ledger.get(minute_dt(minute))
    assert row is not None
    assert (row.status, row.signals_made) == (DONE, len(SYMBOLS))
    assert row.note == f"shadow challenger skipped: {type(error).__name__}: {error}"
    assert {r.model_version for r in runtime.signals.for_minute(minute_dt(minute))} == {CHAMPION}


# -------------------------------------------------------------------------------------- publish


def signal_doc(symbol: str, minute: str, version: str, direction: str) -> dict[str, Any]:
    expires = iso_minute(floor_minute(now_ms()) + 15 * 60_000)
    actionable = direction != "NEUTRAL"
    return {
        "symbol": symbol,
        "minute": minute,
        "model_version": version,
        "bar_end": minute,
        "direction": direction,
        "confidence": 0.7,
        "probabilities": {"1h": {"long": 0.7, "short": 0.2, "flat": 0.1}},
        "returns": {"1h": 0.004 if direction != "SHORT" else -0.004},
        "risk": {"drawdown_1h": 0.01},
        "entry_price": 100.0,
        "stop_loss": 99.0 if actionable else None,
        "take_profit": 101.5 if actionable else None,
        "expires_at": expires,
    }


def prediction_doc(symbol: str, minute: str, version: str) -> dict[str, Any]:
    doc = {"symbol": symbol, "minute": minute, "model_version": version}
    return doc | {"outputs": [0.0] * 20, "temperature": 1.0}


def result_with_shadow(minute: str, shadow_version: str = CHALLENGER) -> dict[str, Any]:
    champion = [("A", "LONG"), ("B", "NEUTRAL"), ("C", "NEUTRAL")]
    # Every one of the challenger's signals is actionable: none may become an order.
    challenger = [("A", "SHORT"), ("B", "LONG"), ("C", "LONG")]
    return {
        "signals": [signal_doc(s, minute, CHAMPION, d) for s, d in champion],
        "predictions": [prediction_doc(s, minute, CHAMPION) for s, _ in champion],
        "failures": {},
        "timings": {"forward": 0.1, "shadow_forward": 0.1},
        "symbols_asked": 3,
        "shadow": {
            "version": shadow_version,
            "signals": [signal_doc(s, minute, shadow_version, d) for s, d in challenger],
            "predictions": [prediction_doc(s, minute, shadow_version) for s, _ in challenger],
        },
    }


def test_the_shadow_challengers_signals_never_reach_the_orders_queue(runtime: Runtime) -> None:
    """Stored under the challenger's version, published on the shadow channel only, never an order;
    the ledger, the heartbeat and the counts are the champion's."""
    inbox = runtime.bus.subscribe()  # type: ignore[attr-defined]
    orders = RecordingOrders()
    minute = minutes_ago(10)
    when = minute_dt(minute)
    run = claim(runtime, minute)
    result = result_with_shadow(minute)

    out = publish_minute(runtime, orders, result, minute, run, CHAMPION)
    assert [(i.symbol, i.model_version) for i in orders.intents] == [("A", CHAMPION)]
    assert (out["signals"], out["published"], out["order_tasks"]) == (3, 3, ["intent-1"])
    assert out["shadow"] == {"version": CHALLENGER, "signals": 3, "published": 3}

    shadow_rows = runtime.signals.for_minute(when, CHALLENGER)
    assert [(r.symbol, r.direction) for r in shadow_rows] == [("A", "SHORT"), ("B", "LONG"), ("C", "LONG")]
    assert all(r.orders_enqueued_at is None and r.published_at is not None for r in shadow_rows)
    got = messages(inbox)
    shadow_channel = runtime.settings.pipeline.shadow_channel
    on_shadow = [m for c, m in got if c == shadow_channel]
    elsewhere = [m for c, m in got if c != shadow_channel]
    assert {m.model_version for m in on_shadow} == {CHALLENGER}
    assert sorted(cast(SignalMessage, m).sequence for m in on_shadow) == sorted(r.id for r in shadow_rows)
    assert {m.model_version for m in elsewhere} == {CHAMPION}
    [beat] = [m for m in elsewhere if isinstance(m, HeartbeatMessage)]
    assert (beat.signals, beat.actionable) == (3, 1)
    row = runtime.ledger.get(when)
    assert row is not None
    assert (row.status, row.signals_made, row.note) == (DONE, 3, None)
    assert "inference_shadow_forward" in row.timings

    # A redelivered publish adds nothing: no row, no message, no order.
    again = publish_minute(runtime, orders, result, minute, run, CHAMPION)
    assert again["shadow"] == {"version": CHALLENGER, "signals": 3, "published": 0}
    assert len(orders.intents) == 1
    assert messages(inbox) == []


def test_the_orders_step_refuses_any_version_but_the_champions(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guarantee does not rest on the store's query alone: even a selection that returned the
    challenger's actionable rows sends none of them."""
    orders = RecordingOrders()
    minute = minutes_ago(11)
    store = runtime.signals
    original = store.orders_pending

    def every_version(when: datetime, _version: str) -> list[SignalRecord]:
        return original(when, CHAMPION) + original(when, CHALLENGER)

    monkeypatch.setattr(store, "orders_pending", every_version)
    # The challenger's rows are stored first here, so a broken selection would find them.
    shadowed = result_with_shadow(minute)
    times = ("minute", "bar_end", "expires_at")
    docs = shadowed["shadow"]["signals"]
    stored = [{k: minute_dt(v) if k in times else v for k, v in d.items()} for d in docs]
    store.upsert([d | {"schema_version": 1} for d in stored], [])
    publish_minute(runtime, orders, shadowed, minute, claim(runtime, minute), CHAMPION)
    assert [(i.symbol, i.model_version) for i in orders.intents] == [("A", CHAMPION)]


def test_a_shadow_section_under_the_champions_version_is_dropped(runtime: Runtime) -> None:
    orders = RecordingOrders()
    minute = minutes_ago(12)
    result = result_with_shadow(minute, shadow_version=CHAMPION)
    out = publish_minute(runtime, orders, result, minute, claim(runtime, minute), CHAMPION)
    assert out["shadow"]["error"] == "the shadow version is the champion's"
    rows = runtime.signals.for_minute(minute_dt(minute))
    assert [(r.symbol, r.direction) for r in rows] == [("A", "LONG"), ("B", "NEUTRAL"), ("C", "NEUTRAL")]
    assert len(orders.intents) == 1


# ---------------------------------------------------------------------------------- bus, metrics


@pytest.mark.integration
def test_redis_bus_keeps_pubsub_only_items_out_of_the_durable_stream(clean_redis: redis.Redis) -> None:
    client = clean_redis
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("signals", "signals:shadow")
    assert pubsub.get_message(timeout=1) is None
    bus = RedisBus(client, "test:stream", maxlen=1000)
    items = [
        BusItem("signal:1", "signal", "1", json.dumps({"v": "champion"}), ("signals",)),
        BusItem("signal:2", "signal", "2", json.dumps({"v": "other"}), ("signals:shadow",), stream=False),
    ]
    assert bus.publish_once(items) == 2
    assert bus.publish_once(items) == 0  # sent once, on either feed
    entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", client.xrange("test:stream"))
    assert [e[1][b"sequence"] for e in entries] == [b"1"]
    got: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + 10
    while len(got) < 2 and time.monotonic() < deadline:
        # None for the second subscription's confirmation too (ignored): keep reading.
        if (message := pubsub.get_message(timeout=1)) is not None:
            got.append((message["channel"], message["data"]))
    assert got == [(b"signals", b'{"v": "champion"}'), (b"signals:shadow", b'{"v": "other"}')]
    pubsub.close()


def test_the_exporter_counts_the_champions_signals_only(migrated_url: str, tmp_path: Path) -> None:
    engine = db.get_engine(migrated_url)
    minute = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    run = RunLedger(engine).claim(minute, status=RUNNING, model_version=CHAMPION, symbols_asked=2)
    assert run is not None
    RunLedger(engine).update(run, status=DONE, signals_made=2, finished=True)
    rows = [
        (CHAMPION, "A", "LONG"),
        (CHAMPION, "B", "NEUTRAL"),
        (CHALLENGER, "A", "SHORT"),
        (CHALLENGER, "B", "LONG"),
    ]
    with engine.begin() as conn:
        conn.execute(
            insert(SignalRecord),
            [
                {
                    "symbol": symbol,
                    "minute": minute,
                    "model_version": version,
                    "bar_end": minute,
                    "direction": direction,
                    "confidence": 0.6,
                    "probabilities": {},
                    "returns": {},
                    "risk": {},
                    "entry_price": 100.0,
                    "expires_at": minute + timedelta(minutes=15),
                    "schema_version": 1,
                }
                for version, symbol, direction in rows
            ],
        )
        assert len(conn.execute(select(SignalRecord.id)).all()) == 4
    settings = Settings(database_url=migrated_url, data_dir=tmp_path, model={"registry_dir": tmp_path / "m"})
    exporter = Exporter(settings, engine, None, settle_s=0.0)
    exporter.refresh()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(exporter)

    def total(direction: str) -> float | None:
        actionable = "false" if direction == "NEUTRAL" else "true"
        labels = {"direction": direction, "actionable": actionable}
        return registry.get_sample_value("mlsignals_signals_total", labels)

    assert (total("LONG"), total("NEUTRAL"), total("SHORT")) == (1.0, 1.0, 0.0)
