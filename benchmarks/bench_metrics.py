"""Metrics exporter benchmark: refresh and scrape with 500 symbols and 1,000 minutes in the ledger.

Run: ``.venv/bin/python -m benchmarks.bench_metrics [--symbols 500] [--minutes 1000] [--scrapes 200]
[--outcome-minutes 120] [--quality-runs 10]``.

A scratch PostgreSQL schema gets, generated server-side: ``--minutes`` finished minutes in the
ledger with per-stage timings (every tenth partial, with two failed symbols), one signal per symbol
and minute (500,000 rows by default), 20 candles per symbol, 30 order intents and 10 fills per
minute and one paper account, and ``--outcome-minutes`` minutes of the signal-quality ledger
(``signal_outcomes``: one resolved row per symbol, minute, horizon (4) and model version (champion
v1 and challenger v2): 480,000 rows by default) and a breaker trip. The exporter then runs as
``mlsignals metrics serve`` runs it (ledger, trading, data, model, quality, and the Redis parts:
queues, heartbeats, stream) and the script prints:

* the first refresh (an exporter starting on a full ledger reads all of it once);
* ``--steady`` refreshes, each after one more finished minute of ``--symbols`` signals: the work
  of each refresh on a running system;
* the quality part (8 windows of the newest ``quality.window_signals`` = 50,000 resolved signals):
  its first computation (every window read whole: an exporter starting), ``--quality-runs``
  computations each after one more scored minute (what a refresh does once per
  ``quality.interval_seconds``), with the exporter process's CPU time, one window read whole again
  (hourly per window), and the part as the refreshes in between run it (index lookups, cached
  figures);
* ``--scrapes`` HTTP scrapes of ``/metrics`` from the real server (what Prometheus waits for),
  with the size of the answer and its number of series.

Budget (issue 14): a scrape <= 100 ms with 500 symbols and 1,000 minutes in the ledger.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client.core import Metric
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


# Resolved outcomes of every (minute, version, horizon, symbol): a market-neutral return, a predicted
# return correlated with it (IC about 0.3), a direction from the prediction, and what the scorer derives.
OUTCOMES_SQL = """
INSERT INTO signal_outcomes (signal_id, symbol, minute, signal_made_at, model_version, horizon_bars, status,
                             direction, actionable, exit_time, entry_price, exit_price, realised_return,
                             neutral_return, realised_class, predicted_return, prob_long, prob_short,
                             prob_flat, correct, net_return, net_return_raw, cost)
SELECT sid, sym, m, m, ver, h, 'resolved', dir, dir <> 'NEUTRAL', m + h * interval '15 minutes', 100,
       100 * (1 + neutral), neutral, neutral,
       CASE WHEN neutral > 0.001 THEN 'LONG' WHEN neutral < -0.001 THEN 'SHORT' ELSE 'FLAT' END,
       pred, pl, ps, 1 - pl - ps,
       CASE dir WHEN 'LONG' THEN neutral > 0 WHEN 'SHORT' THEN neutral < 0 END,
       CASE dir WHEN 'LONG' THEN neutral - 0.0008 WHEN 'SHORT' THEN -neutral - 0.0008 END,
       CASE dir WHEN 'LONG' THEN neutral - 0.0008 WHEN 'SHORT' THEN -neutral - 0.0008 END,
       0.0008
