"""Order intents through the real ``orders`` queue: Redis, PostgreSQL and a worker process.

Intents become paper orders, a duplicate delivery places nothing twice, and the per-minute step
(``tasks.orders.tick``) fills them at the next candle's open.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from celery import Celery

from core.timegrid import MINUTE_MS, dt_to_ms, floor_minute, iso_minute, now_ms
from data import db
from data.candles import candles_from_rows
from data.models import TradingOrder, TradingPosition
from data.store import CandleStore
from data.validation import ValidatedBatch
from tests.conftest import REDIS_URL
from tests.support.workers import running_fleet
from trading.intents import OrderIntentMessage, client_order_id
from worker.queues import Queue

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The worker's broker, results and app state: the configured test Redis server
# (MLSIG_TEST_REDIS_URL), in a database of this test's own, emptied before and after it.
ORDERS_DB = 10
SYMBOLS = ("BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT")


def with_db(url: str, number: int) -> str:
    """``url`` (host, port, credentials) with database ``number``."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{number}"))


def db_number(url: str) -> int:
    path = urlsplit(url).path.strip("/")
    return int(path) if path.isdigit() else 0


@pytest.fixture
def orders_redis_url() -> Iterator[str]:
    url = with_db(REDIS_URL, ORDERS_DB)
    if db_number(url) in (0, db_number(REDIS_URL)):
        pytest.fail(f"refusing to flush {url}: db 0, or the database the other tests share ({REDIS_URL})")
    client = redis.Redis.from_url(url)
    assert client.connection_pool.connection_kwargs.get("db") == ORDERS_DB
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def client(orders_redis_url: str) -> Iterator[Celery]:
    app = Celery("orders-test", broker=orders_redis_url, backend=orders_redis_url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    yield app
    app.close()


def test_intents_through_the_queue_become_paper_orders_once(
    pg_url: str, orders_redis_url: str, client: Celery, tmp_path: Path
) -> None:
    db.upgrade(pg_url)
    store = CandleStore(db.get_engine(pg_url))
    signal_ms = floor_minute(now_ms()) - 3 * MINUTE_MS
    for symbol in SYMBOLS:
        rows = [[signal_ms + i * MINUTE_MS, 100.0 + i, 101.0 + i, 99.5 + i, 100.5 + i, 1.0] for i in range(2)]
        frame = candles_from_rows(rows)
        frame["is_filled"] = False
        store.write("simulator", [ValidatedBatch(symbol, frame, 0)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSIG_")} | {
        "MLSIG_DATABASE_URL": pg_url,
        "MLSIG_REDIS_URL": orders_redis_url,
        "MLSIG_CELERY__BROKER_URL": orders_redis_url,
        "MLSIG_CELERY__RESULT_BACKEND": orders_redis_url,
        "MLSIG_TRADING__SLIPPAGE_BPS": "10",
        "MLSIG_LOG_LEVEL": "WARNING",
    }
    minute = datetime.fromtimestamp(signal_ms / 1000, tz=UTC)
    intents = [
        OrderIntentMessage(
            client_order_id=client_order_id(symbol, minute, "v1"),
            signal_id=i,
            symbol=symbol,
            minute=minute,
            model_version="v1",
            direction="LONG",
            confidence=0.8,
            entry_price=100.0,
            stop_loss=98.0,
            take_profit=110.0,
            expires_at=datetime.now(UTC) + timedelta(minutes=10),
        ).model_dump(mode="json")
        for i, symbol in enumerate(SYMBOLS)
    ]
    with running_fleet(env, tmp_path, [Queue.ORDERS]) as fleet:
        for _ in range(120):
            if client.control.ping(timeout=0.5):
                break
        else:
            pytest.fail(f"the orders worker did not answer:\n{fleet.logs()}")
        # The first intent twice, as a redelivery or a second publish would send it.
        sent = [
            client.send_task("tasks.orders.execute", args=[doc], queue=Queue.ORDERS.value)
            for doc in [*intents, intents[0]]
        ]
        results = [r.get(timeout=30) for r in sent]
        assert sorted(r["created"] for r in results) == [False, True, True, True], fleet.logs()
        assert {r["status"] for r in results} == {"submitted"}
        tick = client.send_task(
            "tasks.orders.tick", args=[iso_minute(signal_ms + MINUTE_MS)], queue=Queue.ORDERS.value
        ).get(timeout=30)
        assert tick["fills"] == len(SYMBOLS), fleet.logs()
        again = client.send_task(
            "tasks.orders.tick", args=[iso_minute(signal_ms + MINUTE_MS)], queue=Queue.ORDERS.value
        ).get(timeout=30)
        assert again["skipped"] is True

    with db.get_engine(pg_url).connect() as conn:
        orders = conn.execute(TradingOrder.__table__.select()).all()
        positions = conn.execute(TradingPosition.__table__.select()).all()
    assert sorted(o.client_order_id for o in orders) == sorted(i["client_order_id"] for i in intents)
    assert {o.status for o in orders} == {"filled"}
    assert len(positions) == len(SYMBOLS)
    # Filled at the open of the candle that opened at the signal's minute, 10 bps higher.
    assert {round(p.entry_price, 6) for p in positions} == {round(100.0 * 1.001, 6)}
    assert {dt_to_ms(p.opened_at) for p in positions} == {signal_ms}
