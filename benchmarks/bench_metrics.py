"""Metrics exporter benchmark: refresh and scrape with 500 symbols and 1,000 minutes in the ledger.

Run: ``.venv/bin/python -m benchmarks.bench_metrics [--symbols 500] [--minutes 1000] [--scrapes 200]``.

A scratch PostgreSQL schema gets, generated server-side: ``--minutes`` finished minutes in the
ledger with per-stage timings (every tenth partial, with two failed symbols), one signal per symbol
and minute (500,000 rows by default), 20 candles per symbol, 30 order intents and 10 fills per
minute and one paper account. The exporter then runs as ``mlsignals metrics serve`` runs it
(ledger, trading, data, model, and the Redis parts: queues, heartbeats, stream) and the script prints:

* the first refresh (an exporter starting on a full ledger reads all of it once);
* ``--steady`` refreshes, each after one more finished minute of ``--symbols`` signals: the work
  of each refresh on a running system;
* ``--scrapes`` HTTP scrapes of ``/metrics`` from the real server (what Prometheus waits for),
  with the size of the answer and its number of series.

Budget (issue 14): a scrape <= 100 ms with 500 symbols and 1,000 minutes in the ledger.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from benchmarks.common import add_redis_option, claim_redis, scratch_postgres, summary
from core.logging import configure_logging
from core.settings import Settings
from data import db
from monitoring.exporter import Exporter, serve

START = datetime(2026, 11, 1, tzinfo=UTC)

LEDGER_SQL = """
INSERT INTO pipeline_runs (minute, status, model_version, symbols_asked, signals_made, failures, timings,
                           started_at, finished_at, attempts)
SELECT CAST(:start AS timestamptz) + k * interval '1 minute',
       CASE WHEN k % 10 = 9 THEN 'partial' ELSE 'done' END,
       'v1', CAST(:symbols AS int),
       CASE WHEN k % 10 = 9 THEN CAST(:symbols AS int) - 2 ELSE CAST(:symbols AS int) END,
       CASE WHEN k % 10 = 9 THEN '{"AAA": "no closed candle for x yet", "BBB": "window_quality: 30%"}'::jsonb
            ELSE '{}'::jsonb END,
       jsonb_build_object('dispatch', 0.02, 'features_max_chunk', 0.5 + random(), 'inference_fetch', 0.004,
                          'inference_forward', 0.3 + random() / 5, 'store', 0.05, 'publish', 0.02,
                          'minute_total', 2 + 3 * random()),
       CAST(:settled AS timestamptz), CAST(:settled AS timestamptz), 1
FROM generate_series(CAST(:first AS int), CAST(:last AS int)) AS k
"""

SIGNALS_SQL = """
INSERT INTO signals (symbol, minute, model_version, bar_end, direction, confidence, probabilities, returns,
                     risk, entry_price, expires_at, schema_version, created_at)
SELECT 'SYM' || lpad(s::text, 4, '0') || '/USDT:USDT', m, 'v1', m,
       (ARRAY['LONG', 'SHORT', 'NEUTRAL', 'NEUTRAL'])[1 + (s + k) % 4], 0.34 + random() * 0.5,
       '{}'::jsonb, '{}'::jsonb, '{}'::jsonb, 100.0, m + interval '15 minutes', 1,
       CAST(:created AS timestamptz)
FROM generate_series(CAST(:first AS int), CAST(:last AS int)) AS k,
     LATERAL (SELECT CAST(:start AS timestamptz) + k * interval '1 minute' AS m) AS t,
     generate_series(0, CAST(:symbols AS int) - 1) AS s
"""

CANDLES_SQL = """
INSERT INTO raw_market_data (exchange, symbol, interval, open_time, open, high, low, close, volume, is_filled)
SELECT 'simulator', 'SYM' || lpad(s::text, 4, '0') || '/USDT:USDT', '1m',
       CAST(:newest_ms AS bigint) - i * 60000,
       100, 101, 99, 100, 1, false
