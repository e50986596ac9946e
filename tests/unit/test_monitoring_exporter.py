"""The metrics exporter against real databases (SQLite and PostgreSQL) and the real Redis.

Rows are written by the project's own code where it exists (the run ledger, the paper trader, the
watermarks, the worker heartbeat), and read back through the exporter's Prometheus collector.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from kombu import Connection as KombuConnection
from kombu import Producer
from prometheus_client import CollectorRegistry
from sqlalchemy import insert

from core.settings import Settings
from data import db
from data.models import DataQuarantine, SignalRecord
from data.stream.watermark import RedisWatermarks
from monitoring.exporter import Exporter, RefreshLoop
from monitoring.reasons import halt_code, rejection_code, symbol_failure_reason
from pipeline.ledger import DONE, FAILED, PARTIAL, RUNNING, SKIPPED_LATE, RunLedger
from tests.conftest import REDIS_URL
from tests.support.trading import intent, make_trader, ms, write_candles
from trading.accounts import set_halted
from worker.queues import task_queues
from worker.telemetry import (
    WORKERS_KEY,
    Heartbeat,
    beat,
    record_model_load,
    record_shadow_failure,
    workers_up,
)

MINUTE0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
BTC = "BTC/USDT:USDT"


def sample(exporter: Exporter, name: str, **labels: str) -> float | None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(exporter)
    return registry.get_sample_value(name, labels)


def exporter_for(url: str, tmp_path: Path, *, settle_s: float = 0.0, **kw: Any) -> Exporter:
    models = {"registry_dir": tmp_path / "models"}
    settings = Settings(database_url=url, data_dir=tmp_path, model=models, **kw)
    return Exporter(settings, db.get_engine(url), None, settle_s=settle_s)


def finished_run(
    ledger: RunLedger,
    minute: datetime,
    *,
    status: str = DONE,
    asked: int = 4,
    made: int = 4,
    failures: dict[str, str] | None = None,
    timings: dict[str, float] | None = None,
) -> int:
    run = ledger.claim(minute, status=RUNNING, model_version="v1", symbols_asked=asked)
    assert run is not None
    ledger.update(
        run,
        status=status,
        signals_made=made,
        failures=failures or {},
        timings=timings or {},
        finished=True,
    )
    return run


def add_signals(url: str, minute: datetime, rows: list[tuple[str, str, float]]) -> None:
    values = [
        {
            "symbol": symbol,
            "minute": minute,
            "model_version": "v1",
            "bar_end": minute,
            "direction": direction,
            "confidence": confidence,
            "probabilities": {},
            "returns": {},
            "risk": {},
            "entry_price": 100.0,
            "expires_at": minute + timedelta(minutes=15),
            "schema_version": 1,
        }
        for symbol, direction, confidence in rows
    ]
    with db.get_engine(url).begin() as conn:
        conn.execute(insert(SignalRecord), values)


# ---------------------------------------------------------------------------- minutes and signals


def test_minutes_symbols_and_stages_come_from_the_ledger(migrated_url: str, tmp_path: Path) -> None:
    ledger = RunLedger(db.get_engine(migrated_url))
    timings = {
        "dispatch": 0.02,
        "features_max_chunk": 0.6,
        "inference_fetch": 0.004,
        "inference_forward": 0.12,
        "store": 0.03,
        "publish": 0.01,
        "minute_total": 1.4,
    }
    finished_run(ledger, MINUTE0, timings=timings)
    finished_run(
        ledger,
        MINUTE0 + timedelta(minutes=1),
        status=PARTIAL,
        made=2,
        failures={
            "ETH/USDT:USDT": "no closed candle for 2026-11-24T10:00Z yet",
            "SOL/USDT:USDT": "window_quality: 30.0% of the last 96 bars filled (at most 20%)",
        },
        timings={**timings, "minute_total": 9.0},
    )
    finished_run(ledger, MINUTE0 + timedelta(minutes=2), status=FAILED, made=0)
    ledger.claim(MINUTE0 + timedelta(minutes=3), status=SKIPPED_LATE, model_version=None, symbols_asked=0)
    ledger.claim(MINUTE0 + timedelta(minutes=4), status=RUNNING, model_version="v1", symbols_asked=4)

    exporter = exporter_for(migrated_url, tmp_path)
    assert exporter.refresh()["ledger"]
    assert sample(exporter, "mlsignals_minutes_total", status="done") == 1
    assert sample(exporter, "mlsignals_minutes_total", status="partial") == 1
    assert sample(exporter, "mlsignals_minutes_total", status="failed") == 1
    assert sample(exporter, "mlsignals_minutes_total", status="skipped_late") == 1
    assert sample(exporter, "mlsignals_minutes_total", status="missed") == 0
    # The running minute is not counted until it finishes.
    assert sample(exporter, "mlsignals_minute_duration_seconds_count") == 2
    assert sample(exporter, "mlsignals_minute_duration_seconds_sum") == pytest.approx(10.4)
    assert sample(exporter, "mlsignals_minute_duration_seconds_bucket", le="2.0") == 1
    assert sample(exporter, "mlsignals_minute_duration_seconds_bucket", le="8.0") == 1
    assert sample(exporter, "mlsignals_minute_duration_seconds_bucket", le="10.0") == 2
    assert sample(exporter, "mlsignals_minute_stage_duration_seconds_count", stage="inference_forward") == 2
    assert sample(exporter, "mlsignals_minute_stage_duration_seconds_sum", stage="features") == pytest.approx(
        1.2
    )
    assert sample(exporter, "mlsignals_symbols_asked_total") == 12
    assert sample(exporter, "mlsignals_symbols_ok_total") == 6
    assert sample(exporter, "mlsignals_symbol_failures_total", reason="no_candle") == 1
    assert sample(exporter, "mlsignals_symbol_failures_total", reason="window_quality") == 1
    assert sample(exporter, "mlsignals_symbol_failures_total", reason="other") == 0
    # The newest finished minute is the failed one: coverage 0; the newest success is minute 1.
    assert sample(exporter, "mlsignals_newest_minute_coverage_ratio") == 0
    assert sample(exporter, "mlsignals_last_success_minute_timestamp_seconds") == (
        (MINUTE0 + timedelta(minutes=1)).timestamp()
    )
    assert sample(exporter, "mlsignals_newest_minute_timestamp_seconds") == (
        (MINUTE0 + timedelta(minutes=2)).timestamp()
    )

    # Refreshing again counts nothing twice; the running minute is counted once it finishes.
    exporter.refresh()
    assert sample(exporter, "mlsignals_minutes_total", status="done") == 1
    running = ledger.get(MINUTE0 + timedelta(minutes=4))
    assert running is not None
    ledger.update(running.id, status=DONE, signals_made=4, timings={"minute_total": 2.5}, finished=True)
    exporter.refresh()
    assert sample(exporter, "mlsignals_minutes_total", status="done") == 2
    assert sample(exporter, "mlsignals_minute_duration_seconds_count") == 3
    assert sample(exporter, "mlsignals_newest_minute_coverage_ratio") == 1.0

    # A restarted exporter serves the same totals: they are the ledger's, not the process's.
    again = exporter_for(migrated_url, tmp_path)
    again.refresh()
    for status, expected in (("done", 2), ("partial", 1), ("failed", 1), ("skipped_late", 1)):
        assert sample(again, "mlsignals_minutes_total", status=status) == expected
    assert sample(again, "mlsignals_symbols_asked_total") == 16


def test_a_row_committed_late_below_the_cursor_is_still_counted_once(
    migrated_url: str, tmp_path: Path
) -> None:
    """Ids are taken at insert and seen at commit: a smaller id can appear after a larger one."""
    ledger = RunLedger(db.get_engine(migrated_url))
    later = finished_run(ledger, MINUTE0 + timedelta(minutes=5))
    # Nothing is old enough to settle, so the cursor may not pass the rows it has read.
    exporter = exporter_for(migrated_url, tmp_path, settle_s=3600)
    exporter.refresh()
    assert sample(exporter, "mlsignals_minutes_total", status="done") == 1
    with db.get_engine(migrated_url).begin() as conn:
        from data.models import PipelineRun

        conn.execute(
            insert(PipelineRun).values(
                id=later - 1 if later > 1 else later + 1000,
                minute=MINUTE0,
                status=DONE,
                symbols_asked=1,
                signals_made=1,
                failures={},
                timings={},
                started_at=datetime.now(UTC),
                finished_at=datetime.now(UTC),
                attempts=1,
            )
        )
    exporter.refresh()
    exporter.refresh()
    assert sample(exporter, "mlsignals_minutes_total", status="done") == 2
    assert exporter._pipeline.runs.below == 0


def test_missed_minutes_are_counted(migrated_url: str, tmp_path: Path) -> None:
    ledger = RunLedger(db.get_engine(migrated_url))
    finished_run(ledger, MINUTE0)
    recorded = ledger.record_missed(MINUTE0 + timedelta(minutes=4), lookback_minutes=60, note="beat down")
    assert len(recorded) == 3
    exporter = exporter_for(migrated_url, tmp_path)
    exporter.refresh()
    assert sample(exporter, "mlsignals_minutes_total", status="missed") == 3


def test_signals_by_direction_and_confidence(migrated_url: str, tmp_path: Path) -> None:
    ledger = RunLedger(db.get_engine(migrated_url))
    finished_run(ledger, MINUTE0, asked=4, made=4)
    add_signals(
        migrated_url,
        MINUTE0,
        [("A", "LONG", 0.52), ("B", "SHORT", 0.61), ("C", "NEUTRAL", 0.38), ("D", "LONG", 0.9)],
    )
    exporter = exporter_for(migrated_url, tmp_path)
    exporter.refresh()
    assert sample(exporter, "mlsignals_signals_total", direction="LONG", actionable="true") == 2
    assert sample(exporter, "mlsignals_signals_total", direction="SHORT", actionable="true") == 1
    assert sample(exporter, "mlsignals_signals_total", direction="NEUTRAL", actionable="false") == 1
    assert sample(exporter, "mlsignals_signal_confidence_count", direction="LONG") == 2
    assert sample(exporter, "mlsignals_signal_confidence_bucket", direction="LONG", le="0.55") == 1
    assert sample(exporter, "mlsignals_signal_confidence_bucket", direction="LONG", le="0.9") == 2
    assert sample(exporter, "mlsignals_signal_confidence_sum", direction="LONG") == pytest.approx(1.42)
    add_signals(migrated_url, MINUTE0 + timedelta(minutes=1), [("A", "SHORT", 0.7)])
    exporter.refresh()
    exporter.refresh()
    assert sample(exporter, "mlsignals_signals_total", direction="SHORT", actionable="true") == 2
    assert sample(exporter, "mlsignals_signals_total", direction="LONG", actionable="true") == 2


# ---------------------------------------------------------------------------------- data, model


def test_candle_lag_stale_symbols_and_quarantine(migrated_url: str, tmp_path: Path) -> None:
    trader = make_trader(migrated_url)
    ledger = RunLedger(trader.engine)
    # The newest minute asked for BTC (signalled) and ETH (failed, no candle at all).
    finished_run(ledger, MINUTE0, asked=2, made=1, failures={"ETH/USDT:USDT": "no closed candle yet"})
    add_signals(migrated_url, MINUTE0, [(BTC, "LONG", 0.6)])
    write_candles(trader, BTC, [(-1, 100, 101, 99, 100)])  # closes at MINUTE0
    with trader.engine.begin() as conn:
        conn.execute(
            insert(DataQuarantine).values(
                exchange="simulator",
                symbol="XRP/USDT:USDT",
                rule="nan",
                detail="NaN close",
                since=MINUTE0,
                updated_at=MINUTE0,
            )
        )
    exporter = exporter_for(migrated_url, tmp_path)
    exporter.clock = lambda: MINUTE0.timestamp() + 90  # 90 s after BTC's newest candle closed
    exporter.refresh()
    assert sample(exporter, "mlsignals_symbols_tracked") == 2
    assert sample(exporter, "mlsignals_candle_lag_seconds_bucket", le="60.0") == 0
    assert sample(exporter, "mlsignals_candle_lag_seconds_bucket", le="120.0") == 1
    assert sample(exporter, "mlsignals_candle_lag_seconds_bucket", le="+Inf") == 2
    assert sample(exporter, "mlsignals_candle_lag_seconds_gcount") == 2
    assert sample(exporter, "mlsignals_candle_lag_seconds_max") == 1e9  # ETH has no candle
    assert sample(exporter, "mlsignals_stale_symbols") == 1
    assert sample(exporter, "mlsignals_quarantined_symbols", rule="nan") == 1


def test_champion_and_settings_gauges(sqlite_url: str, tmp_path: Path) -> None:
    db.upgrade(sqlite_url)
    exporter = exporter_for(sqlite_url, tmp_path, ml_integration={"monitoring": {"alert_threshold": 0.7}})
    exporter.refresh()
    assert sample(exporter, "mlsignals_champion_present") == 0
    assert sample(exporter, "mlsignals_alert_threshold_ratio") == 0.7
    assert sample(exporter, "mlsignals_minute_budget_seconds") == 8.0
    assert sample(exporter, "mlsignals_daily_loss_limit_ratio") == 0.03
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "aliases.json").write_text(json.dumps({"champion": "20261124-abc"}))
    exporter.refresh()
    assert sample(exporter, "mlsignals_champion_present") == 1
    assert sample(exporter, "mlsignals_champion_info", version="20261124-abc") == 1


# ---------------------------------------------------------------------------------------- trading


def test_trading_intents_fills_accounts_and_kill_switch(migrated_url: str, tmp_path: Path) -> None:
    trader = make_trader(migrated_url)
    write_candles(trader, BTC, [(-1, 99.8, 100.2, 99.7, 100.0)])
    assert trader.execute(intent(BTC, 0, entry=100, stop=98, target=104)).status == "submitted"
    weak = trader.execute(intent("ETH/USDT:USDT", 0, confidence=0.05))
    assert weak.status == "rejected"
    write_candles(trader, BTC, [(0, 100.5, 101.0, 100.2, 100.8)])
    assert trader.tick(ms(1)).fills == 1

    exporter = exporter_for(migrated_url, tmp_path)
    exporter.refresh()
    assert sample(exporter, "mlsignals_order_intents_total", outcome="rejected", reason="min_confidence") == 1
    assert sample(exporter, "mlsignals_order_intents_total", outcome="filled", reason="none") == 1
    assert sample(exporter, "mlsignals_fills_total", account="paper", kind="entry") == 1
    assert sample(exporter, "mlsignals_open_positions", account="paper") == 1
    exposure = sample(exporter, "mlsignals_exposure_ratio", account="paper")
    assert exposure is not None
    assert exposure > 0
    assert sample(exporter, "mlsignals_kill_switch_engaged", account="paper", reason="none") == 0
    equity = sample(exporter, "mlsignals_account_equity", account="paper", currency="USDT")
    assert equity is not None
    assert 9_000 < equity < 11_000

    set_halted(trader.engine, trader.settings, True, "maintenance window")
    exporter.refresh()
    assert sample(exporter, "mlsignals_kill_switch_engaged", account="paper", reason="operator") == 1
    # Counted once, whatever the number of refreshes.
    assert sample(exporter, "mlsignals_fills_total", account="paper", kind="entry") == 1


def test_reason_labels_are_bounded() -> None:
    assert symbol_failure_reason("no closed candle for 2026-11-24T10:00Z yet") == "no_candle"
    assert symbol_failure_reason("window_quality: newest bar 0% traded") == "window_quality"
    assert symbol_failure_reason("feature task error: KeyError: 'x'") == "feature_error"
    assert symbol_failure_reason("feature window expired or missing before inference") == "window_missing"
    assert symbol_failure_reason("nan: close is NaN at 10:00") == "validation"
    assert symbol_failure_reason("Something Else: happened") == "other"
    assert rejection_code("cooldown: BTC entered 3 minutes ago") == "cooldown"
    assert rejection_code("whatever: free text") == "other"
    assert rejection_code(None) == "none"
    assert halt_code("daily_loss_limit: -3.1 %") == "daily_loss_limit"
    assert halt_code("quality_breaker: hit rate 0.41 < 0.45") == "quality_breaker"
    assert halt_code("halted by the operator") == "operator"


# ---------------------------------------------------------------------------- redis-side parts


@pytest.fixture
def redis_exporter(sqlite_url: str, tmp_path: Path, clean_redis: redis.Redis) -> Iterator[Exporter]:
    db.upgrade(sqlite_url)
    settings = Settings(
        database_url=sqlite_url,
        data_dir=tmp_path,
        redis_url=REDIS_URL,
        celery={"broker_url": REDIS_URL},
        model={"registry_dir": tmp_path / "models"},
    )
    exporter = Exporter(settings, db.get_engine(sqlite_url), clean_redis, settle_s=0.0)
    yield exporter
    exporter.close()


@pytest.mark.integration
def test_queue_depth_counts_priority_sublists_and_unacked(
    redis_exporter: Exporter, clean_redis: redis.Redis
) -> None:
    queues = {q.name: q for q in task_queues()}  # the queues Celery declares, exchanges and bindings
    with KombuConnection(REDIS_URL) as conn:
        producer = Producer(conn.default_channel)
        for queue, priority in (("features", 0), ("features", 6), ("features", 9), ("orders", 3)):
            producer.publish(
                {"n": 1},
                exchange=queues[queue].exchange,
                routing_key=queue,
                declare=[queues[queue]],
                priority=priority,
            )
    # What kombu's Redis transport keeps for a message a worker reserved: [message, exchange, routing key].
    clean_redis.hset("unacked", "tag-1", json.dumps([{"body": "x"}, "inference", "inference"]))
    clean_redis.hset("unacked", "tag-2", json.dumps([{"body": "x"}, "features", "features"]))
    keys = set(clean_redis.keys("features*"))
    assert len(keys) == 3  # the plain list and two priority sub-lists: LLEN on one would say 1
    up = redis_exporter.refresh()
    assert up["queues"]
    assert sample(redis_exporter, "mlsignals_queue_messages", queue="features") == 3
    assert sample(redis_exporter, "mlsignals_queue_messages", queue="orders") == 1
    assert sample(redis_exporter, "mlsignals_queue_messages", queue="control") == 0
    assert sample(redis_exporter, "mlsignals_queue_unacked_messages", queue="inference") == 1
    assert sample(redis_exporter, "mlsignals_queue_unacked_messages", queue="features") == 1


@pytest.mark.integration
def test_workers_up_from_heartbeats(redis_exporter: Exporter, clean_redis: redis.Redis) -> None:
    heartbeat = Heartbeat(clean_redis, "inference@host", ["inference"], period_s=10)
    heartbeat.start()
    beat(clean_redis, "features@host|1|features")
    beat(clean_redis, "features@other|2|features")
    beat(clean_redis, "orders@gone|3|orders", now=time.time() - 60)  # silent for six periods
    try:
        redis_exporter.refresh()
        assert sample(redis_exporter, "mlsignals_workers_up", queue="inference") == 1
        assert sample(redis_exporter, "mlsignals_workers_up", queue="features") == 2
        assert sample(redis_exporter, "mlsignals_workers_up", queue="orders") == 0
    finally:
        heartbeat.stop()
    # A clean shutdown leaves at once, without waiting for three silent periods.
    redis_exporter.refresh()
    assert sample(redis_exporter, "mlsignals_workers_up", queue="inference") == 0
    beat(clean_redis, "data@ancient|4|data", now=time.time() - 2 * 86_400)
    assert workers_up(clean_redis, 10)["data"] == 0
    assert clean_redis.zscore(WORKERS_KEY, "data@ancient|4|data") is None  # pruned


@pytest.mark.integration
def test_stream_state_and_model_loads(redis_exporter: Exporter, clean_redis: redis.Redis) -> None:
    marks = RedisWatermarks(clean_redis)
    redis_exporter.refresh()
    assert sample(redis_exporter, "mlsignals_stream_connected", exchange="simulator") == 0
    marks.mark_alive("simulator", 15)
    marks.count_reconnect("simulator")
    marks.count_reconnect("simulator")
    record_model_load(clean_redis)
    record_shadow_failure(clean_redis)
    redis_exporter.refresh()
    assert sample(redis_exporter, "mlsignals_stream_connected", exchange="simulator") == 1
    assert sample(redis_exporter, "mlsignals_stream_reconnects_total", exchange="simulator") == 2
    assert sample(redis_exporter, "mlsignals_model_reloads_total") == 1
    assert sample(redis_exporter, "mlsignals_shadow_failures_total") == 1


def test_a_failing_part_reports_down_and_keeps_its_last_values(sqlite_url: str, tmp_path: Path) -> None:
    db.upgrade(sqlite_url)
    ledger = RunLedger(db.get_engine(sqlite_url))
    finished_run(ledger, MINUTE0)
    exporter = exporter_for(sqlite_url, tmp_path)
    assert all(exporter.refresh().values())
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "aliases.json").write_text("{not json")
    up = exporter.refresh()
    assert up["model"] is False
    assert up["ledger"] is True
    assert sample(exporter, "mlsignals_exporter_collector_up", collector="model") == 0
    assert sample(exporter, "mlsignals_exporter_collector_up", collector="ledger") == 1
    assert sample(exporter, "mlsignals_champion_present") == 0  # the last good value
    assert sample(exporter, "mlsignals_minutes_total", status="done") == 1
    refreshed = sample(exporter, "mlsignals_exporter_last_refresh_timestamp_seconds")
    assert refreshed is not None
    assert refreshed > 0


def test_stopping_never_waits_for_a_refresh_in_flight() -> None:
    """A supervisor's SIGTERM must end the exporter promptly, even mid-refresh on a slow database."""
    inside, release = threading.Event(), threading.Event()
    calls: list[int] = []

    class SlowExporter:
        def refresh(self) -> None:
            calls.append(1)
            if len(calls) > 1:  # the first refresh (at start) is quick; the loop's next one hangs
                inside.set()
                release.wait(30)

    loop = RefreshLoop(cast(Exporter, SlowExporter()), 0.01)
    loop.start()
    assert inside.wait(10)
    began = time.monotonic()
    assert loop.stop(timeout_s=0.2) is False  # abandoned, not waited for
    assert time.monotonic() - began < 1.0
    release.set()
    assert loop.stop(timeout_s=10) is True
