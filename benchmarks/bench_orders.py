"""Order-intent throughput through the real ``orders`` queue: Redis, PostgreSQL, one worker process.

Run: ``.venv/bin/python -m benchmarks.bench_orders [--intents 2000] [--symbols 200] [--redis-url URL]``.
Loads scripted candles for the symbols into a scratch PostgreSQL schema, starts the ``orders``
worker exactly as in production (threads pool, concurrency 8, prefetch 4), then replays minutes
the way ``tasks.signals.publish`` sends them: per minute one ``tasks.orders.tick`` and one intent
per symbol, as a burst, waiting for the burst before the next minute. Directions are random, so
intents open positions, reverse them (the opposite signal closes first) or are refused by the
per-symbol limit; every one takes the account lock.

Prints the unique intents decided per second from the first send to the last decision (the whole
run, client time between minutes included; target >= 200 on the 2-core box), the latency from
send to the end of each execution, the per-minute burst times and the outcome counts. Then, timed
separately, every intent of the first minute is delivered again (a broker redelivery): those
duplicates must place nothing, which is checked against the orders table, not assumed.
Broker, results and application keys use the benchmark's own Redis database (``--redis-url``,
default ``$MLSIG_BENCH_REDIS_URL`` or db 14; never db 0), emptied only if it is empty or a benchmark's.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from celery import Celery
from celery.result import ResultSet
from sqlalchemy import func, select

from benchmarks.common import add_redis_option, claim_redis, scratch_postgres, summary
from core.logging import configure_logging
from core.timegrid import MINUTE_MS, floor_minute, iso_minute, now_ms
from data import db
from data.candles import candles_from_rows
from data.models import TradingFill, TradingOrder
from data.store import CandleStore
from data.validation import ValidatedBatch
from tests.support.workers import WorkerFleet, running_fleet
from trading.intents import OrderIntentMessage, client_order_id
from trading.risk import code_of
from worker.queues import Queue

WORKER_UP_TIMEOUT_S = 120.0


def load_candles(
    url: str, symbols: list[str], first_ms: int, minutes: int, seed: int = 1
) -> dict[str, float]:
    """A random walk per symbol from ``first_ms - 1 min`` over ``minutes + 2`` candles; last closes."""
    rng = np.random.default_rng(seed)
    store = CandleStore(db.get_engine(url))
    closes: dict[str, float] = {}
    batches = []
    for symbol in symbols:
        price = float(rng.uniform(1, 1000))
        rows = []
        for i in range(-1, minutes + 1):
            step = rng.normal(0, 0.002, size=2)
            o, c = price, price * (1 + step[0])
            high, low = max(o, c) * (1 + abs(step[1])), min(o, c) * (1 - abs(step[1]))
            rows.append([first_ms + i * MINUTE_MS, o, high, low, c, 1.0])
            price = c
        frame = candles_from_rows(rows)
        frame["is_filled"] = False
        batches.append(ValidatedBatch(symbol, frame, 0))
        closes[symbol] = float(rows[0][4])
    store.write("simulator", batches)
    return closes


def worker_env(url: str, redis_url: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MLSIG_")} | {
        "MLSIG_DATABASE_URL": url,
        "MLSIG_REDIS_URL": redis_url,
        "MLSIG_CELERY__BROKER_URL": redis_url,
        "MLSIG_CELERY__RESULT_BACKEND": redis_url,
        "MLSIG_LOG_LEVEL": "WARNING",
        # Room for a position in every symbol: the limits are checked, rarely binding.
        "MLSIG_TRADING__MAX_OPEN_POSITIONS": "0",
        "MLSIG_TRADING__MAX_EXPOSURE_TOTAL": "1000",
        "MLSIG_TRADING__MAX_EXPOSURE_PER_SYMBOL": "10",
        "MLSIG_TRADING__COOLDOWN_MINUTES": "0",
        "MLSIG_TRADING__DAILY_LOSS_LIMIT": "1",
        "MLSIG_TRADING__PAPER_BALANCE": "1000000",
    }


def wait_for_worker(client: Celery, fleet: WorkerFleet, timeout_s: float = WORKER_UP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.control.ping(timeout=0.5):
            return
        if any(w.process.poll() is not None for w in fleet.started):
            break
    codes = [w.process.poll() for w in fleet.started]
    raise SystemExit(
        f"the orders worker did not come up: waited up to {timeout_s:.0f} s for it to answer a ping on "
        f"{client.conf.broker_url}; exit codes {codes} (None: still running)\n{fleet.logs()}"
    )


def intent(
    symbol: str, when: datetime, signal_id: int, direction: str, price: float, **extra: Any
) -> dict[str, Any]:
    sign = 1 if direction == "LONG" else -1
    fields: dict[str, Any] = {
        "confidence": 0.7,
        "expires_at": datetime.now(UTC) + timedelta(hours=1),
    } | extra
    return OrderIntentMessage(
        client_order_id=client_order_id(symbol, when, "bench"),
        signal_id=signal_id,
        symbol=symbol,
        minute=when,
        model_version="bench",
        direction=direction,
        entry_price=price,
        stop_loss=price * (1 - 0.01 * sign),
        take_profit=price * (1 + 0.015 * sign),
        **fields,
    ).model_dump(mode="json")


@dataclass
class Burst:
    """Deliveries sent together: client send times, the worker's results, the span to the last one."""

    began: float
    sent_at: list[float]
    results: list[dict[str, Any]]

    @property
    def last_decision(self) -> float:
        return max((r["finished_at"] for r in self.results), default=self.began)

    @property
    def span(self) -> float:
        return self.last_decision - self.began

    def latencies(self) -> list[float]:
        return [r["finished_at"] - at for at, r in zip(self.sent_at, self.results, strict=True)]