FROM generate_series(0, CAST(:symbols AS int) - 1) AS s, generate_series(0, 19) AS i
"""

TRADING_SQL = [
    """
    INSERT INTO trading_accounts (name, currency, initial_balance, balance, equity, day_start_at,
                                  day_start_equity, halted, ticked_to_ms, version)
    VALUES ('paper', 'USDT', 10000, 10000, 10100, CAST(:start AS timestamptz), 10000, false, 0, 0)
    """,
    """
    INSERT INTO order_intents (client_order_id, symbol, minute, model_version, direction, confidence,
                               entry_price, status, reason, created_at, updated_at)
    SELECT 'c' || k || '-' || j, 'SYM' || lpad(j::text, 4, '0') || '/USDT:USDT',
           CAST(:start AS timestamptz) + k * interval '1 minute',
           'v1', 'LONG', 0.6, 100,
           (ARRAY['filled', 'rejected', 'rejected', 'expired'])[1 + j % 4],
           CASE WHEN j % 4 IN (1, 2) THEN 'cooldown: entered recently' END,
           CAST(:settled AS timestamptz), CAST(:settled AS timestamptz)
    FROM generate_series(0, CAST(:minutes AS int) - 1) AS k, generate_series(0, 29) AS j
    """,
    """
    INSERT INTO trading_fills (order_id, account, symbol, side, qty, price, fee, realised_pnl, kind,
                               filled_at, created_at)
    SELECT n, 'paper', 'SYM0001/USDT:USDT', 'buy', 1, 100, 0.05, 0, 'entry',
           CAST(:settled AS timestamptz), CAST(:settled AS timestamptz)
    FROM generate_series(1, CAST(:minutes AS int) * 10) AS n
    """,
]


def populate(url: str, symbols: int, minutes: int) -> None:
    settled = datetime.now(UTC) - timedelta(hours=1)  # long committed: the exporter's cursor passes it
    engine = db.get_engine(url)
    params = {"start": START, "symbols": symbols, "settled": settled, "minutes": minutes}
    with engine.begin() as conn:
        conn.execute(text(LEDGER_SQL), params | {"first": 0, "last": minutes - 1})
        conn.execute(text(SIGNALS_SQL), params | {"first": 0, "last": minutes - 1, "created": settled})
        newest_ms = int((datetime.now(UTC) - timedelta(minutes=2)).timestamp() // 60 * 60_000)
        conn.execute(text(CANDLES_SQL), params | {"newest_ms": newest_ms})
        for sql in TRADING_SQL:
            conn.execute(text(sql), params)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))


def add_minute(url: str, symbols: int, k: int) -> None:
    """One more finished minute, written now (so it is not settled yet, as on a live system)."""
    now = datetime.now(UTC)
    params = {"start": START, "symbols": symbols, "settled": now, "first": k, "last": k, "created": now}
    with db.get_engine(url).begin() as conn:
        conn.execute(text(LEDGER_SQL), params)
        conn.execute(text(SIGNALS_SQL), params)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--minutes", type=int, default=1000)
    parser.add_argument("--steady", type=int, default=30, help="refreshes after one more minute each")
    parser.add_argument("--scrapes", type=int, default=200)
    add_redis_option(parser)
    args = parser.parse_args()
    configure_logging("WARNING")
    with tempfile.TemporaryDirectory() as tmp, scratch_postgres() as url, claim_redis(args.redis_url):
        began = time.perf_counter()
        populate(url, args.symbols, args.minutes)
        print(
            f"populated {args.minutes:,} minutes x {args.symbols} symbols "
            f"({args.minutes * args.symbols:,} signals) in {time.perf_counter() - began:.1f} s"
        )
        settings = Settings(
            database_url=url,
            redis_url=args.redis_url,
            celery={"broker_url": args.redis_url},
            model={"registry_dir": Path(tmp) / "models"},
        )
        exporter = Exporter.from_settings(settings)
        began = time.perf_counter()
        up = exporter.refresh()
        first = time.perf_counter() - began
        assert all(up.values()), up
        print(f"first refresh (reads the whole ledger once): {first * 1000:.0f} ms")

        steady = []
        for k in range(args.minutes, args.minutes + args.steady):
            add_minute(url, args.symbols, k)
            began = time.perf_counter()
            exporter.refresh()
            steady.append(time.perf_counter() - began)
        print(f"refresh after each new minute of {args.symbols} signals: {summary(steady)}")

        # A long interval: the loop's own refreshes stay out of the scrape timings.
        server, loop = serve(exporter, "127.0.0.1", 0, interval_s=3600)
        host, port = server.server_address[:2]
        scrapes, size, series = [], 0, 0
        for _ in range(args.scrapes):
            began = time.perf_counter()
            with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
                body = resp.read()
            scrapes.append(time.perf_counter() - began)
            size = len(body)
            series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
        server.shutdown()
        loop.stop()
        exporter.close()
        print(f"HTTP scrape of /metrics ({size:,} bytes, {series} series): {summary(scrapes)}")
        print("budget: scrape <= 100 ms")


if __name__ == "__main__":
    main()
