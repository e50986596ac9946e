"""How long ``mlsignals trading flatten`` takes: live against the exchange look-alike, paper on a database.

Run: ``.venv/bin/python -m benchmarks.bench_flatten [--live-positions 10] [--paper-positions 500]
[--rounds 5] [--database-url URL]``.

* **Live**: the local Bybit look-alike (tests/fakes/exchange_server.py) answers every private
  request after 100-300 ms (uniform, seeded), as Bybit does from a nearby region. Each round opens
  ``--live-positions`` positions through ``Trader.execute`` (not timed), then times
  ``Trader.flatten`` from the call to its report: the reconciliations, one reduce-only order per
  position and its look-up. Requests are counted per endpoint from the server's log. The ccxt
  client is one per process and not thread-safe, so the exits go one after another: the time
  grows with the positions and the exchange's latency, which the figures show.
* **Paper**: ``--paper-positions`` positions on scripted candles in a scratch PostgreSQL schema (or
  ``--database-url``); each round times ``Trader.flatten``: the step up to now and the closes, in
  one transaction.

Prints every round and, over the rounds, min / median / max (percentiles only with enough rounds).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from benchmarks.common import scratch_postgres, summary
from core.logging import configure_logging
from data import db
from tests.fakes.exchange_server import running_exchange_server
from tests.support.live_trading import at_market, live_settings
from tests.support.trading import Clock, intent, make_trader, minute, ms, write_candles
from trading.credentials import load_credentials
from trading.executor import Trader, set_halted
from trading.live import LiveBroker

LATENCY_S = (0.1, 0.3)
# No limit on positions or exposure: the benchmark sizes the book, not the risk rules.
UNLIMITED: dict[str, Any] = {
    "max_open_positions": 0,
    "max_exposure_total": 1e9,
    "max_exposure_per_symbol": 1e9,
}


@contextmanager
def database(url: str | None) -> Iterator[str]:
    if url:
        db.upgrade(url)
        yield url
    else:
        with scratch_postgres() as scratch:
            yield scratch


def bench_live(url: str, positions: int, rounds: int) -> list[float]:
    symbols = [f"S{i:03d}USDT" for i in range(positions)]
    samples: list[float] = []
    with running_exchange_server(symbols=symbols, private_latency_s=LATENCY_S) as server:
        settings = live_settings(server, url, timeout_ms=10_000, **UNLIMITED)
        broker = LiveBroker(settings, load_credentials(settings.trading))
        clock = Clock(minute(0) + timedelta(seconds=5))
        trader = make_trader(url, clock, broker, settings)
        try:
            for r in range(rounds):
                clock.now = minute(r) + timedelta(seconds=5)
                for s in symbols:
                    trader.execute(at_market(server, s.removesuffix("USDT") + "/USDT:USDT", r))
                server.clear_requests()
                started = time.perf_counter()
                report = trader.flatten(halt_reason="flatten: benchmark")
                took = time.perf_counter() - started
                if not report.complete or len(report.positions) != positions:
                    raise SystemExit(f"round {r}: the flatten did not close {positions} positions: {report}")
                paths = Counter(req.path.rsplit("/v5/", 1)[-1] for req in server.requests())
                samples.append(took)
                print(
                    f"  live round {r + 1}: {positions} positions closed in {took:.2f} s "
                    f"({took / positions * 1000:.0f} ms each); {sum(paths.values())} requests: "
                    + ", ".join(f"{p} {n}" for p, n in sorted(paths.items())),
                    flush=True,
                )
                set_halted(trader.engine, settings, False)
        finally:
            broker.close()
    return samples


def bench_paper(url: str, positions: int, rounds: int) -> list[float]:
    # Each round trip costs fees and slippage: a large balance and a small risk keep 500 positions
    # per round affordable for every round.
    trader: Trader = make_trader(url, **UNLIMITED, paper_balance=1e9, risk_per_trade=1e-4)
    samples: list[float] = []
    for r in range(rounds):
        base = 3 * r
        trader.clock.now = minute(base) + timedelta(seconds=5)  # type: ignore[attr-defined]
        symbols = [f"P{i:04d}/USDT:USDT" for i in range(positions)]
        for s in symbols:
            trader.execute(intent(s, base, entry=100, stop=98, target=104, version=f"r{r}"))
            write_candles(
                trader, s, [(base, 100.0, 100.5, 99.6, 100.2), (base + 1, 100.2, 100.6, 99.8, 100.3)]
            )
        trader.tick(ms(base + 1))
        trader.clock.now = minute(base + 2) + timedelta(seconds=5)  # type: ignore[attr-defined]
        started = time.perf_counter()
        report = trader.flatten(halt_reason="flatten: benchmark")
        took = time.perf_counter() - started
        if not report.complete or len(report.positions) != positions:
            raise SystemExit(f"round {r}: the flatten did not close {positions} positions: {report}")
        samples.append(took)
        print(f"  paper round {r + 1}: {positions} positions closed in {took * 1000:.0f} ms", flush=True)
        set_halted(trader.engine, trader.settings, False)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--live-positions", type=int, default=10, help="trading.max_open_positions' default")
    parser.add_argument("--paper-positions", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--database-url", default=None, help="default: a scratch PostgreSQL schema")
    args = parser.parse_args()
    configure_logging("WARNING")
    with database(args.database_url) as url:
        print(
            f"live flatten, {args.live_positions} positions, private requests answered after "
            f"{LATENCY_S[0] * 1000:.0f}-{LATENCY_S[1] * 1000:.0f} ms:",
            flush=True,
        )
        live = bench_live(url, args.live_positions, args.rounds)
    with database(args.database_url) as url:
        print(f"paper flatten, {args.paper_positions} positions ({url.split('@')[-1].split('?')[0]}):")
        paper = bench_paper(url, args.paper_positions, args.rounds)
    print(f"live flatten of {args.live_positions} positions: {summary(live, 1.0, 's')}")
    print(f"paper flatten of {args.paper_positions} positions: {summary(paper)}")


if __name__ == "__main__":
    main()
