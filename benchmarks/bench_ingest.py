"""Candle-store benchmark: backfill throughput into PostgreSQL and the 500-symbol model-input read.

Run: ``.venv/bin/python -m benchmarks.bench_ingest`` (needs the local PostgreSQL; uses a scratch
schema). Targets (issue 2): backfill >= 50,000 candles/s; model input for 500 symbols <= 1 s.
"""

from __future__ import annotations

import argparse

from benchmarks.common import analyze, scratch_postgres, summary, timed
from core.logging import configure_logging
from core.timegrid import floor_minute, now_ms
from data import db
from data.bars import BarPanel
from data.ingest import Ingestor
from data.sources.simulator import SimulatedMarket
from data.store import CandleStore
from data.validation import ValidationPolicy

CONTEXT_BARS = 96
MAX_WARMUP_BARS = 200


def warmup_bars() -> int:
    try:
        from ml.features import FEATURE_SPEC

        return int(FEATURE_SPEC.warmup)
    except ImportError:
        return MAX_WARMUP_BARS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--symbols", type=int, default=50, help="symbols in the backfill run")
    parser.add_argument("--days", type=float, default=7.0, help="days in the backfill run")
    parser.add_argument("--read-symbols", type=int, default=500, help="symbols in the read run")
    parser.add_argument("--bar-minutes", type=int, default=15)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    configure_logging("WARNING")

    market = SimulatedMarket(seed=7, universe_size=max(args.symbols, args.read_symbols))
    end = floor_minute(now_ms())
    with scratch_postgres() as url:
        store = CandleStore(db.get_engine(url))
        ingestor = Ingestor(store, market, ValidationPolicy())
        names = market.list_symbols()[: args.symbols]
        report = ingestor.backfill(names, args.days, end_ms=end)
        fetch_validate_write = report.inserted / report.elapsed_s
        print(
            f"backfill {args.symbols} symbols x {args.days:g} days into PostgreSQL: "
            f"{report.inserted:,} candles "
            f"in {report.elapsed_s:.2f} s = {fetch_validate_write:,.0f} candles/s end to end "
            "(simulate + validate + write; target >= 50,000)"
        )
        again = ingestor.backfill(names, args.days, end_ms=end)
        print(f"second backfill (idempotent): {again.inserted} new candles in {again.elapsed_s:.2f} s")

    n_bars = CONTEXT_BARS + warmup_bars()
    minutes = n_bars * args.bar_minutes
    with scratch_postgres() as url:
        store = CandleStore(db.get_engine(url))
        ingestor = Ingestor(store, market, ValidationPolicy())
        names = market.list_symbols()[: args.read_symbols]
        # A day more than the window, so that the read is not a whole-table scan.
        report = ingestor.backfill(names, minutes / 1440 + 1, end_ms=end)
        analyze(url, "raw_market_data")
        print(
            f"loaded {report.inserted:,} candles for {len(names)} symbols "
            f"({report.inserted / report.elapsed_s:,.0f} candles/s)"
        )
        anchor = end

        def read(symbols: list[str]) -> BarPanel:
            return store.read_bars(market.name, symbols, anchor, n_bars, args.bar_minutes)

        assert read(names).complete.all(), "benchmark data should have no gaps"
        samples = timed(lambda: read(names), args.repeat)
        print(
            f"model input read, {len(names)} symbols x {n_bars} bars of {args.bar_minutes} min "
            f"({len(names) * minutes:,} candles aggregated in SQL): {summary(samples)} (target <= 1000 ms)"
        )
        one = timed(lambda: read(names[:1]), args.repeat)
        print(f"model input read, 1 symbol: {summary(one)}")


if __name__ == "__main__":
    main()
