"""REST fallback benchmark: the newest candle of 50 symbols through the exchange gateway.

What a feature task does when the stream has not delivered the just-closed candle: an incremental
sync (``data.ingest.Ingestor.sync`` with ``max_workers = ml_integration.max_parallel``) of symbols
whose store holds every candle up to t-2, so that exactly one page per symbol is fetched. The
exchange is the local Bybit look-alike (tests/fakes/exchange_server.py) answering each kline
request after an injected latency, concurrently as a real server does.

Run: ``.venv/bin/python -m benchmarks.bench_rest`` (PostgreSQL in a scratch schema; ``--sqlite`` for
a temporary SQLite file). Target: <= 1.5 s for 50 symbols at 150 ms (one request after another,
as before the gateway: 50 x 150 ms plus ccxt's throttle, 8.3 s measured).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text

from benchmarks.common import scratch_postgres, summary
from core.logging import configure_logging
from core.settings import Settings
from core.timegrid import MINUTE_MS, floor_minute, now_ms
from data import db
from data.exchange.gateway import make_gateway
from data.ingest import Ingestor
from data.sources.exchange import ExchangeCandleSource
from data.store import CandleStore
from data.validation import ValidationPolicy
from tests.fakes.exchange_server import KLINE_PATH, FakeExchangeServer

TARGET_S = 1.5


@contextmanager
def scratch_sqlite() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        db.upgrade(url)
        try:
            yield url
        finally:
            db.dispose_engines()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--latency-ms", type=float, default=150.0, help="per kline request, at the server")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--history-minutes", type=int, default=60, help="stored before the runs")
    parser.add_argument("--sqlite", action="store_true", help="a temporary SQLite file, not PostgreSQL")
    parser.add_argument(
        "--sequential", action="store_true", help="also time one run with one worker (the old behaviour)"
    )
    args = parser.parse_args()
    configure_logging("WARNING")

    # Pinned mid-minute: twenty runs must not cross a minute boundary.
    forming = floor_minute(now_ms())
    clock = lambda: forming + 30_000  # noqa: E731
    newest = forming - MINUTE_MS
    ids = [f"B{i:03d}USDT" for i in range(args.symbols)]
    server = FakeExchangeServer(symbols=ids, clock=clock)
    server.start()
    storage = scratch_sqlite() if args.sqlite else scratch_postgres()
    try:
        with storage as url:
            settings = Settings(database_url=url, exchange={"api_urls": {"all": server.base_url}})
            parallel = settings.ml_integration.max_parallel
            store = CandleStore(db.get_engine(url))
            gateway = make_gateway(settings)
            source = ExchangeCandleSource(settings.exchange, gateway=gateway, clock=clock)
            policy = ValidationPolicy.from_settings(settings)
            ingestor = Ingestor(store, source, policy, max_workers=parallel, clock=clock)
            names = source.list_symbols()
            # History up to t-2, fetched without latency: only the candle of t-1 is missing.
            ingestor.sync(names, initial_minutes=args.history_minutes, end_ms=newest)
            server.latency_s = args.latency_ms / 1000

            def forget_newest() -> None:
                with store.engine.begin() as conn:
                    conn.execute(
                        text("DELETE FROM raw_market_data WHERE exchange = :e AND open_time = :t"),
                        {"e": source.name, "t": newest},
                    )

            def run(workers: int) -> tuple[float, int, float, int]:
                forget_newest()
                server.clear_requests()
                began = time.perf_counter()
                report = Ingestor(store, source, policy, max_workers=workers, clock=clock).sync(
                    names, initial_minutes=args.history_minutes, end_ms=forming
                )
                elapsed = time.perf_counter() - began
                requests = server.requests(KLINE_PATH)
                if not report.ok or report.inserted != len(names) or len(requests) != len(names):
                    raise RuntimeError(
                        f"expected one new candle and one request per symbol: inserted {report.inserted}, "
                        f"{len(requests)} requests, failed {report.failed}"
                    )
                span = max(r.at for r in requests) - min(r.at for r in requests)
                rate = len(requests) / max(span, 1e-9)
                return elapsed, server.max_in_window(1.0), rate, server.peak_in_flight

            samples, peaks, rates, in_flight = [], [], [], []
            for _ in range(args.repeat):
                elapsed, peak, rate, most = run(parallel)
                samples.append(elapsed)
                peaks.append(peak)
                rates.append(rate)
                in_flight.append(most)
            print(
                f"REST sync of the newest candle, {len(names)} symbols, {args.latency_ms:.0f} ms latency, "
                f"{parallel} workers, {'SQLite' if args.sqlite else 'PostgreSQL'}, limiter "
                f"{settings.exchange.requests_per_second:g}/s burst {settings.exchange.request_burst}"
            )
            print(f"samples (s): {' '.join(f'{s:.3f}' for s in samples)}")
            print(f"sync: {summary(samples)} (target <= {TARGET_S * 1000:.0f} ms)")
            print(
                f"server side: {statistics.median(rates):.0f} kline requests/s while a sync runs (median), "
                f"at most {max(peaks)} in any 1 s window, at most {max(in_flight)} in flight"
            )
            if args.sequential:
                elapsed, _, rate, _ = run(1)
                print(f"one worker (one request after another): {elapsed:.2f} s, {rate:.1f} requests/s")
            gateway.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
