"""What the MCP servers share (mcp_servers/common.py, auth.py): the write gate and its audit, clear tool
errors, argument limits, and bearer tokens."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import ConfigError, UnknownSymbolError
from core.settings import McpSettings, Settings
from data.models import McpAudit
from mcp_servers.auth import StaticTokenVerifier, load_tokens
from mcp_servers.common import (
    AUDIT_RESULT_CHARS,
    check_limit,
    check_range,
    check_symbols,
    json_safe,
    parse_time,
)
from mcp_servers.domain import Domain
from mcp_servers.serving import new_server


def _settings(tmp_path: Path, *, allow_write: bool) -> Settings:
    return Settings(
        data_dir=tmp_path, database_url=f"sqlite:///{tmp_path}/mcp.db", mcp={"allow_write": allow_write}
    )


def _toy_server(settings: Settings) -> Any:
    server, tools = new_server(
        "toy", "a toy server for the toolbox's tests", settings, Domain(settings), None
    )

    @tools.read(title="Echo")
    def echo(word: str) -> dict[str, str]:
        """Echo a word; 'unknown' is an unknown symbol, 'crash' a bug."""
        if word == "unknown":
            raise UnknownSymbolError("unknown", "simulator")
        if word == "crash":
            raise RuntimeError("secret internals")
        return {"echo": word}

    @tools.write(title="Set", destructive=True, idempotent=False)
    def set_value(value: int) -> dict[str, Any]:
        """Set a value; negative values are refused."""
        if value < 0:
            raise ToolError("value must not be negative")
        return {"value": value, "blob": "x" * (2 * AUDIT_RESULT_CHARS if value == 7 else 1)}

    return server


def _call(server: Any, *calls: tuple[str, dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    async def run() -> tuple[list[Any], list[Any]]:
        async with Client(server) as client:
            tools = (await client.list_tools()).tools
            return tools, [await client.call_tool(name, args) for name, args in calls]

    return asyncio.run(run())


def _audit_rows(settings: Settings) -> list[McpAudit]:
    with Session(Domain(settings).engine) as session:
        return list(session.scalars(select(McpAudit).order_by(McpAudit.id)))


def test_write_tools_exist_only_with_the_flag_and_every_tool_is_annotated(tmp_path: Path) -> None:
    tools, _ = _call(_toy_server(_settings(tmp_path, allow_write=False)))
    assert [t.name for t in tools] == ["echo"]
    tools, _ = _call(_toy_server(_settings(tmp_path, allow_write=True)))
    hints = {t.name: t.annotations for t in tools}
    assert set(hints) == {"echo", "set_value"}
    assert (hints["echo"].read_only_hint, hints["echo"].destructive_hint, hints["echo"].idempotent_hint) == (
        True,
        False,
        True,
    )
    assert (hints["set_value"].read_only_hint, hints["set_value"].destructive_hint) == (False, True)
    assert hints["set_value"].idempotent_hint is False
    assert {t.name: t.title for t in tools} == {"echo": "Echo", "set_value": "Set"}


def test_errors_are_clear_for_the_caller_and_generic_for_bugs(tmp_path: Path) -> None:
    _, (unknown, crash, ok) = _call(
        _toy_server(_settings(tmp_path, allow_write=False)),
        ("echo", {"word": "unknown"}),
        ("echo", {"word": "crash"}),
        ("echo", {"word": "hi"}),
    )
    assert unknown.is_error
    assert "unknown symbol 'unknown' on source 'simulator'" in unknown.content[0].text
    assert crash.is_error
    text = crash.content[0].text
    assert "internal error (RuntimeError) in echo" in text
    assert "secret internals" not in text  # a bug's details stay in the server's log
    assert "Traceback" not in text
    assert not ok.is_error
    assert ok.structured_content == {"echo": "hi"}


def test_every_write_call_is_audited_with_caller_arguments_and_outcome(tmp_path: Path) -> None:
    settings = _settings(tmp_path, allow_write=True)
    _, results = _call(
        _toy_server(settings),
        ("set_value", {"value": 3}),
        ("set_value", {"value": -1}),
        ("set_value", {"value": 7}),
        ("echo", {"word": "read calls are not audited"}),
    )
    assert [r.is_error for r in results] == [False, True, False, False]
    rows = _audit_rows(settings)
    assert [(r.server, r.tool, r.arguments, r.ok) for r in rows] == [
        ("ml-toy", "set_value", {"value": 3}, True),
        ("ml-toy", "set_value", {"value": -1}, False),
        ("ml-toy", "set_value", {"value": 7}, True),
    ]
    assert rows[0].result == {"value": 3, "blob": "x"}
    assert rows[1].error == "value must not be negative"
    assert rows[1].result is None
    assert rows[2].result is not None
    assert rows[2].result["truncated"] is True  # a summary, never a dump
    assert len(rows[2].result["head"]) == AUDIT_RESULT_CHARS
    assert all(r.caller.startswith("stdio:") and r.duration_ms >= 0 for r in rows)
    assert all(r.called_at.tzinfo is not None for r in rows)


def test_an_audit_that_cannot_be_written_is_reported_not_hidden(tmp_path: Path) -> None:
    settings = _settings(tmp_path, allow_write=True)
    server = _toy_server(settings)
    Domain(settings).engine.dispose()
    (tmp_path / "mcp.db").unlink()
    (tmp_path / "mcp.db").mkdir()  # the database file is now a directory: every write fails
    _, (result,) = _call(server, ("set_value", {"value": 1}))
    assert result.is_error
    assert "its audit row could not be written" in result.content[0].text


def test_times_ranges_limits_and_symbols_are_checked_with_clear_messages() -> None:
    settings = Settings(mcp={"max_rows": 100, "max_range_days": 2, "max_symbols": 3})
    assert parse_time("2026-12-04T08:00Z", "start") == datetime(2026, 12, 4, 8, tzinfo=UTC)
    assert parse_time("2026-12-04T08:00", "start") == datetime(2026, 12, 4, 8, tzinfo=UTC)  # naive: UTC
    assert parse_time("2026-12-04T09:00+01:00", "start") == datetime(2026, 12, 4, 8, tzinfo=UTC)
    assert abs(parse_time("now", "end") - datetime.now(UTC)) < timedelta(seconds=5)
    default = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_time(None, "since", default=default) == default
    with pytest.raises(ToolError, match=r"start 'yesterday' is not an ISO 8601 time"):
        parse_time("yesterday", "start")
    with pytest.raises(ToolError, match="until is required"):
        parse_time(None, "until")

    start = datetime(2026, 12, 1, tzinfo=UTC)
    check_range(start, start + timedelta(days=2), settings)
    with pytest.raises(ToolError, match="must be before end"):
        check_range(start, start, settings)
    with pytest.raises(ToolError, match=r"3.0 days is longer than the limit of 2 days"):
        check_range(start, start + timedelta(days=3), settings)

    assert check_limit(100, settings) == 100
    with pytest.raises(ToolError, match=r"above the limit of 100 rows"):
        check_limit(101, settings)
    with pytest.raises(ToolError, match="at least 1"):
        check_limit(0, settings)

    known = ["BTC/USDT:USDT", "ETH/USDT:USDT"]
    assert check_symbols(["btc/usdt:usdt"], known, settings) == ["BTC/USDT:USDT"]
    with pytest.raises(ToolError, match=r"unknown symbol: DOGE/USDT:USDT \(2 known: BTC/USDT:USDT"):
        check_symbols(["DOGE/USDT:USDT"], known, settings)
    with pytest.raises(ToolError, match="at most 3"):
        check_symbols(["A", "B", "C", "D"], known, settings)


def test_json_safe_makes_audit_documents_of_anything() -> None:
    when = datetime(2026, 12, 4, tzinfo=UTC)
    doc = json_safe({"t": when, "nan": float("nan"), "xs": (1, 2.5), "path": Path("/x"), 3: None})
    assert doc == {"t": "2026-12-04T00:00:00+00:00", "nan": None, "xs": [1, 2.5], "path": "/x", "3": None}
    json.dumps(doc, allow_nan=False)


def test_tokens_come_from_the_settings_or_a_file_and_short_ones_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs bearer tokens"):
        load_tokens(McpSettings())
    with pytest.raises(ConfigError, match="tokens of ops are shorter than 16"):
        load_tokens(McpSettings(tokens={"ops": SecretStr("short")}))
    lines = tmp_path / "tokens"
    lines.write_text("# operators\nops-agent = 'abcdefghijklmnopqrstu'\nreader=0123456789abcdef0123\n")
    assert load_tokens(McpSettings(tokens_file=lines)) == {
        "ops-agent": "abcdefghijklmnopqrstu",
        "reader": "0123456789abcdef0123",
    }
    as_json = tmp_path / "tokens.json"
    as_json.write_text(json.dumps({"bot": "b" * 20}))
    merged = load_tokens(McpSettings(tokens={"env": SecretStr("e" * 20)}, tokens_file=as_json))
    assert merged == {"env": "e" * 20, "bot": "b" * 20}
    broken = tmp_path / "broken.json"
    broken.write_text('{"bot": "secret-value-not-to-be-quoted"')
    with pytest.raises(ConfigError, match="is not valid JSON") as excinfo:
        load_tokens(McpSettings(tokens_file=broken))
    assert "secret-value" not in str(excinfo.value)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_tokens(McpSettings(tokens_file=tmp_path / "missing"))


def test_the_verifier_names_the_matching_client_and_refuses_the_rest() -> None:
    verifier = StaticTokenVerifier({"ops-agent": "a" * 20, "reader": "b" * 20})

    async def check(token: str) -> str | None:
        found = await verifier.verify_token(token)
        return None if found is None else found.client_id

    assert asyncio.run(check("b" * 20)) == "reader"
    assert asyncio.run(check("a" * 20)) == "ops-agent"
    assert asyncio.run(check("a" * 19)) is None
    assert asyncio.run(check("")) is None