def send_burst(client: Celery, docs: list[dict[str, Any]], tick_minute_ms: int | None = None) -> Burst:
    began = time.time()
    if tick_minute_ms is not None:
        client.send_task("tasks.orders.tick", args=[iso_minute(tick_minute_ms)], queue=Queue.ORDERS.value)
    sent = [
        (time.time(), client.send_task("tasks.orders.execute", args=[doc], queue=Queue.ORDERS.value))
        for doc in docs
    ]
    # One multi-get per poll for the whole burst: the client shares the two cores.
    results = ResultSet([handle for _, handle in sent], app=client).join_native(timeout=120)
    return Burst(began, [at for at, _ in sent], list(results))


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    not_created: int = 0  # unique intents the worker took for duplicates: must stay 0

    def add(self, results: list[dict[str, Any]]) -> None:
        for result in results:
            if not result["created"]:
                self.not_created += 1
            elif result["status"] == "rejected":
                self.outcomes[f"rejected: {code_of(result['reason'])}"] += 1
            else:
                self.outcomes[result["status"]] += 1


def count_orders(url: str) -> tuple[int, int, int]:
    """Orders, distinct client order ids among them, fills."""
    with db.get_engine(url).connect() as conn:
        orders = conn.execute(select(func.count()).select_from(TradingOrder)).scalar_one()
        distinct = conn.execute(select(func.count(func.distinct(TradingOrder.client_order_id)))).scalar_one()
        fills = conn.execute(select(func.count()).select_from(TradingFill)).scalar_one()
    return int(orders), int(distinct), int(fills)


def minute_docs(
    symbols: list[str], closes: dict[str, float], minute_ms: int, m: int, rng: np.random.Generator
) -> list[dict[str, Any]]:
    when = datetime.fromtimestamp(minute_ms / 1000, tz=UTC)
    return [
        intent(
            symbol,
            when,
            m,
            "LONG" if rng.random() < 0.5 else "SHORT",
            closes[symbol],
            confidence=float(rng.uniform(0.6, 1.0)),
        )
        for symbol in symbols
    ]


