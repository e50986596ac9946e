"""The ml-signal MCP server against a real deployment's database (one replayed minute on PostgreSQL,
``tests.support.mcp``): every tool's answer compared with what the database holds, every bad input a
clear tool error; ``run_minute`` only with writes, audited, through the embedded runtime's real
workers, to the real Redis broker (over stdio and HTTP), and as a bounded error when the broker is
not there."""

from __future__ import annotations

import asyncio
import getpass
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import redis
from mcp import Client
from mcp.server.mcpserver import MCPServer
from sqlalchemy import select

from core.settings import Settings
from core.timegrid import dt_to_ms
from data import db
from data.models import McpAudit, MlPrediction, PipelineRun, SignalRecord
from mcp_servers.domain import Domain
from mcp_servers.signal_server import build
from pipeline.clock import minute_dt
from tests.conftest import REDIS_URL
from tests.support.mcp import (
    TOKENS,
    McpDeployment,
    bearer_transport,
    free_port,
    http_server,
    mcp_deployment,  # noqa: F401  (the fixture)
    stdio_parameters,
)
from worker.queues import Queue

pytestmark = [pytest.mark.integration, pytest.mark.slow]

READ_TOOLS = {"latest_signals", "signal_history", "explain_signal", "pipeline_status", "signal_quality"}
# The subprocess servers send run_minute to the tests' Redis database (never db 0) and wait briefly.
SUBPROCESS_ENV = {
    "MLSIG_CELERY__BROKER_URL": REDIS_URL,
    "MLSIG_CELERY__RESULT_BACKEND": REDIS_URL,
    "MLSIG_MCP__RUN_MINUTE_WAIT_SECONDS": "1",
}


@pytest.fixture(scope="module")
def deployment(mcp_deployment: McpDeployment) -> McpDeployment:  # noqa: F811
    mcp_deployment.extra_env.update(SUBPROCESS_ENV)
    return mcp_deployment


def with_mcp(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update={"mcp": settings.mcp.model_copy(update=changes)})


def server(settings: Settings) -> MCPServer:
    return build(settings, Domain(settings))


def call(target: Any, name: str, args: dict[str, Any] | None = None) -> Any:
    async def go() -> Any:
        async with Client(target) as client:
            return await client.call_tool(name, args or {})

    return asyncio.run(go())


def text_of(result: Any) -> str:
    """The text of a tool result's first content block (an error's message)."""
    return str(result.content[0].text)


