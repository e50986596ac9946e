"""Gauges of the system's current state: candle freshness, trading accounts, model, queues, workers.

Each function reads its part once per refresh and returns finished metric families; none keeps
state between refreshes except the trading counters (:class:`TradingCounters`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import redis
from kombu import Connection as KombuConnection
from prometheus_client.core import CounterMetricFamily, GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import Connection, Table, func, select

from core.settings import Settings
from core.timegrid import MINUTE_MS
from data.models import DataQuarantine, OrderIntent, TradingAccount, TradingFill, TradingPosition
from data.store import CandleStore
from data.stream.watermark import WatermarkStore
from ml.registry import Registry
from monitoring.accumulators import LabelledCounter
from monitoring.pipeline_metrics import SIGNALS, newest_finished_run
from monitoring.reasons import halt_code, rejection_code
from monitoring.scan import SettledScan
from trading.risk import Rejection
from trading.states import CANCELLED, CLOSING, EXPIRED, FILLED, OPEN, REJECTED
from worker.queues import Queue
from worker.telemetry import model_loads, shadow_failures, workers_up

LAG_BOUNDS = (60.0, 120.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0)
INTENTS: Table = OrderIntent.__table__  # type: ignore[assignment]
FILLS: Table = TradingFill.__table__  # type: ignore[assignment]
FINAL_INTENT = (FILLED, REJECTED, CANCELLED, EXPIRED)


def settings_families(settings: Settings) -> Iterable[Metric]:
    """The configured thresholds, so that alert rules compare against the values in force."""
    mon = settings.ml_integration.monitoring
    values = {
        "mlsignals_alert_threshold_ratio": (
            mon.alert_threshold,
            "monitoring.alert_threshold: coverage floor.",
        ),
        "mlsignals_minute_budget_seconds": (mon.minute_budget_seconds, "monitoring.minute_budget_seconds."),
        "mlsignals_inference_budget_seconds": (
            mon.inference_budget_seconds,
            "monitoring.inference_budget_seconds.",
        ),
        "mlsignals_daily_loss_limit_ratio": (settings.trading.daily_loss_limit, "trading.daily_loss_limit."),
    }
    for name, (value, documentation) in values.items():
        yield GaugeMetricFamily(name, documentation, value=float(value))


# ------------------------------------------------------------------------------------------ data


def tracked_symbols(conn: Connection) -> list[str]:
    """The symbols the newest finished minute asked for: its signals plus its failures.

    The pipeline's own universe, without asking the exchange or scanning the candle table.
    """
    newest = newest_finished_run(conn)
    if newest is None:
        return []
    signalled = conn.execute(select(SIGNALS.c.symbol).where(SIGNALS.c.minute == newest.minute)).scalars()
    return sorted(set(signalled) | set((newest.failures or {}).keys()))


def data_families(
    conn: Connection, store: CandleStore, exchange: str, settings: Settings, now_s: float
) -> Iterable[Metric]:
    symbols = tracked_symbols(conn)
    newest = store.newest(exchange, symbols)
    # A symbol with no candle at all is as stale as it gets.
    lags = [
        max(0.0, now_s - (newest[s].open_time + MINUTE_MS) / 1000) if s in newest else float("inf")
        for s in symbols
    ]
    yield GaugeMetricFamily(
        "mlsignals_symbols_tracked", "Symbols the newest minute asked for.", value=len(symbols)
    )
    buckets: list[tuple[str, float]] = []
    for bound in LAG_BOUNDS:
        buckets.append((repr(bound), float(sum(1 for lag in lags if lag <= bound))))
    buckets.append(("+Inf", float(len(lags))))
    total = sum(lag for lag in lags if lag != float("inf"))
    # One gauge histogram instead of one series per symbol: 500 symbols stay 9 series.
    yield GaugeHistogramMetricFamily(
        "mlsignals_candle_lag_seconds",
        "Seconds from each tracked symbol's newest stored candle's close to now.",
        buckets=buckets,
        gsum_value=total,
    )
    worst = max(lags, default=0.0)
    yield GaugeMetricFamily(
        "mlsignals_candle_lag_seconds_max",
        "The largest candle lag of the tracked symbols (symbols with no candle count as 1e9 s).",
        value=1e9 if worst == float("inf") else worst,
    )
    stale = sum(1 for lag in lags if lag > settings.data.stale_after_seconds)
    yield GaugeMetricFamily(
        "mlsignals_stale_symbols", "Tracked symbols whose lag exceeds data.stale_after_seconds.", value=stale
    )
    quarantine = GaugeMetricFamily(
        "mlsignals_quarantined_symbols",
        "Symbols in quarantine, by the rule that put them there.",
        labels=["rule"],
    )
    table = DataQuarantine.__table__
    rows = conn.execute(
        select(table.c.rule, func.count()).where(table.c.exchange == exchange).group_by(table.c.rule)
    ).all()
    for rule, count in rows:
        quarantine.add_metric([str(rule)], float(count))
    yield quarantine


def stream_families(watermarks: WatermarkStore | None, exchange: str) -> Iterable[Metric]:
    connected = GaugeMetricFamily(
        "mlsignals_stream_connected", "1 while the candle stream service is alive.", labels=["exchange"]
    )
    reconnects = CounterMetricFamily(
        "mlsignals_stream_reconnects", "Reconnects of the candle stream service, ever.", labels=["exchange"]
    )
    if watermarks is not None:
        connected.add_metric([exchange], 1.0 if watermarks.is_alive(exchange) else 0.0)
        reconnects.add_metric([exchange], float(watermarks.reconnects(exchange)))
    yield connected
    yield reconnects


# --------------------------------------------------------------------------------------- trading


class TradingCounters:
    """Intents counted once they reach a final status; fills once written."""

    def __init__(self, settle_s: float = 120.0) -> None:
        self.intents = SettledScan(
            INTENTS,
            ("status", "reason"),
            "created_at",
            final=INTENTS.c.status.in_(FINAL_INTENT),
            settle_s=settle_s,
        )
        self.fills = SettledScan(FILLS, ("account", "kind"), "created_at", settle_s=settle_s)
        self.outcomes = LabelledCounter(
            "mlsignals_order_intents_total",
            "Order intents by final outcome and rejection code.",
            ("outcome", "reason"),
        )
        self.fill_count = LabelledCounter(
            "mlsignals_fills_total", "Fills by account and kind.", ("account", "kind")
        )
        for outcome in FINAL_INTENT:
            self.outcomes.touch((outcome, "none"))
        for code in Rejection:
            self.outcomes.touch((REJECTED, code.value))

    def refresh(self, conn: Connection, now: datetime) -> None:
        for intent in self.intents.poll(conn, now):
            self.outcomes.inc((str(intent.status), rejection_code(intent.reason)))
        for fill in self.fills.poll(conn, now):
            self.fill_count.inc((str(fill.account), str(fill.kind)))

    def families(self) -> Iterable[Metric]:
        yield self.outcomes.family()
        yield self.fill_count.family()


def account_families(conn: Connection) -> Iterable[Metric]:
    acct = TradingAccount.__table__
    pos = TradingPosition.__table__
    equity = GaugeMetricFamily("mlsignals_account_equity", "Account equity.", labels=["account", "currency"])
    day_pnl = GaugeMetricFamily(
        "mlsignals_account_daily_pnl",
        "Equity minus the day's starting equity.",
        labels=["account", "currency"],
    )
    day_ratio = GaugeMetricFamily(
        "mlsignals_account_daily_pnl_ratio", "Daily PnL / the day's starting equity.", labels=["account"]
    )
    halted = GaugeMetricFamily(
        "mlsignals_kill_switch_engaged",
        "1 while the account's kill switch is on.",
        labels=["account", "reason"],
    )
    open_positions = GaugeMetricFamily("mlsignals_open_positions", "Open positions.", labels=["account"])
    exposure = GaugeMetricFamily(
        "mlsignals_exposure_ratio", "Notional of open positions / equity.", labels=["account"]
    )
    held = {
        row.account: (int(row.n), float(row.notional or 0.0))
        for row in conn.execute(
            select(
                pos.c.account,
                func.count().label("n"),
                func.sum(func.abs(pos.c.qty * pos.c.mark_price)).label("notional"),
            )
            .where(pos.c.status.in_((OPEN, CLOSING)))
            .group_by(pos.c.account)
        )
    }
    for row in conn.execute(
        select(
            acct.c.name,
            acct.c.currency,
            acct.c.equity,
            acct.c.day_start_equity,
            acct.c.halted,
            acct.c.halt_reason,
        )
    ):
        name, currency = str(row.name), str(row.currency)
        pnl = float(row.equity) - float(row.day_start_equity)
        equity.add_metric([name, currency], float(row.equity))
        day_pnl.add_metric([name, currency], pnl)
        day_ratio.add_metric([name], pnl / float(row.day_start_equity) if row.day_start_equity else 0.0)
        halted.add_metric(
            [name, halt_code(row.halt_reason) if row.halted else "none"], 1.0 if row.halted else 0.0
        )
        count, notional = held.get(name, (0, 0.0))
        open_positions.add_metric([name], float(count))
        exposure.add_metric([name], notional / float(row.equity) if row.equity > 0 else 0.0)
    yield from (equity, day_pnl, day_ratio, halted, open_positions, exposure)


# ----------------------------------------------------------------------------------------- model


def model_families(registry: Registry, redis_client: redis.Redis | None) -> Iterable[Metric]:
    champion = registry.aliases().get("champion")
    info = GaugeMetricFamily("mlsignals_champion_info", "The champion model's version.", labels=["version"])
    if champion:
        info.add_metric([str(champion)], 1.0)
    yield info
    yield GaugeMetricFamily(
        "mlsignals_champion_present", "1 when a champion model is set.", value=1.0 if champion else 0.0
    )
    if redis_client is not None:
        yield CounterMetricFamily(
            "mlsignals_model_reloads",
            "Model loads by inference workers (start and hot reloads).",
            value=float(model_loads(redis_client)),
        )
        yield CounterMetricFamily(
            "mlsignals_shadow_failures",
            "Minutes whose shadow challenger failed to load, predict or decode (the champion's rows stood).",
            value=float(shadow_failures(redis_client)),
        )


# ---------------------------------------------------------------------------------------- queues


class QueueProbe:
    """Queue depths through kombu (Redis sums its priority sub-lists, AMQP answers a passive
    declare), reserved messages from the Redis transport's ``unacked`` hash, workers from heartbeats."""

    def __init__(self, broker_url: str, redis_client: redis.Redis | None, heartbeat_s: float) -> None:
        self.broker_url = broker_url
        self.redis_client = redis_client
        self.heartbeat_s = heartbeat_s
        self._conn: KombuConnection | None = None
        # The broker's own database (it may differ from redis_url's): kombu keeps ``unacked`` there.
        self._broker_redis = (
            redis.Redis.from_url(broker_url, socket_timeout=3) if broker_url.startswith("redis") else None
        )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.release()
            self._conn = None

    def _channel(self) -> Any:
        if self._conn is None:
            self._conn = KombuConnection(
                self.broker_url, connect_timeout=3, transport_options={"socket_timeout": 3}
            )
        return self._conn.default_channel

    def ready(self) -> dict[str, int]:
        channel = self._channel()
        out: dict[str, int] = {}
        for queue in Queue:
            try:
                out[queue.value] = int(channel.queue_declare(queue=queue.value, passive=True).message_count)
            except Exception as exc:
                if not _missing_queue(exc):
                    self.close()
                    raise
                # Redis deletes an emptied list, so an empty queue does not exist there. An AMQP
                # broker closes the channel on the error: the next queue needs a new one.
                out[queue.value] = 0
                if not self.broker_url.startswith("redis"):
                    self.close()
                    channel = self._channel()
        return out

    def unacked(self) -> dict[str, int]:
        """Reserved messages per queue (Redis transport only: AMQP does not say without its API)."""
        counts = {q.value: 0 for q in Queue}
        if self._broker_redis is None:
            return counts
        for raw in self._broker_redis.hvals("unacked"):
            try:
                routing_key = json.loads(raw)[2]
            except (ValueError, IndexError, TypeError):
                continue
            if routing_key in counts:
                counts[routing_key] += 1
        return counts

    def families(self) -> Iterable[Metric]:
        ready, unacked = self.ready(), self.unacked()
        up = workers_up(self.redis_client, self.heartbeat_s) if self.redis_client is not None else {}
        msgs = GaugeMetricFamily(
            "mlsignals_queue_messages", "Messages waiting in each Celery queue.", labels=["queue"]
        )
        reserved = GaugeMetricFamily(
            "mlsignals_queue_unacked_messages",
            "Messages delivered to a worker, not yet acknowledged.",
            labels=["queue"],
        )
        workers = GaugeMetricFamily(
            "mlsignals_workers_up", "Live worker processes consuming each queue.", labels=["queue"]
        )
        for queue in Queue:
            msgs.add_metric([queue.value], float(ready[queue.value]))
            reserved.add_metric([queue.value], float(unacked[queue.value]))
            workers.add_metric([queue.value], float(up.get(queue.value, 0)))
        yield from (msgs, reserved, workers)


def _missing_queue(exc: Exception) -> bool:
    return "NOT_FOUND" in str(exc) or "no queue" in str(exc).lower() or type(exc).__name__ == "ChannelError"
