"""Latency of the ml-signal MCP tools ``latest_signals`` and ``explain_signal`` (issue 16).

    python -m benchmarks.bench_mcp [--symbols 500] [--minutes 5] [--repeat 50] [--database-url URL]

Fills a database (a temporary SQLite file by default; with ``--database-url postgresql+psycopg://…``
a schema of its own in that database, dropped afterwards) with ``--minutes`` minutes of ``--symbols``
simulated symbols' signals and raw predictions, made by the pipeline's own inference step
(``pipeline.steps.inference_step``: decoding and rows as in production) from random outputs of a
real-size untrained champion in a temporary registry, one ledger row per minute, and the candles of
the ``--explained`` symbols whose signals are explained (the feature window is recomputed from
them). Then builds the ml-signal server in memory and times, ``--repeat`` times each:

* ``latest_signals`` of the newest minute, every symbol (budget 50 ms);
* ``explain_signal`` of a signal of that minute (budget 200 ms; the first call, which loads the
  version's scaler and output schema from the registry, is shown on its own);

at three layers: the domain functions alone (``pipeline.signal_queries``, ``pipeline.explain``), the
server's tool call (``MCPServer.call_tool``: argument validation, the tool in a worker thread, the
structured result and its JSON text; no transport), and a round trip through the in-memory MCP
client. Prints n, min, median, p90 (from 20 samples) and max of each; a budget is met when the
server-side p90 (the median below 20 samples) is within it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import common
from benchmarks.common import analyze, sample_stats, timed
from core.logging import configure_logging
from core.settings import Settings
from core.timegrid import MINUTE_MS, floor_minute, now_ms
from data import db
from data.ingest import Ingestor
from data.sources.simulator import SimulatedMarket
from data.store import CandleStore
from data.validation import ValidationPolicy
from ml.features import FEATURE_SPEC
from ml.outputs import ModelOutputs
from ml.registry import Registry
from ml.training import TrainingRecipe
from pipeline.clock import minute_dt
from pipeline.ledger import DONE, RunLedger
from pipeline.publish_service import SIGNAL_SCHEMA_VERSION
from pipeline.signal_store import SignalStore
from pipeline.steps import WindowRef, inference_step
from pipeline.window_store import MemoryWindowStore, window_key

LATEST_BUDGET_S = 0.050
EXPLAIN_BUDGET_S = 0.200
P90_FROM = 20


@contextmanager
def database(url: str | None) -> Iterator[str]:
    """A migrated, empty database: a temporary SQLite file, or a scratch schema of ``url``'s
    PostgreSQL database (dropped afterwards)."""
    if url is None:
        with tempfile.TemporaryDirectory(prefix="bench-mcp-") as tmp:
            sqlite = f"sqlite:///{tmp}/bench.db"
            db.upgrade(sqlite)
            try:
                yield sqlite
            finally:
                db.dispose_engines()
        return
    if not url.startswith("postgresql"):
        raise SystemExit(f"--database-url must be a PostgreSQL URL (got {url!r}); default: a SQLite file")
    common.PG_BASE_URL = url  # scratch_postgres makes its schema in this database
    with common.scratch_postgres() as scratch:
        yield scratch


def register_champion(root: Path) -> tuple[Registry, str]:
    from ml.model.network import build_model
    from tests.support.models import shifted_scaler

    registry = Registry(root)
    torch.manual_seed(0)
    version, _ = registry.register(
        build_model(TrainingRecipe().model), shifted_scaler(7), {"note": "bench_mcp champion"}, {}
    )
    return registry, version


def fill(settings: Settings, registry: Registry, version: str, names: list[str], minutes: list[int]) -> None:
    """Each minute's signals and predictions as the inference step makes them (random outputs of the
    champion's shape), stored as the publish step stores them, and the minute's ledger row."""
    engine = db.get_engine(settings.database_url)
    store, ledger = SignalStore(engine), RunLedger(engine)
    schema = registry.load(version).schema
    rng = np.random.default_rng(11)
    windows = MemoryWindowStore()
    shape = (FEATURE_SPEC.context, FEATURE_SPEC.n_features)
    run_id = "bench-mcp"
    windows.put_many({window_key(run_id, s): np.zeros(shape, dtype=np.float32) for s in names}, 3600)
    n_h = len(schema.horizons)

    def predict(tensor: Any) -> ModelOutputs:
        out = rng.normal(0.0, 1.0, size=(tensor.shape[0], schema.n_outputs))
        out[:, :n_h] = np.tanh(out[:, :n_h] * 0.05)  # returns: tanh outputs
        out[:, -len(schema.risk_names) :] = np.abs(out[:, -len(schema.risk_names) :])  # softplus: >= 0
        return ModelOutputs(version, out.astype(np.float32), 1.0, schema)

    for minute_ms in minutes:
        # The window's newest bar ends at the minute (anchored bars).
        refs = [
            WindowRef(s, True, key=window_key(run_id, s), bar_end_ms=minute_ms, close=100.0 + i)
            for i, s in enumerate(names)
        ]
        result = inference_step(
            refs=refs, windows=windows, predict=predict, settings=settings, minute_ms=minute_ms
        )
        signals: list[dict[str, Any]] = result["signals"]  # type: ignore[assignment]
        predictions: list[dict[str, Any]] = result["predictions"]  # type: ignore[assignment]
        store.upsert(
            [stored_row(r) | {"schema_version": SIGNAL_SCHEMA_VERSION} for r in signals],
            [stored_row(r) for r in predictions],
        )
        when = minute_dt(signals[0]["minute"])
        ledger.claim(when, status=DONE, model_version=version, symbols_asked=len(names))


def stored_row(doc: dict[str, Any]) -> dict[str, Any]:
    """An inference row with its ISO times as datetimes (the signal store takes datetimes)."""
    times = ("minute", "bar_end", "expires_at")
    return {k: minute_dt(v) if k in times and isinstance(v, str) else v for k, v in doc.items()}


def backfill(settings: Settings, market: SimulatedMarket, names: list[str], end_ms: int) -> int:
    """The explained symbols' candles: the model's window (context and warm-up) up to ``end_ms``."""
    minutes = FEATURE_SPEC.window * settings.data.bar_minutes + 60
    store = CandleStore(db.get_engine(settings.database_url))
    report = Ingestor(store, market, ValidationPolicy()).backfill(names, minutes / 1440, end_ms=end_ms)
    assert report.ok, report
    return int(report.inserted)


async def atimed(call: Callable[[], Awaitable[object]], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        began = time.perf_counter()
        await call()
        out.append(time.perf_counter() - began)
    return out


def line(layer: str, samples: list[float]) -> str:
    """``n, min, median, p90 (from 20 samples), max`` in milliseconds."""
    stats = sample_stats(samples)
    cells = [f"n={int(stats['n'])}", f"min {stats['min'] * 1000:.1f}", f"median {stats['median'] * 1000:.1f}"]
    if len(samples) >= P90_FROM:
        cells.append(f"p90 {stats['p90'] * 1000:.1f}")
    cells.append(f"max {stats['max'] * 1000:.1f} ms")
    return f"  {layer:<8}" + ", ".join(cells)


def verdict(samples: list[float], budget_s: float) -> str:
    if len(samples) >= P90_FROM:
        value, name = sample_stats(samples)["p90"], "p90"
    else:
        value, name = statistics.median(samples), "median"
    result = "PASS" if value <= budget_s else "FAIL"
    return f"  budget {budget_s * 1000:.0f} ms server-side: {result} ({name} {value * 1000:.1f} ms)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--minutes", type=int, default=5, help="minutes of signals stored")
    parser.add_argument("--repeat", type=int, default=50, help="timed calls per tool and layer")
    parser.add_argument("--explained", type=int, default=3, help="symbols with candles, explained in turn")
    parser.add_argument(
        "--database-url", default=None, help="a PostgreSQL database (a scratch schema in it); default: SQLite"
    )
    args = parser.parse_args()
    configure_logging("WARNING")

    from mcp import Client
    from mcp.types import CallToolResult

    from mcp_servers.domain import Domain
    from mcp_servers.signal_server import LATEST_LOOKBACK, build
    from pipeline.explain import ArtefactCache, explain_record
    from pipeline.signal_queries import champion_of_minute, newest_minute_signals, prediction_at, signals_at

    market = SimulatedMarket(seed=7, universe_size=args.symbols)
    names = market.list_symbols()[: args.symbols]
    end = floor_minute(now_ms())
    minutes = [end - (args.minutes - i) * MINUTE_MS for i in range(args.minutes)]
    explained = names[: args.explained]
    with database(args.database_url) as url, tempfile.TemporaryDirectory(prefix="bench-mcp-") as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            database_url=url,
            data={"universe_size": args.symbols},
            model={"registry_dir": Path(tmp) / "models", "device": "cpu"},
        )
        registry, champion = register_champion(settings.model.registry_dir)
        began = time.perf_counter()
        candles = backfill(settings, market, explained, end - MINUTE_MS)
        fill(settings, registry, champion, names, minutes)
        print(
            f"{db.get_engine(url).dialect.name}: {args.minutes} minutes x {len(names)} symbols of signals "
            f"and predictions, {candles:,} candles of {len(explained)} explained symbols, "
            f"in {time.perf_counter() - began:.1f} s"
        )
        if url.startswith("postgresql"):
            for table in ("signals", "ml_predictions", "pipeline_runs", "raw_market_data"):
                analyze(url, table)

        domain = Domain(settings)
        server = build(settings, domain)
        engine = domain.engine
        newest = datetime.fromtimestamp(minutes[-1] / 1000, UTC)
        minute_iso = newest.strftime("%Y-%m-%dT%H:%M:%SZ")
        cache = ArtefactCache(registry)

        def latest_domain() -> object:
            since = datetime.now(UTC) - LATEST_LOOKBACK
            found = newest_minute_signals(engine, champion, since=since, limit=settings.mcp.max_rows)
            assert len(found.rows) == len(names), len(found.rows)
            return found

        turn = iter(range(10**9))

        def explain_domain() -> object:
            symbol = explained[next(turn) % len(explained)]
            [record] = signals_at(engine, symbol, newest)
            return explain_record(
                record,
                prediction_at(engine, symbol, newest, record.model_version),
                cache.get(record.model_version),
                store=domain.store,
                exchange=domain.exchange,
                settings=settings,
                served_by=champion_of_minute(engine, newest),
                top=10,
            )

        def explain_args() -> dict[str, Any]:
            return {"symbol": explained[next(turn) % len(explained)], "minute": minute_iso}

        async def through_server() -> dict[str, list[float]]:
            began = time.perf_counter()
            first = await server.call_tool("explain_signal", explain_args())
            cold = time.perf_counter() - began
            assert isinstance(first, CallToolResult), first
            assert not first.is_error, first.content
            doc = first.structured_content or {}
            assert doc["decision"] is not None, doc.get("notes")
            assert doc["features"] is not None, doc.get("notes")
            latest = await server.call_tool("latest_signals", {})
            assert isinstance(latest, CallToolResult), latest
            assert (latest.structured_content or {})["returned"] == len(names)
            return {
                "cold": [cold],
                "latest": await atimed(lambda: server.call_tool("latest_signals", {}), args.repeat),
                "explain": await atimed(
                    lambda: server.call_tool("explain_signal", explain_args()), args.repeat
                ),
            }

        async def through_client() -> dict[str, list[float]]:
            async with Client(server) as client:
                await client.call_tool("latest_signals", {})
                return {
                    "latest": await atimed(lambda: client.call_tool("latest_signals", {}), args.repeat),
                    "explain": await atimed(
                        lambda: client.call_tool("explain_signal", explain_args()), args.repeat
                    ),
                }

        on_server = asyncio.run(through_server())
        on_client = asyncio.run(through_client())
        on_domain = {
            "latest": timed(latest_domain, args.repeat),
            "explain": timed(explain_domain, args.repeat),
        }

        print(f"latest_signals: the newest minute of the champion, {len(names)} signals")
        print(line("domain", on_domain["latest"]))
        print(line("server", on_server["latest"]))
        print(line("client", on_client["latest"]))
        print(verdict(on_server["latest"], LATEST_BUDGET_S))
        print(
            f"explain_signal: one signal of that minute ({len(explained)} symbols in turn), "
            f"window of {FEATURE_SPEC.window} bars recomputed; first call (scaler load) "
            f"{on_server['cold'][0] * 1000:.0f} ms"
        )
        print(line("domain", on_domain["explain"]))
        print(line("server", on_server["explain"]))
        print(line("client", on_client["explain"]))
        print(verdict(on_server["explain"], EXPLAIN_BUDGET_S))
        domain.close()


if __name__ == "__main__":
    main()
