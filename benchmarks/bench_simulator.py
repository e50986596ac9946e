"""Throughput of the market simulator: ``python benchmarks/bench_simulator.py [--symbols 50 --days 7]``.

``--effect momentum`` measures the older momentum market instead of the default switching one.

"Cold" uses a fresh ``SimulatedMarket`` (empty caches, as in a new worker process); "warm" repeats
the same requests on the same instance, where only the market-wide per-day structure is cached and
every symbol-day is still generated from scratch.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from core.timegrid import MINUTE_MS, parse_minute
from data.sources.simulator import EFFECTS, Effect, SimulatedMarket

START = parse_minute("2024-01-01T00:00:00Z")


def timed(fn: Callable[[], int], repeat: int) -> tuple[float, int]:
    """Median seconds of ``repeat`` runs, and the candles one run returned."""
    times: list[float] = []
    n = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), n


def report(label: str, seconds: float, candles: int) -> None:
    print(f"{label:<44} {candles:>9,} candles {seconds * 1e3:>9.1f} ms {candles / seconds:>13,.0f} candles/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--minutes", type=int, default=5000, help="range of the single-symbol case")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--effect", choices=EFFECTS, default="switching")
    args = parser.parse_args()
    effect: Effect = args.effect

    def fresh() -> SimulatedMarket:
        return SimulatedMarket(effect=effect)

    end = START + args.days * 1440 * MINUTE_MS

    def panel(market: SimulatedMarket) -> int:
        return sum(len(market.fetch(s, START, end)) for s in market.list_symbols()[: args.symbols])

    def one(market: SimulatedMarket, symbol: str) -> int:
        return len(market.fetch(symbol, START, START + args.minutes * MINUTE_MS))

    print(f"effect={effect}")
    label = f"{args.symbols} symbols x {args.days} days"
    report(f"{label}, cold", *timed(lambda: panel(fresh()), args.repeat))
    warm = fresh()
    panel(warm)
    report(f"{label}, warm", *timed(lambda: panel(warm), args.repeat))

    label = f"1 symbol x {args.minutes} minutes"
    report(f"{label}, cold", *timed(lambda: one(fresh(), "SIM0123/USDT:USDT"), args.repeat * 4))
    warm = fresh()
    one(warm, "BTC/USDT:USDT")
    report(f"{label}, warm (other symbol)", *timed(lambda: one(warm, "SIM0123/USDT:USDT"), args.repeat * 4))


if __name__ == "__main__":
    main()
