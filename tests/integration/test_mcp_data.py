"""The ml-data MCP server (mcp_servers/data_server.py) through the SDK's own client, against a real
PostgreSQL filled by a replayed minute: every tool's answer compared with what the database holds
(or with an independent computation from it), every bad input refused with a clear message, the
write gate and the audit, and the two real transports (a stdio subprocess, streamable HTTP with and
without a bearer token).

The tests run in file order on one deployment: the read tests first, then the write tests (which
add symbols), then the transports.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest
from mcp import Client
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.orm import Session

from core.settings import Settings
from core.timegrid import MINUTE_MS, floor_minute, iso_minute, now_ms, parse_minute
from data.bars import aggregate_minutes, resample_anchored
from data.models import McpAudit
from data.sources.simulator import SimulatedMarket
from mcp_servers.serving import build
from tests.support.mcp import (
    TOKENS,
    McpDeployment,
    bearer_transport,
    error_text,
    http_server,
    mcp_deployment,  # noqa: F401  (the fixture, used through `deployment`)
    mlsignals_command,
    ok,
    stdio_parameters,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXCHANGE = "simulator"
READ_TOOLS = {"list_symbols", "data_status", "get_candles", "get_bars", "get_features"}
WRITE_TOOLS = {"backfill", "import_file"}
# Symbols the deployment does not hold: the write tests add them.
MARKET = SimulatedMarket().list_symbols()
BACKFILLED, IMPORTED = MARKET[4], MARKET[5]


@pytest.fixture
def deployment(mcp_deployment: McpDeployment) -> McpDeployment:  # noqa: F811  (the fixture's name)
    return mcp_deployment


# -- helpers ---------------------------------------------------------------------------------------
def session(settings: Settings, work: Callable[[Client], Awaitable[Any]]) -> Any:
    """``work(client)`` on a fresh in-memory ml-data server built from ``settings``."""

    async def go() -> Any:
        async with Client(build("data", settings)) as client:
            return await work(client)

    return asyncio.run(go())


def call(settings: Settings, tool: str, args: dict[str, Any]) -> Any:
    return session(settings, lambda c: c.call_tool(tool, args))


def engine_of(d: McpDeployment) -> Engine:
    return create_engine(d.settings.database_url)


def db_candles(d: McpDeployment, symbol: str, start_ms: int, end_ms: int) -> pd.DataFrame:
    """The stored candles, read with plain SQL (not through the store)."""
    stmt = text(
        "SELECT open_time, open, high, low, close, volume, turnover, is_filled FROM raw_market_data "
        "WHERE exchange = :ex AND symbol = :sym AND open_time >= :start AND open_time < :end "
        "ORDER BY open_time"
    )
    engine = engine_of(d)
    with engine.connect() as conn:
        rows = conn.execute(stmt, {"ex": EXCHANGE, "sym": symbol, "start": start_ms, "end": end_ms}).all()
    engine.dispose()
    columns = ["open_time", "open", "high", "low", "close", "volume", "turnover", "is_filled"]
    frame = pd.DataFrame(rows, columns=columns)
    dtypes: dict[str, Any] = {"open_time": "int64", "is_filled": bool} | dict.fromkeys(columns[1:7], float)
    return frame.astype(dtypes)


def db_summary(d: McpDeployment) -> dict[str, tuple[int, int, int, int]]:
    """Per symbol: (candles, first, newest, filled)."""
    stmt = text(
        "SELECT symbol, count(*) AS n, min(open_time) AS first, max(open_time) AS newest, "
        "sum(CASE WHEN is_filled THEN 1 ELSE 0 END) AS filled FROM raw_market_data "
        "WHERE exchange = :ex GROUP BY symbol"
    )
    engine = engine_of(d)
    with engine.connect() as conn:
        out = {
            r.symbol: (int(r.n), int(r.first), int(r.newest), int(r.filled))
            for r in conn.execute(stmt, {"ex": EXCHANGE})
        }
    engine.dispose()
    return out


def audit_rows(d: McpDeployment, tool: str) -> list[McpAudit]:
    engine = engine_of(d)
    with Session(engine) as s:
        rows = list(s.scalars(select(McpAudit).where(McpAudit.tool == tool).order_by(McpAudit.id)))
    engine.dispose()
    return rows


def compare_candles(got: list[dict[str, Any]], expected: pd.DataFrame) -> None:
    assert [c["open_time"] for c in got] == [iso_minute(int(t)) for t in expected["open_time"]]
    for name in ("open", "high", "low", "close", "volume"):
        assert [c[name] for c in got] == expected[name].tolist(), name
    assert [c["filled"] for c in got] == expected["is_filled"].tolist()


STDIO_CALLER = f"stdio:{getpass.getuser()}"


# -- the tools a client sees -----------------------------------------------------------------------
def test_write_tools_exist_only_with_the_flag(deployment: McpDeployment) -> None:
    d = deployment

    async def listing(c: Client) -> tuple[Any, Any, Any]:
        tools = await c.list_tools()
        templates = await c.list_resource_templates()
        refused = await c.call_tool("backfill", {"symbols": [BACKFILLED], "days": 0.01})
        return tools, templates, refused

    tools, templates, refused = session(d.settings, listing)
    by_name = {t.name: t for t in tools.tools}
    assert set(by_name) == READ_TOOLS
    for tool in by_name.values():
        assert tool.annotations is not None, tool.name
        assert tool.annotations.read_only_hint is True, tool.name
        assert tool.output_schema is not None, tool.name
        assert len(tool.description or "") > 80, tool.name
    assert by_name["get_candles"].input_schema["properties"]["limit"]["maximum"] == d.settings.mcp.max_rows
    assert [t.uri_template for t in templates.resource_templates] == ["candles://{symbol}/latest"]
    assert "Unknown tool" in error_text(refused)
    assert audit_rows(d, "backfill") == []

    tools = session(d.with_writes(), lambda c: c.list_tools())
    by_name = {t.name: t for t in tools.tools}
    assert set(by_name) == READ_TOOLS | WRITE_TOOLS
    for name in WRITE_TOOLS:
        hints = by_name[name].annotations
        assert hints is not None
        assert (hints.read_only_hint, hints.destructive_hint, hints.idempotent_hint) == (False, False, True)
    assert (
        by_name["backfill"].input_schema["properties"]["days"]["maximum"] == d.settings.mcp.max_backfill_days
    )


# -- read-only tools -------------------------------------------------------------------------------
def test_list_symbols_matches_the_store(deployment: McpDeployment) -> None:
    d = deployment
    doc = ok(call(d.settings, "list_symbols", {}))
    stored = db_summary(d)
    assert doc["exchange"] == EXCHANGE
    assert set(d.symbols) <= {s["symbol"] for s in doc["symbols"]}
    assert doc["count"] == len(doc["symbols"]) == len(stored)
    assert not doc["truncated"]
    for row in doc["symbols"]:
        n, first, newest, _ = stored[row["symbol"]]
        assert (row["candles"], row["first"], row["newest"]) == (n, iso_minute(first), iso_minute(newest))
        assert row["quarantine"] is None


def test_data_status_is_what_the_cli_reports(deployment: McpDeployment) -> None:
    d = deployment
    doc = ok(call(d.settings, "data_status", {}))
    stored = db_summary(d)
    rows = {r["symbol"]: r for r in doc["symbols"]}
    assert set(rows) == set(stored)
    for symbol, (n, first, newest, filled) in stored.items():
        row = rows[symbol]
        assert (row["candles"], row["first"], row["newest"]) == (n, iso_minute(first), iso_minute(newest))
        assert row["filled_minutes"] == filled
        assert row["missing_minutes"] == (newest - first) // MINUTE_MS + 1 - n
        assert row["quarantine"] is None
        lag_s = (now_ms() - newest - MINUTE_MS) // 1000  # from the newest candle's close
        assert lag_s - 10 <= row["staleness_s"] <= lag_s
    assert doc["stale"] == sum(r["stale"] for r in rows.values())
    assert doc["quarantined"] == 0

    # The same computation as `mlsignals data status --json` (quality/data_status.py): the same rows,
    # but for the figures that move with the clock between the two calls.
    cli = subprocess.run(
        [*mlsignals_command(), "data", "status", "--json"],
        env=d.env() | {"COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=d.root,
        check=True,
    )
    printed = json.loads(cli.stdout)
    moving = {"staleness_s", "stale", "signal_blocked"}
    assert [{k: v for k, v in r.items() if k not in moving} for r in printed["symbols"]] == [
        {k: v for k, v in r.items() if k not in moving} for r in doc["symbols"]
    ]
    assert printed["exchange_outages"] == doc["exchange_outages"]

    one = ok(call(d.settings, "data_status", {"symbols": [d.symbols[1].lower()]}))
    assert [r["symbol"] for r in one["symbols"]] == [d.symbols[1]]
    message = error_text(call(d.settings, "data_status", {"symbols": [d.symbols[0], "NOPE/USDT:USDT"]}))
    assert "unknown symbol: NOPE/USDT:USDT" in message
    assert d.symbols[0] in message


def test_get_candles_returns_the_stored_rows_and_pages(deployment: McpDeployment) -> None:
    d = deployment
    symbol, minute = d.symbols[0], parse_minute(d.minute)
    start, end = minute - 60 * MINUTE_MS, minute
    expected = db_candles(d, symbol, start, end)
    assert len(expected) == 60

    doc = ok(
        call(
            d.settings, "get_candles", {"symbol": symbol, "start": iso_minute(start), "end": iso_minute(end)}
        )
    )
    assert (doc["symbol"], doc["exchange"], doc["count"], doc["truncated"]) == (symbol, EXCHANGE, 60, False)
    assert (doc["start"], doc["end"]) == (iso_minute(start), iso_minute(end))
    compare_candles(doc["candles"], expected)
    assert all(
        c["turnover"] == pytest.approx(t) for c, t in zip(doc["candles"], expected["turnover"], strict=True)
    )

    # Truncated at `limit`, with where to read on; the symbol's case does not matter.
    args = {"symbol": symbol.lower(), "start": iso_minute(start), "end": iso_minute(end), "limit": 25}
    first = ok(call(d.settings, "get_candles", args))
    assert (first["count"], first["truncated"], first["remaining"]) == (25, True, 35)
    assert first["next_start"] == iso_minute(start + 25 * MINUTE_MS)
    compare_candles(first["candles"], expected.iloc[:25])
    rest = ok(call(d.settings, "get_candles", args | {"start": first["next_start"], "limit": 50}))
    assert (rest["count"], rest["truncated"], rest["next_start"]) == (35, False, None)
    compare_candles(rest["candles"], expected.iloc[25:])

    # Only `end`: the `limit` minutes before it.
    last = ok(call(d.settings, "get_candles", {"symbol": symbol, "end": iso_minute(end), "limit": 5}))
    compare_candles(last["candles"], expected.iloc[-5:])


def test_get_candles_refuses_bad_input(deployment: McpDeployment) -> None:
    d = deployment
    symbol, minute = d.symbols[0], d.minute
    cases: list[tuple[dict[str, Any], str]] = [
        ({"symbol": "NOPE/USDT:USDT"}, "unknown symbol: NOPE/USDT:USDT ("),
        ({"symbol": symbol, "start": "yesterday"}, "start 'yesterday' is not an ISO 8601 time"),
        ({"symbol": symbol, "start": minute, "end": "2026-02-30T00:00Z"}, "end '2026-02-30T00:00Z' is not"),
        ({"symbol": symbol, "start": minute, "end": "2020-01-01T00:00Z"}, "must be before end"),
        (
            {"symbol": symbol, "start": "2026-01-01T00:00Z", "end": "2026-02-02T00:00Z"},
            "longer than the limit",
        ),
        ({"symbol": symbol, "limit": d.settings.mcp.max_rows + 1}, "less than or equal to 1000"),
        ({"symbol": symbol, "limit": 0}, "greater than or equal to 1"),
    ]

    async def calls(c: Client) -> list[Any]:
        return [await c.call_tool("get_candles", args) for args, _ in cases]

    for (args, expected), result in zip(cases, session(d.settings, calls), strict=True):
        assert expected in error_text(result), args


def test_get_bars_are_the_anchored_bars_of_the_stored_candles(deployment: McpDeployment) -> None:
    d = deployment
    symbol, anchor = d.symbols[1], parse_minute(d.minute)
    doc = ok(call(d.settings, "get_bars", {"symbol": symbol, "minute": d.minute, "count": 8}))
    assert (doc["anchor"], doc["bar_minutes"], doc["count"], doc["incomplete"]) == (d.minute, 15, 8, 0)
    # The same bars aggregated in Python from the candles read with plain SQL.
    candles = db_candles(d, symbol, anchor - 8 * 15 * MINUTE_MS, anchor)
    bars, complete = aggregate_minutes(
        candles["open_time"].to_numpy(),
        candles[["open", "high", "low", "close", "volume"]].to_numpy(),
        anchor,
        8,
        15,
    )
    assert complete.all()
    got = np.array([[b[k] for k in ("open", "high", "low", "close", "volume")] for b in doc["bars"]])
    np.testing.assert_allclose(got, bars, rtol=1e-12)
    assert doc["bars"][-1]["end_time"] == d.minute
    assert doc["bars"][0]["open_time"] == iso_minute(anchor - 8 * 15 * MINUTE_MS)

    # At the start of the stored history: bars lacking minutes are incomplete, their prices null.
    first = db_summary(d)[symbol][1]
    early = ok(
        call(
            d.settings,
            "get_bars",
            {"symbol": symbol, "minute": iso_minute(first + 20 * MINUTE_MS), "count": 3},
        )
    )
    assert [b["complete"] for b in early["bars"]] == [False, False, True]
    assert early["incomplete"] == 2
    assert early["bars"][0]["close"] is None
    assert (
        early["bars"][2]["open"]
        == db_candles(d, symbol, first + 5 * MINUTE_MS, first + 6 * MINUTE_MS)["open"][0]
    )

    assert "less than or equal to 1000" in error_text(
        call(d.settings, "get_bars", {"symbol": symbol, "count": d.settings.mcp.max_rows + 1})
    )
    assert "minute 'soon' is not an ISO 8601 time" in error_text(
        call(d.settings, "get_bars", {"symbol": symbol, "minute": "soon"})
    )
    assert "unknown symbol" in error_text(call(d.settings, "get_bars", {"symbol": "XYZ"}))


def test_get_features_are_the_training_features_scaled_by_the_champion(deployment: McpDeployment) -> None:
    from ml.features import FEATURE_SPEC, compute
    from ml.registry import Registry

    d = deployment
    symbol, anchor = d.symbols[2], parse_minute(d.minute)

    async def calls(c: Client) -> list[Any]:
        return [
            await c.call_tool("get_features", {"symbol": symbol, "minute": d.minute}),
            await c.call_tool(
                "get_features", {"symbol": symbol, "minute": d.minute, "model_version": "challenger"}
            ),
            await c.call_tool("get_features", {"symbol": symbol, "minute": "2026-01-01T00:00Z"}),
            await c.call_tool("get_features", {"symbol": symbol, "model_version": "v-none"}),
            await c.call_tool("get_features", {"symbol": "NOPE/USDT:USDT"}),
        ]

    champion, challenger, too_early, bad_version, unknown = session(d.settings, calls)
    doc = ok(champion)
    assert (doc["symbol"], doc["minute"], doc["model_version"]) == (symbol, d.minute, d.champion)
    assert doc["feature_spec"] == f"{FEATURE_SPEC.version} {FEATURE_SPEC.hash[:12]}"
    assert [f["name"] for f in doc["features"]] == list(FEATURE_SPEC.names)
    assert len(doc["features"]) == 240
    raw = np.array([f["raw"] for f in doc["features"]])
    scaled = np.array([f["scaled"] for f in doc["features"]])

    # The training path (resample_anchored + compute over the whole stored history) gives the same
    # newest row as the live window the tool computes.
    candles = db_candles(d, symbol, 0, anchor)
    history = resample_anchored(candles, 15, phase_minute=(anchor // MINUTE_MS) % 15)
    history = history[history.index < pd.Timestamp(anchor, unit="ms", tz="UTC")]
    expected = compute(history, bar_minutes=15).iloc[-1].to_numpy()
    np.testing.assert_allclose(raw, expected, rtol=1e-7, atol=1e-9)
    assert doc["close"] == history["close"].iloc[-1]

    # The champion's scaler is the identity (clipped at 10); the challenger's is its own.
    np.testing.assert_allclose(scaled, np.clip(raw, -10, 10).astype(np.float32), rtol=1e-6)
    other = ok(challenger)
    assert other["model_version"] == d.challenger
    challenger_scaler = Registry(d.settings.model.registry_dir).load(d.challenger).scaler
    np.testing.assert_allclose(
        [f["scaled"] for f in other["features"]], challenger_scaler.transform(raw), rtol=1e-5, atol=1e-6
    )
    assert not np.allclose([f["scaled"] for f in other["features"]], scaled)

    quality = doc["quality"]
    window = db_candles(d, symbol, anchor - FEATURE_SPEC.context * 15 * MINUTE_MS, anchor)
    assert (quality["bars"], quality["bar_minutes"], quality["newest_bar_end"]) == (96, 15, d.minute)
    assert quality["warmup_bars"] == FEATURE_SPEC.warmup
    assert quality["filled_minutes"] == int(window["is_filled"].sum())
    assert quality["signal_blocked"] is None

    assert "no features for" in error_text(too_early)
    assert "insufficient history" in error_text(too_early)
    assert "unknown model version 'v-none'" in error_text(bad_version)
    assert "unknown symbol" in error_text(unknown)


def test_latest_candles_resource(deployment: McpDeployment) -> None:
    from mcp.shared.uri_template import UriTemplate

    d = deployment
    symbol = d.symbols[3]
    uri = f"candles://{quote(symbol, safe='')}/latest"
    # The SDK's own RFC 6570 expansion of the template gives the same URI.
    assert UriTemplate.parse("candles://{symbol}/latest").expand({"symbol": symbol}) == uri
    assert uri == "candles://" + symbol.replace("/", "%2F").replace(":", "%3A") + "/latest"

    async def reads(c: Client) -> list[Any]:
        out: list[Any] = [await c.read_resource(uri)]
        for bad in (f"candles://{symbol}/latest", "candles://NOPE%2FUSDT%3AUSDT/latest"):
            try:
                await c.read_resource(bad)
            except Exception as exc:  # noqa: BLE001 - the client raises its protocol error
                out.append(str(exc))
        return out

    content, unencoded, unknown = session(d.settings, reads)
    assert content.contents[0].mime_type == "application/json"
    doc = json.loads(content.contents[0].text)
    newest = db_summary(d)[symbol][2]
    expected = db_candles(d, symbol, newest - 59 * MINUTE_MS, newest + MINUTE_MS)
    assert (doc["symbol"], doc["count"]) == (symbol, 60)
    compare_candles(doc["candles"], expected)
    assert "Unknown resource" in unencoded
    assert "unknown symbol: NOPE/USDT:USDT" in unknown


# -- mutating tools --------------------------------------------------------------------------------
def test_backfill_stores_history_and_is_audited(deployment: McpDeployment) -> None:
    d = deployment
    writes = d.with_writes()
    first = ok(call(writes, "backfill", {"symbols": [BACKFILLED], "days": 0.05}))
    stored = db_summary(d)[BACKFILLED]
    assert stored[0] == 72
    assert (first["inserted"], first["fetched"], first["failed"]) == (72, 72, 0)
    [outcome] = first["symbols"]
    assert (outcome["symbol"], outcome["ok"], outcome["fetched"]) == (BACKFILLED, True, 72)
    assert outcome["newest"] == iso_minute(stored[2])
    assert stored[2] == parse_minute(first["end"]) - MINUTE_MS  # up to the newest closed minute

    # Idempotent: nothing new the second time, and still an outcome for the symbol.
    again = ok(call(writes, "backfill", {"symbols": [BACKFILLED.lower()], "days": 0.05}))
    assert again["inserted"] == 0
    assert (again["symbols"][0]["symbol"], again["symbols"][0]["ok"]) == (BACKFILLED, True)

    unknown = error_text(call(writes, "backfill", {"symbols": [BACKFILLED, "NOPE/USDT:USDT"], "days": 1}))
    assert "simulator does not list NOPE/USDT:USDT" in unknown
    too_long = error_text(call(writes, "backfill", {"symbols": [BACKFILLED], "days": 31}))
    assert "less than or equal to 30" in too_long
    narrow = writes.model_copy(update={"mcp": writes.mcp.model_copy(update={"max_symbols": 2})})
    assert "at most 2 items" in error_text(call(narrow, "backfill", {"symbols": MARKET[:3], "days": 1}))

    rows = audit_rows(d, "backfill")
    # Arguments the schema refuses never reach the tool: only the calls that ran are audited.
    assert [r.ok for r in rows] == [True, True, False]
    assert {r.caller for r in rows} == {STDIO_CALLER}
    assert {r.server for r in rows} == {"ml-data"}
    assert rows[0].arguments == {"symbols": [BACKFILLED], "days": 0.05}
    assert rows[0].result is not None
    assert rows[0].result["inserted"] == 72
    assert rows[0].error is None
    assert rows[2].result is None
    assert "does not list NOPE" in (rows[2].error or "")


def write_import_file(path: Path, symbol: str) -> tuple[int, int]:
    """90 minutes of the simulator's candles for ``symbol`` ending 30 minutes ago, two of them left
    out; returns the range [start, end)."""
    end = floor_minute(now_ms()) - 30 * MINUTE_MS
    start = end - 90 * MINUTE_MS
    frame = SimulatedMarket().fetch(symbol, start, end)
    frame = frame.drop(index=[40, 41]).reset_index(drop=True)
    out = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(frame["open_time"], unit="ms", utc=True).dt.strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            **{c: frame[c] for c in ("open", "high", "low", "close", "volume")},
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, index=False)
    return start, end


def test_import_file_reads_only_the_import_dir_and_is_audited(
    deployment: McpDeployment, tmp_path: Path
) -> None:
    d = deployment
    writes = d.with_writes()
    imports = d.settings.data_dir / "imports"
    start, end = write_import_file(imports / "batch" / "candles.csv", IMPORTED)

    doc = ok(call(writes, "import_file", {"path": "batch/candles.csv", "symbol": IMPORTED}))
    assert (doc["file"], doc["symbol"], doc["exchange"]) == ("batch/candles.csv", IMPORTED, EXCHANGE)
    assert (doc["read"], doc["inserted"], doc["filled_minutes"], doc["gap_count"]) == (88, 90, 2, 1)
    assert doc["gaps"] == [
        {
            "start": iso_minute(start + 40 * MINUTE_MS),
            "end": iso_minute(start + 42 * MINUTE_MS),
            "minutes": 2,
            "filled": 2,
            "long": False,
        }
    ]
    stored = db_candles(d, IMPORTED, 0, end + MINUTE_MS)
    assert len(stored) == 90
    assert int(stored["is_filled"].sum()) == 2
    assert stored["open_time"].iloc[0] == start
    assert stored["open_time"].iloc[-1] == end - MINUTE_MS
    # Re-importing inserts nothing; an absolute path inside the directory is fine.
    again = ok(
        call(writes, "import_file", {"path": str(imports / "batch" / "candles.csv"), "symbol": IMPORTED})
    )
    assert (again["inserted"], again["read"]) == (0, 88)

    outside = tmp_path / "outside.csv"
    write_import_file(outside, IMPORTED)
    (imports / "link.csv").symlink_to(outside)
    (imports / "junk.csv").write_text("not,a,candle\n1,2,3\n")
    cases = [
        ({"path": "../outside.csv"}, "outside the import directory"),
        ({"path": "batch/../../outside.csv"}, "outside the import directory"),
        ({"path": str(outside)}, "outside the import directory"),
        ({"path": "link.csv"}, "outside the import directory"),
        ({"path": "absent.csv"}, "no file 'absent.csv' in the import directory"),
        ({"path": "batch"}, "(it is a directory)"),
        ({"path": "junk.csv"}, "need exactly one time column"),
        ({"path": "batch/candles.csv", "symbol": "NOPE/USDT:USDT"}, "simulator does not list NOPE/USDT:USDT"),
    ]

    async def calls(c: Client) -> list[Any]:
        return [await c.call_tool("import_file", {"symbol": IMPORTED} | args) for args, _ in cases]

    for (args, expected), result in zip(cases, session(writes, calls), strict=True):
        message = error_text(result)
        assert expected in message, (args, message)
        if args["path"] == "link.csv":
            assert str(outside) not in message  # where the link leads is not told
    assert len(db_candles(d, IMPORTED, 0, end + MINUTE_MS)) == 90

    rows = audit_rows(d, "import_file")
    assert [r.ok for r in rows] == [True, True] + [False] * len(cases)
    assert {r.caller for r in rows} == {STDIO_CALLER}
    assert rows[0].arguments == {"path": "batch/candles.csv", "symbol": IMPORTED}
    assert rows[0].result is not None
    assert rows[0].result["inserted"] == 90
    assert [r.arguments["path"] for r in rows[2:]] == [args["path"] for args, _ in cases]
    for row, (_, expected) in zip(rows[2:], cases, strict=True):
        assert expected in (row.error or ""), row.error


# -- the real transports ---------------------------------------------------------------------------
def test_stdio_subprocess(deployment: McpDeployment) -> None:
    d = deployment
    symbol = d.symbols[0]

    async def go() -> tuple[Any, Any, Any]:
        async with Client(stdio_parameters("data", d)) as c:
            tools = await c.list_tools()
            candles = await c.call_tool("get_candles", {"symbol": symbol, "end": d.minute, "limit": 3})
            latest = await c.read_resource(f"candles://{quote(symbol, safe='')}/latest")
            return tools, candles, latest

    tools, candles, latest = asyncio.run(go())
    assert {t.name for t in tools.tools} == READ_TOOLS
    minute = parse_minute(d.minute)
    compare_candles(ok(candles)["candles"], db_candles(d, symbol, minute - 3 * MINUTE_MS, minute))
    assert json.loads(latest.contents[0].text)["count"] == 60


def test_streamable_http_needs_a_token(deployment: McpDeployment) -> None:
    import httpx2

    d = deployment
    with http_server("data", d, allow_write=True) as url:
        # No token, or a wrong one: refused before any tool runs.
        request = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        headers = {"Accept": "application/json, text/event-stream"}
        assert httpx2.post(url, json=request, headers=headers, timeout=10).status_code == 401
        wrong = headers | {"Authorization": "Bearer tok-not-a-real-token-000000"}
        assert httpx2.post(url, json=request, headers=wrong, timeout=10).status_code == 401

        async def go() -> tuple[Any, Any]:
            async with Client(bearer_transport(url, TOKENS["ops-agent"])) as c:
                listed = await c.call_tool("list_symbols", {})
                imported = await c.call_tool("import_file", {"path": "batch/candles.csv", "symbol": IMPORTED})
                return listed, imported

        listed, imported = asyncio.run(go())
    assert {s["symbol"] for s in ok(listed)["symbols"]} >= {*d.symbols, BACKFILLED, IMPORTED}
    assert ok(imported)["inserted"] == 0
    last = audit_rows(d, "import_file")[-1]
    assert (last.caller, last.ok, last.arguments["path"]) == ("ops-agent", True, "batch/candles.csv")
