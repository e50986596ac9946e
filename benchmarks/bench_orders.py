"""Order-intent throughput through the real ``orders`` queue: Redis, PostgreSQL, one worker process.

Run: ``.venv/bin/python -m benchmarks.bench_orders [--intents 2000] [--symbols 200]``.
Loads scripted candles for the symbols into a scratch PostgreSQL schema, starts the ``orders``
worker exactly as in production (threads pool, concurrency 8, prefetch 4), then replays minutes
the way ``tasks.signals.publish`` sends them: per minute one ``tasks.orders.tick`` and one intent
per symbol, as a burst, waiting for the burst before the next minute. Directions are random, so
intents open positions, reverse them (the opposite signal closes first) or are refused by the
per-symbol limit; every one takes the account lock. Each intent is sent twice (a redelivery) in
the first minute to show that duplicates place nothing. Prints intents/s (target >= 200 on the
2-core box), p50 / p99 latency from send to the end of its execution, and the outcome counts.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import redis
from celery import Celery
from celery.result import ResultSet
from sqlalchemy import func, select

from benchmarks.common import scratch_postgres
from core.logging import configure_logging
from core.timegrid import MINUTE_MS, floor_minute, iso_minute, now_ms
from data import db
from data.candles import candles_from_rows
from data.models import TradingFill, TradingOrder
from data.store import CandleStore
from data.validation import ValidatedBatch
from tests.support.workers import running_fleet
from trading.intents import OrderIntentMessage, client_order_id
from trading.risk import code_of
from worker.queues import Queue

REDIS = "redis://127.0.0.1:6379/5"  # broker and results; bench_pipeline uses 7-9, the tests 10-15


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--intents", type=int, default=2000)
    parser.add_argument("--symbols", type=int, default=200)
    args = parser.parse_args()
    configure_logging("WARNING")
    symbols = [f"B{i:03d}/USDT:USDT" for i in range(args.symbols)]
    minutes = max(1, args.intents // args.symbols)
    first_ms = floor_minute(now_ms()) - (minutes + 2) * MINUTE_MS
    rng = np.random.default_rng(7)
    redis.Redis.from_url(REDIS).flushdb()
    with scratch_postgres() as url, tempfile.TemporaryDirectory() as tmp:
        closes = load_candles(url, symbols, first_ms, minutes)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLSIG_")} | {
            "MLSIG_DATABASE_URL": url,
            "MLSIG_REDIS_URL": REDIS,
            "MLSIG_CELERY__BROKER_URL": REDIS,
            "MLSIG_CELERY__RESULT_BACKEND": REDIS,
            "MLSIG_LOG_LEVEL": "WARNING",
            # Room for a position in every symbol: the limits are checked, rarely binding.
            "MLSIG_TRADING__MAX_OPEN_POSITIONS": "0",
            "MLSIG_TRADING__MAX_EXPOSURE_TOTAL": "1000",
            "MLSIG_TRADING__MAX_EXPOSURE_PER_SYMBOL": "10",
            "MLSIG_TRADING__COOLDOWN_MINUTES": "0",
            "MLSIG_TRADING__DAILY_LOSS_LIMIT": "1",
            "MLSIG_TRADING__PAPER_BALANCE": "1000000",
        }
        client = Celery("bench-orders", broker=REDIS, backend=REDIS, set_as_current=False)
        client.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
        with running_fleet(env, Path(tmp), [Queue.ORDERS]) as fleet:
            for _ in range(240):
                if client.control.ping(timeout=0.5):
                    break
            else:
                raise SystemExit(f"the orders worker did not start:\n{fleet.logs()}")
            # Untimed warm-up: the worker process imports, connects and prepares on first use.
            warm_minute = datetime.fromtimestamp((first_ms - MINUTE_MS) / 1000, tz=UTC)
            warm = [
                OrderIntentMessage(
                    client_order_id=client_order_id(f"WARM{i}/USDT:USDT", warm_minute, "bench"),
                    signal_id=0,
                    symbol=f"WARM{i}/USDT:USDT",
                    minute=warm_minute,
                    model_version="bench",
                    direction="LONG",
                    confidence=0.7,
                    entry_price=100.0,
                    stop_loss=99.0,
                    take_profit=101.5,
                    expires_at=datetime.now(UTC) + timedelta(hours=1),
                ).model_dump(mode="json")
                for i in range(16)
            ]
            ResultSet(
                [client.send_task("tasks.orders.execute", args=[d], queue=Queue.ORDERS.value) for d in warm],
                app=client,
            ).join_native(timeout=60)
            latencies: list[float] = []
            bursts: list[float] = []
            outcomes: Counter[str] = Counter()
            duplicates = 0
            expires = datetime.now(UTC) + timedelta(hours=1)
            for m in range(minutes):
                minute_ms = first_ms + m * MINUTE_MS
                when = datetime.fromtimestamp(minute_ms / 1000, tz=UTC)
                docs = []
                for symbol in symbols:
                    direction = "LONG" if rng.random() < 0.5 else "SHORT"
                    price = closes[symbol]
                    sign = 1 if direction == "LONG" else -1
                    docs.append(
                        OrderIntentMessage(
                            client_order_id=client_order_id(symbol, when, "bench"),
                            signal_id=m,
                            symbol=symbol,
                            minute=when,
                            model_version="bench",
                            direction=direction,
                            confidence=float(rng.uniform(0.6, 1.0)),
                            entry_price=price,
                            stop_loss=price * (1 - 0.01 * sign),
                            take_profit=price * (1 + 0.015 * sign),
                            expires_at=expires,
                        ).model_dump(mode="json")
                    )
                if m == 0:
                    docs = docs + docs  # every intent of the first minute delivered twice
                began = time.time()
                client.send_task("tasks.orders.tick", args=[iso_minute(minute_ms)], queue=Queue.ORDERS.value)
                sent = [
                    (
                        time.time(),
                        client.send_task("tasks.orders.execute", args=[doc], queue=Queue.ORDERS.value),
                    )
                    for doc in docs
                ]
                # One multi-get per poll for the whole burst: the client shares the two cores.
                results = ResultSet([handle for _, handle in sent], app=client).join_native(timeout=120)
                finished = 0.0
                for (at, _handle), result in zip(sent, results, strict=True):
                    latencies.append(result["finished_at"] - at)
                    finished = max(finished, result["finished_at"])
                    if not result["created"]:
                        duplicates += 1
                    elif result["status"] == "rejected":
                        outcomes[f"rejected: {code_of(result['reason'])}"] += 1
                    else:
                        outcomes[result["status"]] += 1
                bursts.append(finished - began)
        client.close()
        with db.get_engine(url).connect() as conn:
            orders = conn.execute(select(func.count()).select_from(TradingOrder)).scalar_one()
            distinct = conn.execute(
                select(func.count(func.distinct(TradingOrder.client_order_id)))
            ).scalar_one()
            fills = conn.execute(select(func.count()).select_from(TradingFill)).scalar_one()
    total = len(latencies)
    busy = sum(bursts)
    lat = np.asarray(latencies) * 1000
    print(
        f"\n{total} intent deliveries ({total - duplicates} distinct + {duplicates} duplicates) over "
        f"{args.symbols} symbols x {minutes} minutes, one orders worker (threads x 8), PostgreSQL + Redis"
    )
    print(f"  throughput            {total / busy:8.0f} intents/s  (target >= 200)")
    print(
        f"  latency send->done    p50 {np.percentile(lat, 50):6.0f} ms   p99 {np.percentile(lat, 99):6.0f} ms"
    )
    print(
        f"  minute burst          p50 {np.percentile(bursts, 50) * 1000:6.0f} ms   "
        f"max {max(bursts) * 1000:6.0f} ms  ({len(symbols)} intents + 1 tick)"
    )
    print(f"  outcomes              {dict(sorted(outcomes.items()))}")
    print(f"  orders {orders} (distinct client ids {distinct}), fills {fills}; duplicates placed nothing")


if __name__ == "__main__":
    main()