FROM (
  SELECT *, CASE WHEN pred > 0.001 THEN 'LONG' WHEN pred < -0.001 THEN 'SHORT' ELSE 'NEUTRAL' END AS dir
  FROM (
    SELECT ((k * 2 + vi - 1) * CAST(:symbols AS int) + s) AS sid,
           'SYM' || lpad(s::text, 4, '0') || '/USDT:USDT' AS sym,
           CAST(:start AS timestamptz) + k * interval '1 minute' AS m, ver, h,
           n * 0.01 AS neutral, (0.3 * n + e) * 0.01 AS pred, pl, ps
    FROM (
      SELECT k, ver, vi, h, s, random() - 0.5 AS n, random() - 0.5 AS e,
             0.2 + 0.3 * random() AS pl, 0.2 + 0.2 * random() AS ps
      FROM generate_series(CAST(:first AS int), CAST(:last AS int)) AS k,
           unnest(ARRAY['v1', 'v2']) WITH ORDINALITY AS versions(ver, vi),
           unnest(ARRAY[1, 4, 16, 48]) AS horizons(h),
           generate_series(0, CAST(:symbols AS int) - 1) AS s
    ) AS draws
  ) AS returns
) AS rows
"""

TRIP_SQL = """
INSERT INTO quality_events (at, kind, source, model_version, reason, figures)
VALUES (CAST(:settled AS timestamptz), 'trip', 'breaker', 'v1', 'quality_breaker: benchmark', '{}'::jsonb)
"""


def populate_quality(url: str, symbols: int, minutes: int, first: int, *, trip: bool = True) -> None:
    """``minutes`` minutes of outcomes from minute ``first`` on, and one breaker trip."""
    params = {"start": START, "symbols": symbols, "first": first, "last": first + minutes - 1}
    engine = db.get_engine(url)
    with engine.begin() as conn:
        conn.execute(text(OUTCOMES_SQL), params)
        if trip:
            conn.execute(text(TRIP_SQL), {"settled": datetime.now(UTC) - timedelta(hours=1)})
    if trip:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE signal_outcomes"))


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
    parser.add_argument(
        "--outcome-minutes", type=int, default=120, help="minutes of signal outcomes (4 horizons, 2 versions)"
    )
    parser.add_argument(
        "--quality-runs", type=int, default=10, help="computations of the quality figures, a new minute each"
    )
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
        began = time.perf_counter()
        first_outcome = max(0, args.minutes - args.outcome_minutes)
        populate_quality(url, args.symbols, args.outcome_minutes, first_outcome)
        print(
            f"populated {args.outcome_minutes * args.symbols * 8:,} signal outcomes "
            f"({args.outcome_minutes} minutes x {args.symbols} symbols x 4 horizons x 2 versions) "
            f"in {time.perf_counter() - began:.1f} s"
        )
        models = Path(tmp) / "models"
        models.mkdir()
        (models / "aliases.json").write_text(json.dumps({"champion": "v1", "challenger": "v2"}))
        settings = Settings(
            database_url=url,
            redis_url=args.redis_url,
            celery={"broker_url": args.redis_url},
            model={"registry_dir": models},
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
        quality_part(url, exporter, args.quality_runs, args.symbols, args.minutes)

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


def quality_part(url: str, exporter: Exporter, runs: int, symbols: int, next_minute: int) -> None:
    """The quality part's costs: its figures computed on a fresh exporter (every window read whole),
    then once per quality.interval_seconds after each newly scored minute (the kept windows and the
    new outcomes), one window read whole again (hourly per window), and the part as the refreshes
    in between run it (index lookups, cached figures)."""
    quality = exporter.quality
    assert quality is not None
    versions = quality.versions()
    now = exporter.clock()

    def computed(at: float) -> tuple[float, float, list[Metric]]:
        wall, cpu = time.perf_counter(), time.process_time()
        families = quality.compute(versions, at)
        return time.perf_counter() - wall, time.process_time() - cpu, families

    quality.reset()
    wall, cpu, families = computed(now)
    windows = [s.value for f in families if f.name == "mlsignals_quality_window_signals" for s in f.samples]
    print(
        f"quality figures, first computation ({len(windows)} windows of {min(windows):,.0f}-"
        f"{max(windows):,.0f} resolved signals, each read whole): wall {wall * 1000:.0f} ms, "
        f"exporter CPU {cpu * 1000:.0f} ms"
    )
    walls, cpus = [], []
    for k in range(runs):
        populate_quality(url, symbols, 1, next_minute + k, trip=False)
        wall, cpu, _ = computed(now + 60 * (k + 1))
        walls.append(wall)
        cpus.append(cpu)
    interval = exporter.settings.quality.interval_seconds
    print(
        f"quality figures after each newly scored minute ({symbols * 8:,} outcomes), once per "
        f"{interval:.0f} s: wall {summary(walls)}; exporter CPU {summary(cpus)} "
        f"(median {statistics.median(cpus) / interval:.2%} of one core)"
    )
    began = time.perf_counter()
    quality.window(versions["champion"], 4, now, whole=True)
    whole = time.perf_counter() - began
    print(
        f"one window read whole again (each window hourly, one per computation at most): "
        f"{whole * 1000:.0f} ms"
    )
    quality.figure_families(versions, now + 60 * runs)  # computed: the next refreshes serve the cache
    cached = []
    for _ in range(30):
        began = time.perf_counter()
        quality.families(now + 60 * runs)  # within the interval of the last computation
        cached.append(time.perf_counter() - began)
    print(f"quality part between computations (index lookups, cached figures): {summary(cached)}")


if __name__ == "__main__":
    main()