def warm_up(client: Celery, first_ms: int) -> None:
    """Untimed: the worker process imports, connects and prepares on first use."""
    when = datetime.fromtimestamp((first_ms - MINUTE_MS) / 1000, tz=UTC)
    send_burst(client, [intent(f"WARM{i}/USDT:USDT", when, 0, "LONG", 100.0) for i in range(16)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--intents", type=int, default=2000)
    parser.add_argument("--symbols", type=int, default=200)
    add_redis_option(parser)
    args = parser.parse_args()
    configure_logging("WARNING")
    symbols = [f"B{i:03d}/USDT:USDT" for i in range(args.symbols)]
    minutes = max(1, args.intents // args.symbols)
    first_ms = floor_minute(now_ms()) - (minutes + 2) * MINUTE_MS
    rng = np.random.default_rng(7)
    bursts: list[Burst] = []
    tally = Tally()
    with (
        claim_redis(args.redis_url) as redis_url,
        scratch_postgres() as url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        closes = load_candles(url, symbols, first_ms, minutes)
        client = Celery("bench-orders", broker=redis_url, backend=redis_url, set_as_current=False)
        client.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
        with running_fleet(worker_env(url, redis_url), Path(tmp), [Queue.ORDERS]) as fleet:
            wait_for_worker(client, fleet)
            warm_up(client, first_ms)
            first_docs: list[dict[str, Any]] = []
            for m in range(minutes):
                minute_ms = first_ms + m * MINUTE_MS
                docs = minute_docs(symbols, closes, minute_ms, m, rng)
                first_docs = first_docs or docs
                bursts.append(send_burst(client, docs, minute_ms))
                tally.add(bursts[-1].results)
            before = count_orders(url)
            # Every intent of the first minute delivered again, as a broker redelivers: timed apart.
            redelivered = send_burst(client, first_docs)
        client.close()
        after = count_orders(url)
    report(args.symbols, minutes, bursts, tally, redelivered, before, after)


def report(
    n_symbols: int,
    minutes: int,
    bursts: list[Burst],
    tally: Tally,
    redelivered: Burst,
    before: tuple[int, int, int],
    after: tuple[int, int, int],
) -> None:
    unique = sum(len(b.results) for b in bursts)
    span = max(b.last_decision for b in bursts) - bursts[0].began
    in_bursts = sum(b.span for b in bursts)
    latencies = [lat for b in bursts for lat in b.latencies()]
    print(
        f"\n{unique} unique intents over {n_symbols} symbols x {minutes} minutes, one orders worker "
        "(threads x 8), PostgreSQL + Redis"
    )
    print(
        f"  throughput            {unique / span:8.0f} unique intents decided/s from the first send to the "
        f"last decision ({span:.2f} s; target >= 200)"
    )
    print(
        f"                        ({in_bursts:.2f} s of it inside the minute bursts, the rest the client "
        "collecting the results and preparing the next minute)"
    )
    print(f"  latency send->done    {summary(latencies)}")
    print(f"  minute burst          {summary([b.span for b in bursts])}  ({n_symbols} intents + 1 tick)")
    print(f"  outcomes              {dict(sorted(tally.outcomes.items()))}")
    if tally.not_created:
        print(f"  UNEXPECTED: {tally.not_created} first deliveries were treated as duplicates")
    orders, distinct, fills = after
    print(f"  orders {orders} (distinct client ids {distinct}), fills {fills}")
    dup_created = sum(1 for r in redelivered.results if r["created"])
    placed = after[0] - before[0]
    verdict = "placed nothing" if dup_created == 0 and placed == 0 and distinct == orders else "PLACED ORDERS"
    print(
        f"duplicates (measured apart): {len(redelivered.results)} redeliveries of the first minute's "
        f"intents, decided in {redelivered.span * 1000:.0f} ms from the first send to the last decision "
        f"({len(redelivered.results) / max(redelivered.span, 1e-9):.0f}/s); {verdict} "
        f"(new intents {dup_created}, new orders {placed})"
    )


if __name__ == "__main__":
    main()