def ok(target: Any, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    result = call(target, name, args)
    assert not result.is_error, text_of(result)
    doc: dict[str, Any] = result.structured_content
    return doc


def error(target: Any, name: str, args: dict[str, Any]) -> str:
    result = call(target, name, args)
    assert result.is_error, result.structured_content
    text = text_of(result)
    assert "Traceback" not in text, text
    assert "internal error" not in text, text
    return text


def signals_in_db(d: McpDeployment, **where: Any) -> list[SignalRecord]:
    conditions = [getattr(SignalRecord, k) == v for k, v in where.items()]
    from sqlalchemy.orm import Session

    with Session(db.get_engine(d.settings.database_url)) as session:
        return list(session.scalars(select(SignalRecord).where(*conditions).order_by(SignalRecord.symbol)))


def audit_rows(d: McpDeployment, tool: str = "run_minute") -> list[McpAudit]:
    from sqlalchemy.orm import Session

    stmt = select(McpAudit).where(McpAudit.server == "ml-signal", McpAudit.tool == tool).order_by(McpAudit.id)
    with Session(db.get_engine(d.settings.database_url)) as session:
        return list(session.scalars(stmt))


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the tools and the write gate --------------------------------------------------------------------
def test_read_tools_only_without_the_write_flag(deployment: McpDeployment) -> None:
    async def names(s: Settings) -> dict[str, Any]:
        async with Client(server(s)) as client:
            return {t.name: t for t in (await client.list_tools()).tools}

    read_only = asyncio.run(names(deployment.settings))
    assert set(read_only) == READ_TOOLS
    for tool in read_only.values():
        assert tool.output_schema is not None, tool.name
        assert tool.annotations is not None
        assert tool.annotations.read_only_hint is True
        assert tool.description
        assert "\n" in tool.description
    writable = asyncio.run(names(deployment.with_writes()))
    assert set(writable) == READ_TOOLS | {"run_minute"}
    run = writable["run_minute"]
    assert run.annotations is not None
    assert run.annotations.read_only_hint is False
    assert run.output_schema is not None


# -- latest_signals ----------------------------------------------------------------------------------
def test_latest_signals_are_the_champions_newest_minute(deployment: McpDeployment) -> None:
    d = deployment
    srv = server(d.settings)
    stored = {r.symbol: r for r in signals_in_db(d, model_version=d.champion, minute=minute_dt(d.minute))}
    assert set(stored) == set(d.symbols)

    doc = ok(srv, "latest_signals")
    assert doc["model_version"] == d.champion
    assert doc["minute"] == d.minute
    assert doc["matched"] == doc["returned"] == len(d.symbols)
    assert not doc["truncated"]
    assert doc["directions"] == {"SHORT": len(d.symbols)}  # the champion's signals are all SHORT
    confidences = [s["confidence"] for s in doc["signals"]]
    assert confidences == sorted(confidences, reverse=True)
    for row in doc["signals"]:
        record = stored[row["symbol"]]
        assert row["direction"] == record.direction == "SHORT"
        assert row["confidence"] == pytest.approx(record.confidence)
        assert row["entry_price"] == pytest.approx(record.entry_price)
        assert row["stop_loss"] == pytest.approx(record.stop_loss)
        assert row["take_profit"] == pytest.approx(record.take_profit)
        assert row["stop_loss"] > row["entry_price"] > row["take_profit"]  # a SHORT's stop is above
        assert row["returns"] == pytest.approx(record.returns)
        assert list(row["returns"]) == ["15m", "1h", "4h", "12h"]

    # Filters, in SQL: direction, confidence, symbols (any case), limit.
    assert ok(srv, "latest_signals", {"direction": "LONG"})["returned"] == 0
    assert ok(srv, "latest_signals", {"direction": "ACTIONABLE"})["returned"] == len(d.symbols)
    cut = sorted(r.confidence for r in stored.values())[len(stored) // 2]
    above = ok(srv, "latest_signals", {"min_confidence": cut})
    assert {s["symbol"] for s in above["signals"]} == {s for s, r in stored.items() if r.confidence >= cut}
    one = ok(srv, "latest_signals", {"symbols": [d.symbols[1].lower()]})
    assert [s["symbol"] for s in one["signals"]] == [d.symbols[1]]
    assert one["notes"] == []
    capped = ok(srv, "latest_signals", {"limit": 2})
    assert capped["returned"] == 2
    assert capped["matched"] == len(d.symbols)
    assert capped["truncated"]
    # A known symbol filtered out is a note, not an error.
    filtered = ok(srv, "latest_signals", {"symbols": [d.symbols[0]], "direction": "LONG"})
    assert filtered["returned"] == 0
    assert d.symbols[0] in filtered["notes"][0]

    # The challenger's newest minute, whatever the database holds of it.
    shadow = signals_in_db(d, model_version=d.challenger)
    challenger = ok(srv, "latest_signals", {"model": "challenger"})
    assert challenger["model_version"] == d.challenger
    assert challenger["returned"] == len(
        [r for r in shadow if r.minute == max(x.minute for x in shadow)] if shadow else []
    )
    assert all(s["direction"] == "LONG" for s in challenger["signals"])


def test_latest_signals_bad_input(deployment: McpDeployment) -> None:
    d = deployment
    srv = server(d.settings)
    text = error(srv, "latest_signals", {"symbols": [d.symbols[0], "NOPE/USDT:USDT"]})
    assert "unknown symbol: NOPE/USDT:USDT" in text
    assert d.symbols[0] in text
    assert "'LONG', 'SHORT', 'NEUTRAL' or 'ACTIONABLE'" in error(srv, "latest_signals", {"direction": "UP"})
    assert "less than or equal to 1" in error(srv, "latest_signals", {"min_confidence": 1.5})
    assert "mcp.max_rows" in error(srv, "latest_signals", {"limit": d.settings.mcp.max_rows + 1})
    text = error(srv, "latest_signals", {"model": "v-none"})
    assert "unknown model version 'v-none'" in text
    assert d.champion in text
    assert "at least one symbol" in error(srv, "latest_signals", {"symbols": []})
    narrow = server(with_mcp(d.settings, max_symbols=2))
    assert "at most 2 (mcp.max_symbols)" in error(narrow, "latest_signals", {"symbols": d.symbols[:3]})


# -- signal_history ----------------------------------------------------------------------------------
def test_signal_history_of_a_symbol(deployment: McpDeployment) -> None:
    d = deployment
    from pipeline.signal_store import SignalStore

    # Two rows of other versions: one beside the champion's in the replayed minute (a shadow row: not
    # served), one in an older minute the ledger has no row for (served unknown).
    symbol = d.symbols[3]
    champion_row = signals_in_db(d, symbol=symbol, model_version=d.champion, minute=minute_dt(d.minute))[0]
    older = minute_dt(d.minute) - timedelta(minutes=30)
    SignalStore(db.get_engine(d.settings.database_url)).upsert(
        [
            {
                "symbol": symbol,
                "minute": minute,
                "model_version": version,
                "bar_end": minute,
                "direction": "NEUTRAL",
                "confidence": 0.31,
                "probabilities": {},
                "returns": {"15m": 0.0, "1h": 0.0001},
                "risk": {},
                "entry_price": 1.5,
                "stop_loss": None,
                "take_profit": None,
                "expires_at": minute + timedelta(minutes=15),
                "schema_version": 1,
            }
            for minute, version in ((older, "history-test"), (minute_dt(d.minute), "shadow-test"))
        ],
        [],
    )
    srv = server(d.settings)
    until = iso(minute_dt(d.minute) + timedelta(minutes=1))
    since = iso(minute_dt(d.minute) - timedelta(hours=1))
    doc = ok(srv, "signal_history", {"symbol": symbol, "since": since, "until": until})
    in_db = [r for r in signals_in_db(d, symbol=symbol) if since <= iso(r.minute) < until]
    assert doc["returned"] == len(in_db) >= 2
    assert not doc["truncated"]
    minutes = [s["minute"] for s in doc["signals"]]
    assert minutes == sorted(minutes, reverse=True)
    newest = doc["signals"][0]
    assert newest["model_version"] == d.champion
    assert newest["served"] is True
    assert newest["confidence"] == pytest.approx(champion_row.confidence)
    assert newest["entry_price"] == pytest.approx(champion_row.entry_price)
    shadow = next(s for s in doc["signals"] if s["model_version"] == "shadow-test")
    assert shadow["served"] is False
    assert shadow["minute"] == d.minute
    old = next(s for s in doc["signals"] if s["model_version"] == "history-test")
    assert old["served"] is None
    assert old["direction"] == "NEUTRAL"
    assert old["minute"] == iso(older)

    assert ok(srv, "signal_history", {"symbol": symbol, "since": since, "until": until, "model": "champion"})[
        "returned"
    ] == len([r for r in in_db if r.model_version == d.champion])
    capped = ok(srv, "signal_history", {"symbol": symbol.lower(), "since": since, "until": until, "limit": 1})
    assert capped["symbol"] == symbol
    assert capped["returned"] == 1
    assert capped["truncated"]
    # The default range is the last day.
    assert ok(srv, "signal_history", {"symbol": symbol})["returned"] == len(
        [r for r in signals_in_db(d, symbol=symbol) if r.minute >= datetime.now(UTC) - timedelta(days=1)]
    )


def test_signal_history_bad_input(deployment: McpDeployment) -> None:
    d = deployment
    srv = server(d.settings)
    assert "unknown symbol: DOGE/EUR" in error(srv, "signal_history", {"symbol": "DOGE/EUR"})
    text = error(
        srv,
        "signal_history",
        {"symbol": d.symbols[0], "since": "2026-12-04T09:00Z", "until": "2026-12-04T08:00Z"},
    )
    assert "must be before" in text
    text = error(
        srv,
        "signal_history",
        {"symbol": d.symbols[0], "since": "2026-10-01T00:00Z", "until": "2026-12-01T00:00Z"},
    )
    assert "longer than the limit of 31 days (mcp.max_range_days)" in text
    assert "not an ISO 8601 time" in error(
        srv, "signal_history", {"symbol": d.symbols[0], "since": "yesterday"}
    )
    assert "mcp.max_rows" in error(srv, "signal_history", {"symbol": d.symbols[0], "limit": 5000})
    assert "unknown model version" in error(srv, "signal_history", {"symbol": d.symbols[0], "model": "v0"})


# -- explain_signal ----------------------------------------------------------------------------------
def test_explain_signal_decodes_the_stored_outputs(deployment: McpDeployment) -> None:
    d = deployment
    from sqlalchemy.orm import Session

    from data.store import CandleStore
    from ml.features import FEATURE_SPEC
    from ml.features.live import build_live_batch
    from ml.registry import Registry

    symbol = d.symbols[0]
    engine = db.get_engine(d.settings.database_url)
    record = signals_in_db(d, symbol=symbol, model_version=d.champion, minute=minute_dt(d.minute))[0]
    with Session(engine) as session:
        prediction = session.scalars(
            select(MlPrediction).where(
                MlPrediction.symbol == symbol,
                MlPrediction.minute == minute_dt(d.minute),
                MlPrediction.model_version == d.champion,
            )
        ).one()

    started = time.perf_counter()
    doc = ok(
        server(d.settings), "explain_signal", {"symbol": symbol, "minute": d.minute.replace(":00Z", "Z")}
    )
    assert time.perf_counter() - started < 10
    assert doc["model_version"] == d.champion
    assert doc["served"] is True
    assert doc["minute"] == d.minute
    assert doc["notes"] == []
    assert list(doc["outputs"].values()) == pytest.approx(prediction.outputs)
    assert len(doc["outputs"]) == 20
    assert "logit_h4_short" in doc["outputs"]
    assert doc["temperature"] == pytest.approx(prediction.temperature)
    assert (doc["direction"], doc["entry_price"]) == (record.direction, pytest.approx(record.entry_price))
    assert (doc["stop_loss"], doc["take_profit"]) == (
        pytest.approx(record.stop_loss),
        pytest.approx(record.take_profit),
    )
    # The decoded probabilities are the stored signal's, horizon by horizon.
    for h in doc["horizons"]:
        stored = record.probabilities[h["horizon"]]
        assert (h["p_long"], h["p_short"], h["p_flat"]) == pytest.approx(
            (stored["long"], stored["short"], stored["flat"])
        )
        assert h["predicted_return"] == pytest.approx(record.returns[h["horizon"]])
    decision = doc["decision"]
    assert decision["direction"] == decision["stored_direction"] == "SHORT"
    assert decision["consistent"]
    assert decision["proposed"] == "SHORT"
    assert decision["primary_horizon"] == "1h"
    assert [c["rule"] for c in decision["checks"]] == ["edge", "agreement", "confidence"]
    assert all(c["passed"] for c in decision["checks"])
    assert decision["confidence"] == pytest.approx(record.confidence)
    assert decision["edge"] == pytest.approx(abs(record.returns["1h"]) - decision["round_trip_cost"])
    assert decision["reason"].startswith("SHORT: all three conditions hold")

    # The window's newest row, as the feature step computes and scales it.
    features = doc["features"]
    assert features["bar_end"] == iso(record.bar_end)
    assert features["bars"] == FEATURE_SPEC.context
    top = features["top"]
    assert len(top) == 10
    magnitudes = [abs(f["scaled"]) for f in top]
    assert magnitudes == sorted(magnitudes, reverse=True)
    scaler = Registry(d.settings.model.registry_dir).load(d.champion).scaler
    panel = CandleStore(engine).read_bars(
        "simulator", [symbol], dt_to_ms(minute_dt(d.minute)), FEATURE_SPEC.window, d.settings.data.bar_minutes
    )
    newest = build_live_batch(panel, scaler).tensor[0, -1]
    expected = sorted(np.abs(newest).tolist(), reverse=True)[:10]
    assert magnitudes == pytest.approx(expected, abs=1e-6)
    for f in top:
        assert f["scaled"] == pytest.approx(float(newest[FEATURE_SPEC.names.index(f["name"])]), abs=1e-6)

    # Stricter rules now (a 10 % edge margin): the same outputs decode NEUTRAL, and the edge is why.
    strict = d.settings.model_copy(
        update={"decoding": d.settings.decoding.model_copy(update={"edge_margin_bps": 1000.0})}
    )
    neutral = ok(server(strict), "explain_signal", {"symbol": symbol, "minute": d.minute, "top_features": 3})
    decision = neutral["decision"]
    assert decision["direction"] == "NEUTRAL"
    assert decision["stored_direction"] == "SHORT"
    assert not decision["consistent"]
    assert decision["edge_margin"] == pytest.approx(0.1)
    assert [c["rule"] for c in decision["checks"] if not c["passed"]] == ["edge"]
    assert decision["reason"].startswith("NEUTRAL: the proposed SHORT fails edge")
    assert any("rules" in n for n in neutral["notes"])
    assert len(neutral["features"]["top"]) == 3


def test_explain_signal_bad_input(deployment: McpDeployment) -> None:
    d = deployment
    srv = server(d.settings)
    symbol = d.symbols[0]
    text = error(srv, "explain_signal", {"symbol": "NOPE/USDT:USDT", "minute": d.minute})
    assert "unknown symbol: NOPE/USDT:USDT" in text
    earlier = iso(minute_dt(d.minute) - timedelta(hours=1))
    text = error(srv, "explain_signal", {"symbol": symbol, "minute": earlier})
    assert f"no signal of {symbol} at {earlier[:16]}Z" in text
    assert f"after: {d.minute[:16]}Z" in text
    assert "not an ISO 8601 time" in error(srv, "explain_signal", {"symbol": symbol, "minute": "8 o'clock"})
    assert "unknown model version" in error(
        srv, "explain_signal", {"symbol": symbol, "minute": d.minute, "model": "v9"}
    )
    if not signals_in_db(d, symbol=symbol, model_version=d.challenger, minute=minute_dt(d.minute)):
        text = error(srv, "explain_signal", {"symbol": symbol, "minute": d.minute, "model": "challenger"})
        assert f"no signal of {d.challenger}" in text
        assert d.champion in text
    assert "less than or equal to 50" in error(
        srv, "explain_signal", {"symbol": symbol, "minute": d.minute, "top_features": 500}
    )


# -- pipeline_status ---------------------------------------------------------------------------------
def test_pipeline_status_is_the_ledger(deployment: McpDeployment) -> None:
    d = deployment
    from sqlalchemy.orm import Session

    with Session(db.get_engine(d.settings.database_url)) as session:
        runs = list(session.scalars(select(PipelineRun).order_by(PipelineRun.minute.desc()).limit(5)))
    doc = ok(server(d.settings), "pipeline_status", {"minutes": 5})
    assert doc["champion"] == d.champion
    assert doc["returned"] == len(runs) >= 1
    assert [m["minute"] for m in doc["minutes"]] == [iso(r.minute) for r in runs]
    row = next(m for m in doc["minutes"] if m["minute"] == d.minute)
    run = next(r for r in runs if iso(r.minute) == d.minute)
    assert (row["status"], row["model_version"]) == ("done", d.champion) == (run.status, run.model_version)
    assert row["signals_made"] == run.signals_made == len(d.symbols)
    assert row["failed"] == 0
    assert row["timings"]["minute_total"] == pytest.approx(run.timings["minute_total"])
    assert sum(doc["statuses"].values()) == doc["returned"]

    srv = server(d.settings)
    assert "greater than or equal to 1" in error(srv, "pipeline_status", {"minutes": 0})
    assert "mcp.max_rows" in error(srv, "pipeline_status", {"minutes": 100_000})


# -- signal_quality ----------------------------------------------------------------------------------
def test_signal_quality_is_the_cli_report(deployment: McpDeployment) -> None:
    d = deployment
    from ml.evaluation import json_ready
    from quality.live import live_quality
    from quality.report import without_series
    from trading.accounts import halt_state

    engine = db.get_engine(d.settings.database_url)
    srv = server(d.settings)
    doc = ok(srv, "signal_quality")
    expected = json_ready(
        without_series(live_quality(engine, d.settings, d.champion, horizons=(1, 4, 16, 48)))
    )
    assert doc["model_version"] == d.champion
    assert doc["horizons"] == expected["horizons"]
    assert set(doc["windows"]) == {"last_signals", "last_days"}
    assert doc["trading"] == {
        "halted": halt_state(engine, d.settings)[0],
        "reason": halt_state(engine, d.settings)[1],
    }

    since = iso(minute_dt(d.minute) - timedelta(hours=2))
    one = ok(srv, "signal_quality", {"model": "challenger", "horizon": "1h", "since": since})
    assert one["model_version"] == d.challenger
    assert [h["horizon_bars"] for h in one["horizons"]] == [4]
    assert set(one["windows"]) == {"since"}
    assert "series" not in one["horizons"][0]["since"]["ic"]

    assert "'15m', '1h', '4h' or '12h'" in error(srv, "signal_quality", {"horizon": "2h"})
    text = error(srv, "signal_quality", {"model": "retired-v1"})
    assert "unknown model version 'retired-v1'" in text
    assert "no scored signals" in text
    assert "not an ISO 8601 time" in error(srv, "signal_quality", {"since": "last week"})
    long_ago = iso(datetime.now(UTC) - timedelta(days=100))
    assert "mcp.max_range_days" in error(srv, "signal_quality", {"since": long_ago})


# -- run_minute --------------------------------------------------------------------------------------
def test_run_minute_bad_input_sends_nothing(deployment: McpDeployment) -> None:
    d = deployment
    srv = server(d.with_writes())
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    assert "replay needs a minute" in error(srv, "run_minute", {"replay": True})
    assert "is in the future" in error(srv, "run_minute", {"minute": iso(now + timedelta(minutes=5))})
    text = error(srv, "run_minute", {"minute": iso(now - timedelta(hours=1))})
    assert "pass replay=true" in text
    assert "already has a run (status done)" in error(srv, "run_minute", {"minute": d.minute, "replay": True})
    assert "not an ISO 8601 time" in error(srv, "run_minute", {"minute": "soon"})
    assert "not on the minute grid" in error(
        srv, "run_minute", {"minute": "2026-12-04T08:00:30Z", "replay": True}
    )
    rows = audit_rows(d)[-6:]
    assert [r.ok for r in rows] == [False] * 6
    assert rows[0].arguments == {"minute": None, "replay": True}
    assert "replay needs a minute" in (rows[0].error or "")
    assert all(r.caller == f"stdio:{getpass.getuser()}" and r.result is None for r in rows)


def test_run_minute_runs_a_minute_on_the_embedded_workers(deployment: McpDeployment) -> None:
    d = deployment
    from worker.app import app
    from worker.embedded import embedded_runtime

    minute = iso(minute_dt(d.minute) - timedelta(minutes=1))
    settings = d.with_writes()
    with embedded_runtime(settings, beat=False):
        doc = ok(server(settings), "run_minute", {"minute": minute, "replay": True})
        # Let the minute's order tasks end before the workers stop.
        published = app.AsyncResult(doc["outcome"]["result_id"]).get(timeout=60)
        for task_id in [*published["order_tasks"], published["tick_task"]]:
            app.AsyncResult(task_id).get(timeout=60)
    assert doc["status"] == "done"
    assert doc["minute"] == minute
    assert doc["replay"] is True
    assert doc["outcome"]["status"] == "running"
    assert doc["outcome"]["minute"] == minute
    assert doc["broker"].startswith("memory://")
    assert doc["run"]["status"] == "done"
    assert doc["run"]["signals_made"] == len(d.symbols)
    stored = signals_in_db(d, minute=minute_dt(minute), model_version=d.champion)
    assert {r.symbol for r in stored} == set(d.symbols)
    assert doc["waited_seconds"] < settings.mcp.run_minute_wait_seconds

    row = audit_rows(d)[-1]
    assert row.ok
    assert row.error is None
    assert row.caller == f"stdio:{getpass.getuser()}"
    assert row.arguments == {"minute": minute, "replay": True}
    assert row.result is not None
    assert row.result["task_id"] == doc["task_id"]
    assert row.result["status"] == "done"
    assert row.duration_ms > 0


def control_messages(task_id: str) -> list[str]:
    """The messages of ``task_id`` in the tests' Redis broker's control queue."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        queued: list[str] = client.lrange(Queue.CONTROL.value, 0, -1)  # type: ignore[assignment]
        return [raw for raw in queued if json.loads(raw)["headers"].get("id") == task_id]
    finally:
        client.close()


@pytest.fixture
def sent_tasks() -> Iterator[list[str]]:
    """Task ids sent to the tests' Redis broker; their messages are removed afterwards (no worker
    consumes them)."""
    ids: list[str] = []
    yield ids
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        for task_id in ids:
            for raw in control_messages(task_id):
                client.lrem(Queue.CONTROL.value, 0, raw)
    finally:
        client.close()


def test_stdio_server_reads_and_sends_run_minute_to_the_redis_broker(
    deployment: McpDeployment, sent_tasks: list[str]
) -> None:
    d = deployment

    async def session() -> tuple[dict[str, Any], Any, set[str]]:
        async with Client(stdio_parameters("signal", d, allow_write=True)) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            latest = await client.call_tool("latest_signals", {"direction": "SHORT"})
            sent = await client.call_tool("run_minute", {})
            return latest.structured_content, sent, names

    latest, sent, names = asyncio.run(session())
    assert names == READ_TOOLS | {"run_minute"}
    assert latest["minute"] == d.minute
    assert latest["model_version"] == d.champion
    assert not sent.is_error, text_of(sent)
    doc = sent.structured_content
    sent_tasks.append(doc["task_id"])
    # No worker consumes the tests' broker: the task waits in the control queue, as sent.
    assert doc["status"] == "queued"
    assert doc["outcome"] is None
    assert doc["minute"] is None
    assert doc["broker"] == REDIS_URL
    assert "no answer within 1 s" in doc["notes"][0]
    [raw] = control_messages(doc["task_id"])
    message = json.loads(raw)
    assert message["headers"]["task"] == "tasks.pipeline.run_minute"
    row = audit_rows(d)[-1]
    assert row.ok
    assert row.caller == f"stdio:{getpass.getuser()}"
    assert row.arguments == {"minute": None, "replay": False}
    assert row.result is not None
    assert row.result["task_id"] == doc["task_id"]


def test_an_unreachable_broker_is_a_bounded_error(deployment: McpDeployment) -> None:
    d = deployment
    port = free_port()  # nothing listens there
    params = stdio_parameters("signal", d, allow_write=True)
    params.env = {**params.env, "MLSIG_CELERY__BROKER_URL": f"redis://127.0.0.1:{port}/15"}

    async def session() -> Any:
        async with Client(params) as client:
            await client.list_tools()
            began = time.perf_counter()
            result = await client.call_tool("run_minute", {})
            return result, time.perf_counter() - began

    result, seconds = asyncio.run(session())
    assert result.is_error
    text = text_of(result)
    assert f"could not send tasks.pipeline.run_minute to the broker at redis://127.0.0.1:{port}/15" in text
    assert seconds < 20
    row = audit_rows(d)[-1]
    assert not row.ok
    assert row.result is None
    assert "could not send" in (row.error or "")


def test_http_needs_a_token_and_audits_its_client(deployment: McpDeployment, sent_tasks: list[str]) -> None:
    import httpx2

    d = deployment
    with http_server("signal", d, allow_write=True) as url:
        refused = httpx2.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert refused.status_code == 401
        wrong = httpx2.post(
            url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Authorization": "Bearer not-a-token-of-ours-at-all"},
        )
        assert wrong.status_code == 401

        async def session() -> tuple[dict[str, Any], dict[str, Any]]:
            async with Client(bearer_transport(url, TOKENS["ops-agent"])) as client:
                status = await client.call_tool("pipeline_status", {"minutes": 1})
                sent = await client.call_tool("run_minute", {})
                assert not sent.is_error, text_of(sent)
                return status.structured_content, sent.structured_content

        status, sent = asyncio.run(session())
    sent_tasks.append(sent["task_id"])
    assert status["returned"] == 1
    assert status["champion"] == d.champion
    assert sent["status"] == "queued"
    assert len(control_messages(sent["task_id"])) == 1
    row = audit_rows(d)[-1]
    assert row.ok
    assert row.caller == "ops-agent"
    assert row.result is not None
    assert row.result["task_id"] == sent["task_id"]
