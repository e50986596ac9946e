"""The ml-model MCP server (mcp_servers/model_server.py) with the SDK's own client, on the replayed
deployment of tests/support/mcp.py (a champion that is always SHORT, a challenger that is always LONG):
every tool against what the registry and the database hold, its bad input, the write gate and the
audit, evaluation progress notifications, and the stdio and HTTP transports.

Tests that move aliases work on a copy of the registry (``registry_copy``), so every test sees the
deployment's registry as the fixture left it. Evaluation needs a version with a training record and
a test split in the candle store: ``trained`` backfills 8 days of 5 simulated symbols into the
deployment's database and registers a small version trained on them (its fit replaced by a seeded
model, as tests/unit/test_evaluation_jobs.py does: what is tested is the evaluation around it) in a
registry of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import hashlib
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import pytest
from mcp import Client
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from core.settings import Settings
from core.timegrid import MINUTE_MS, floor_minute, iso_minute, now_ms
from data import db
from data.ingest import Ingestor
from data.models import McpAudit, SignalOutcome
from data.sources.simulator import SimulatedMarket
from data.store import CandleStore
from data.validation import ValidationPolicy
from mcp_servers.domain import Domain
from mcp_servers.model_server import build
from ml.registry import Registry
from quality.champion import compare_champion
from quality.compare import without_series
from quality.events import BREAKER, REASON_CODE, TRIP, record
from tests.support.mcp import (
    TOKENS,
    McpDeployment,
    bearer_transport,
    error_text,
    http_server,
    mcp_deployment,  # noqa: F401  (the fixture, used through `deployment`)
    ok,
    stdio_parameters,
)
from trading.accounts import halt_state, set_halted

pytestmark = [pytest.mark.integration, pytest.mark.slow]

READ_TOOLS = {"list_models", "show_model", "evaluate_model", "compare_models"}
WRITE_TOOLS = {"promote", "rollback"}
EVAL_SYMBOLS = 5  # the fewest a per-time IC needs (ml.evaluation.MIN_CROSS_SECTION)


# -- helpers ---------------------------------------------------------------------------------------
def call(server: Any, name: str, args: dict[str, Any] | None = None) -> Any:
    async def run() -> Any:
        async with Client(server) as client:
            return await client.call_tool(name, args or {})

    return asyncio.run(run())


def serve(settings: Settings) -> Any:
    return build(settings, Domain(settings))


def with_registry(settings: Settings, root: Path, *, writes: bool = False) -> Settings:
    changes: dict[str, Any] = {"model": settings.model.model_copy(update={"registry_dir": root})}
    if writes:
        changes["mcp"] = settings.mcp.model_copy(update={"allow_write": True})
    return settings.model_copy(update=changes)


def audit_rows(settings: Settings, after: int) -> list[McpAudit]:
    with Session(db.get_engine(settings.database_url)) as session:
        rows = session.scalars(select(McpAudit).where(McpAudit.id > after).order_by(McpAudit.id))
        return list(rows)


def last_audit_id(settings: Settings) -> int:
    rows = audit_rows(settings, 0)
    return rows[-1].id if rows else 0


@pytest.fixture(scope="module")
def deployment(mcp_deployment: McpDeployment) -> McpDeployment:  # noqa: F811  (the fixture's name)
    """The replayed deployment of tests/support/mcp.py (one per module)."""
    return mcp_deployment


@pytest.fixture
def registry_copy(deployment: McpDeployment, tmp_path: Path) -> Path:
    """A copy of the deployment's registry that a test may change."""
    root = tmp_path / "models"
    shutil.copytree(deployment.settings.model.registry_dir, root)
    return root


@dataclasses.dataclass
class Trained:
    settings: Settings  # the deployment's, with the registry of the trained version
    version: str


@pytest.fixture(scope="module")
def trained(deployment: McpDeployment) -> Trained:
    from ml.jobs import train_version
    from tests.unit.test_evaluation_jobs import RECIPE, fake_fit

    settings = with_registry(deployment.settings, deployment.root / "trained-models")
    store = CandleStore(db.get_engine(settings.database_url))
    market = SimulatedMarket()
    symbols = market.list_symbols()[:EVAL_SYMBOLS]
    # Ends where the fixture's history ends: the replayed minute's candles stay as they were.
    end = floor_minute(now_ms()) - 6 * MINUTE_MS
    report = Ingestor(store, market, ValidationPolicy()).backfill(symbols, RECIPE.days, end_ms=end)
    assert report.ok, report
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("ml.jobs.fit", fake_fit)
        outcome = train_version(settings, store, RECIPE, device="cpu", symbols=symbols)
    return Trained(settings, outcome.version)


def seed_outcomes(settings: Settings, champion: str, challenger: str, minutes: int = 240) -> datetime:
    """Resolved 1 h outcomes of both versions on the same recent minutes and 8 symbols (a quarter of
    the challenger's pairs missing); the challenger's predictions follow the market, the champion's
    are noise. Returns the first minute."""
    rng = np.random.default_rng(7)
    first = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=6)
    rows: list[dict[str, Any]] = []
    for m in range(minutes):
        minute = first + timedelta(minutes=m)
        realised = rng.normal(0.0, 0.01, 8)
        for k, symbol in enumerate(f"Z{i}/USDT:USDT" for i in range(8)):
            for version, skill in ((champion, 0.0), (challenger, 1.0)):
                if version == challenger and (m + k) % 4 == 0:
                    continue
                predicted = skill * realised[k] + rng.normal(0.0, 0.005)
                direction = "LONG" if predicted > 0 else "SHORT"
                sign = 1.0 if predicted > 0 else -1.0
                rows.append(
                    {
                        "signal_id": 9_000_000 + len(rows),
                        "horizon_bars": 4,
                        "symbol": symbol,
                        "minute": minute,
                        "signal_made_at": minute,
                        "model_version": version,
                        "status": "resolved",
                        "direction": direction,
                        "actionable": True,
                        "exit_time": minute + timedelta(hours=1),
                        "entry_price": 10.0,
                        "exit_price": 10.0 * (1 + realised[k]),
                        "realised_return": float(realised[k]),
                        "neutral_return": float(realised[k]),
                        "realised_class": "LONG" if realised[k] > 0 else "SHORT",
                        "predicted_return": float(predicted),
                        "prob_long": 0.5 if sign > 0 else 0.2,
                        "prob_short": 0.2 if sign > 0 else 0.5,
                        "prob_flat": 0.3,
                        "correct": bool(sign * realised[k] > 0),
                        "net_return": float(sign * realised[k] - 0.001),
                        "net_return_raw": float(sign * realised[k] - 0.001),
                        "cost": 0.001,
                    }
                )
    with db.get_engine(settings.database_url).begin() as conn:
        conn.execute(insert(SignalOutcome), rows)
    return first


# -- the tool list and its annotations -------------------------------------------------------------
def test_write_tools_exist_only_with_the_flag(deployment: McpDeployment) -> None:
    async def listing(settings: Settings) -> dict[str, Any]:
        async with Client(serve(settings)) as client:
            return {t.name: t for t in (await client.list_tools()).tools}

    read_only = asyncio.run(listing(deployment.settings))
    assert set(read_only) == READ_TOOLS
    both = asyncio.run(listing(deployment.with_writes()))
    assert set(both) == READ_TOOLS | WRITE_TOOLS
    for name in READ_TOOLS:
        hints = both[name].annotations
        assert (hints.read_only_hint, hints.destructive_hint, hints.idempotent_hint) == (True, False, True)
        assert both[name].output_schema is not None, name
    promote, rollback = both["promote"].annotations, both["rollback"].annotations
    assert (promote.read_only_hint, promote.destructive_hint, promote.idempotent_hint) == (False, False, True)
    assert (rollback.read_only_hint, rollback.destructive_hint, rollback.idempotent_hint) == (
        False,
        True,
        False,
    )
    assert both["evaluate_model"].input_schema["properties"]["holdout_days"]["minimum"] == 0


# -- list_models / show_model ----------------------------------------------------------------------
def test_list_models_matches_the_registry(deployment: McpDeployment) -> None:
    d = deployment
    registry = Registry(d.settings.model.registry_dir)
    doc = ok(call(serve(d.settings), "list_models"))
    assert (doc["champion"], doc["challenger"], doc["rollback_to"]) == (d.champion, d.challenger, None)
    assert doc["registry_versions"] == 2
    assert doc["truncated"] is False
    by_version = {v["version"]: v for v in doc["versions"]}
    assert [v["version"] for v in doc["versions"]] == sorted(by_version, reverse=True)
    assert by_version[d.champion]["aliases"] == ["champion"]
    assert by_version[d.challenger]["aliases"] == ["challenger"]
    for version, item in by_version.items():
        info = registry.info(version)
        assert item["created"] == info.created
        assert item["symbols"] == 0  # the fixture's versions carry no training record
        assert item["test"] == []
        assert item["previous_champion"] is False

    newest = ok(call(serve(d.settings), "list_models", {"limit": 1}))
    assert newest["truncated"] is True
    assert [v["version"] for v in newest["versions"]] == [max(by_version)]
    too_many = call(serve(d.settings), "list_models", {"limit": d.settings.mcp.max_rows + 1})
    assert "above the limit of 1000 rows (mcp.max_rows)" in error_text(too_many)


def test_list_models_of_a_trained_version_has_its_figures(trained: Trained) -> None:
    doc = ok(call(serve(trained.settings), "list_models"))
    [item] = doc["versions"]
    info = Registry(trained.settings.model.registry_dir).info(trained.version)
    assert item["symbols"] == EVAL_SYMBOLS
    assert (item["history_start"], item["history_end"]) == (
        info.training["candles"]["start"],
        info.training["candles"]["end"],
    )
    stored = info.metrics["test"]["horizons"]
    assert [h["horizon_bars"] for h in item["test"]] == [1, 4, 16, 48]
    assert [h["accuracy"] for h in item["test"]] == [h["accuracy"] for h in stored]
    assert [h["ic_per_time"] for h in item["test"]] == [h["ic_per_time"] for h in stored]


def test_show_model_verifies_the_files(deployment: McpDeployment) -> None:
    d = deployment
    folder = Path(d.settings.model.registry_dir) / "versions" / d.champion
    doc = ok(call(serve(d.settings), "show_model", {"version": "champion"}))
    assert doc["summary"]["version"] == d.champion
    assert doc["summary"]["aliases"] == ["champion"]
    assert doc["training"] == {"note": "champion"}
    assert doc["config"] == json.loads((folder / "config.json").read_text())
    verification = doc["verification"]
    assert verification["ok"] is True
    assert set(verification["files"]) >= {"weights.pt", "config.json", "metrics.json"}
    for name, digest in verification["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    by_id = ok(call(serve(d.settings), "show_model", {"version": d.challenger}))
    assert by_id["summary"]["aliases"] == ["challenger"]


def test_show_model_reports_a_changed_file(deployment: McpDeployment, registry_copy: Path) -> None:
    d = deployment
    (registry_copy / "versions" / d.challenger / "weights.pt").write_bytes(b"not a model")
    doc = ok(call(serve(with_registry(d.settings, registry_copy)), "show_model", {"version": "challenger"}))
    assert doc["verification"]["ok"] is False
    assert "weights.pt does not match its manifest digest" in doc["verification"]["error"]
    assert doc["summary"]["version"] == d.challenger  # the other facts are still shown


def test_show_model_bad_references(deployment: McpDeployment) -> None:
    d = deployment
    server = serve(d.settings)
    unknown = error_text(call(server, "show_model", {"version": "20990101T000000Z-deadbeef"}))
    assert "unknown version '20990101T000000Z-deadbeef' in the model registry" in unknown
    assert f"champion = {d.champion}" in unknown
    assert d.challenger in unknown
    # A path is not a version, even one that names a folder of the registry.
    assert "unknown version '..'" in error_text(call(server, "show_model", {"version": ".."}))
    assert "no previous champion to name" in error_text(call(server, "show_model", {"version": "previous"}))
    empty = error_text(call(server, "show_model", {"version": ""}))
    assert "at least 1 character" in empty


# -- evaluate_model --------------------------------------------------------------------------------
def test_evaluate_model_reports_progress_and_the_stored_figures(trained: Trained) -> None:
    folder = Path(trained.settings.model.registry_dir) / "versions" / trained.version
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    notes: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notes.append((progress, total, message))

    async def run() -> Any:
        async with Client(serve(trained.settings)) as client:
            return await client.call_tool(
                "evaluate_model", {"version": "champion"}, progress_callback=on_progress
            )

    doc = ok(asyncio.run(run()))
    assert doc["version"] == trained.version
    assert doc["device"] == "cpu"
    assert doc["baselines"] == "stored"
    assert doc["metrics_stored"] is False
    assert doc["holdout"] is None
    # The same samples, model and baselines as the evaluation made at training time.
    stored = Registry(trained.settings.model.registry_dir).info(trained.version).metrics
    test = doc["test"]
    assert test["samples"] == stored["test"]["samples"] > 0
    assert test["symbols"] == EVAL_SYMBOLS
    for got, want in zip(test["horizons"], stored["test"]["horizons"], strict=True):
        assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-9)
        assert got["ic_per_time"] == pytest.approx(want["ic_per_time"], abs=1e-6)
    headline = test["headline"]
    assert headline["horizon_bars"] == doc["primary_horizon_bars"] == 4
    assert headline["network_ic"] == pytest.approx(stored["summary"]["test"]["network_ic"], abs=1e-6)
    assert "series" not in json.dumps(doc)
    # The stored metrics (and so the manifest) are as they were.
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before

    values = [n[0] for n in notes]
    assert len(notes) >= 5
    assert values == sorted(values)
    assert notes[0][2] == f"loading {trained.version}"
    assert notes[-1][0] == notes[-1][1] == 3.0  # reading, features and labels, the test split
    assert notes[-1][2] == f"{trained.version} evaluated"
    messages = " | ".join(str(n[2]) for n in notes)
    for stage in ("reading candles: started", "features and labels: started", "test split evaluation"):
        assert stage in messages


def test_the_server_answers_other_calls_while_it_evaluates(trained: Trained) -> None:
    """The evaluation runs in a worker thread: while it waits on one of its own progress notifications
    (the in-memory client's callback is awaited by the notification), another call is answered."""
    answered: list[str] = []

    async def run() -> Any:
        async with Client(serve(trained.settings)) as client:

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:  # noqa: ARG001
                if message == "features and labels: started" and not answered:
                    listed = await client.call_tool("list_models", {})
                    answered.append(ok(listed)["champion"])

            return await asyncio.wait_for(
                client.call_tool("evaluate_model", {"version": "champion"}, progress_callback=on_progress),
                timeout=120,
            )

    assert ok(asyncio.run(run()))["version"] == trained.version
    assert answered == [trained.version]


def test_evaluate_model_with_the_days_before_the_training_data(trained: Trained) -> None:
    notes: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:  # noqa: ARG001
        notes.append((progress, total))

    async def run() -> Any:
        async with Client(serve(trained.settings)) as client:
            return await client.call_tool(
                "evaluate_model",
                {"version": trained.version, "holdout_days": 1},
                progress_callback=on_progress,
            )

    doc = ok(asyncio.run(run()))
    training = Registry(trained.settings.model.registry_dir).info(trained.version).training
    holdout = doc["holdout"]
    assert holdout["available"] is True, holdout
    assert (holdout["start"], holdout["end"]) == (
        iso_minute(training["candles"]["start_ms"] - 1440 * MINUTE_MS),
        training["candles"]["start"],
    )
    assert holdout["symbols"] == EVAL_SYMBOLS
    assert holdout["samples"] > 0
    assert holdout["headline"]["samples"] == holdout["samples"]
    assert holdout["first_anchor"] >= holdout["start"]
    # Three more stages (reading, features, the period), and the backfill of its candles when missing.
    assert notes[-1][0] == notes[-1][1] in (6.0, 7.0)
    assert [n[0] for n in notes] == sorted(n[0] for n in notes)


def test_evaluate_model_bad_input(trained: Trained, deployment: McpDeployment) -> None:
    server = serve(trained.settings)
    too_long = error_text(call(server, "evaluate_model", {"version": "champion", "holdout_days": 45}))
    assert "holdout_days 45 is above the limit of 30 days" in too_long
    negative = error_text(call(server, "evaluate_model", {"version": "champion", "holdout_days": -1}))
    assert "greater than or equal to 0" in negative
    unknown = error_text(call(server, "evaluate_model", {"version": "nope"}))
    assert f"unknown version 'nope' in the model registry: aliases: champion = {trained.version}" in unknown
    assert "no challenger alias is set" in error_text(
        call(server, "evaluate_model", {"version": "challenger"})
    )
    # A version without a training record (the fixture's champion) cannot be evaluated: said clearly.
    untrained = error_text(call(serve(deployment.settings), "evaluate_model", {"version": "champion"}))
    assert f"version {deployment.champion} has no training record to evaluate it on" in untrained
    assert "lacks exchange, symbols, candles, split, recipe" in untrained


# -- compare_models --------------------------------------------------------------------------------
def test_compare_models_on_the_common_minutes(deployment: McpDeployment) -> None:
    d = deployment
    first = seed_outcomes(d.settings, d.champion, d.challenger)
    since = (first - timedelta(minutes=1)).isoformat()
    doc = ok(call(serve(d.settings), "compare_models", {"horizon": "1h", "since": since}))
    engine = db.get_engine(d.settings.database_url)
    registry = Registry(d.settings.model.registry_dir)
    expected = without_series(
        compare_champion(engine, d.settings, registry, horizons=(4,), since=first - timedelta(minutes=1))
    )
    assert (doc["champion"], doc["challenger"]) == (d.champion, d.challenger)
    [h] = doc["horizons"]
    [want] = expected["horizons"]
    assert (h["horizon"], h["horizon_bars"]) == ("1h", 4)
    assert h["pairs"] == want["pairs"] == 240 * 6  # 2 of the 8 pairs of a minute missing
    assert h["minutes"] == 240
    assert h["champion"]["ic"]["mean"] == pytest.approx(want["champion"]["ic"]["mean"])
    assert h["challenger"]["ic"]["mean"] == pytest.approx(want["challenger"]["ic"]["mean"])
    assert h["challenger"]["ic"]["mean"] > 0.5 > abs(h["champion"]["ic"]["mean"])
    assert h["paired_ic"]["mean"] == pytest.approx(want["paired_ic"]["mean"])
    assert (
        h["challenger"]["directions"]["LONG"]["signals"]
        == want["challenger"]["directions"]["LONG"]["signals"]
    )
    assert "series" not in json.dumps(doc)

    every = ok(call(serve(d.settings), "compare_models", {"since": since}))
    assert [x["horizon"] for x in every["horizons"]] == ["15m", "1h", "4h", "12h"]


def test_compare_models_bad_input(deployment: McpDeployment, registry_copy: Path) -> None:
    d = deployment
    server = serve(d.settings)
    assert "unknown horizon '2h': one of 15m, 1h, 4h, 12h" in error_text(
        call(server, "compare_models", {"horizon": "2h"})
    )
    long_ago = (datetime.now(UTC) - timedelta(days=40)).isoformat()
    assert "longer than the limit of 31 days" in error_text(
        call(server, "compare_models", {"since": long_ago})
    )
    assert "is not an ISO 8601 time" in error_text(call(server, "compare_models", {"since": "yesterday"}))
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert "must be before end" in error_text(call(server, "compare_models", {"since": future}))
    # Without a challenger there is nothing to compare.
    Registry(registry_copy).promote("challenger")
    alone = error_text(call(serve(with_registry(d.settings, registry_copy)), "compare_models"))
    assert "no challenger in the model registry" in alone


# -- promote / rollback ----------------------------------------------------------------------------
def test_promote_and_rollback_are_audited(deployment: McpDeployment, registry_copy: Path) -> None:
    d = deployment
    settings = with_registry(d.settings, registry_copy, writes=True)
    engine = db.get_engine(settings.database_url)
    after = last_audit_id(settings)
    # The quality breaker halted trading on the champion: a new champion lifts it.
    set_halted(
        engine,
        settings,
        True,
        f"{REASON_CODE}: {d.champion} bad at 15m",
        also=record(TRIP, BREAKER, d.champion, "test trip", {}),
    )

    async def run() -> list[Any]:
        async with Client(serve(settings)) as client:
            return [
                await client.call_tool("promote", {"version": "challenger"}),
                await client.call_tool("promote", {"version": d.challenger}),
                await client.call_tool("rollback", {}),
                await client.call_tool("rollback", {}),
                await client.call_tool("promote", {"version": "nope"}),
            ]

    promoted, again, back, nothing, unknown = asyncio.run(run())
    registry = Registry(registry_copy)
    assert ok(promoted) == {
        "action": "promote",
        "champion": d.challenger,
        "replaced": d.champion,
        "challenger": None,
        "rollback_to": d.champion,
        "breaker_lifted": True,
    }
    assert halt_state(engine, settings) == (False, None)
    assert ok(again)["action"] == "unchanged"  # idempotent: the same state as after one call
    assert ok(again)["champion"] == d.challenger
    assert ok(back) == {
        "action": "rollback",
        "champion": d.champion,
        "replaced": d.challenger,
        "challenger": d.challenger,
        "rollback_to": None,
        "breaker_lifted": False,
    }
    assert "no previous champion to roll back to" in error_text(nothing)
    assert "unknown version 'nope'" in error_text(unknown)
    aliases = registry.aliases()
    assert (aliases["champion"], aliases["challenger"], aliases["previous_champions"]) == (
        d.champion,
        d.challenger,
        [],
    )
    # The deployment's own registry is untouched.
    assert Registry(d.settings.model.registry_dir).resolve("champion") == d.champion

    rows = audit_rows(settings, after)
    assert [(r.tool, r.ok) for r in rows] == [
        ("promote", True),
        ("promote", True),
        ("rollback", True),
        ("rollback", False),
        ("promote", False),
    ]
    assert {r.server for r in rows} == {"ml-model"}
    assert {r.caller for r in rows} == {f"stdio:{getpass.getuser()}"}
    assert rows[0].arguments == {"version": "challenger"}
    assert rows[2].arguments == {}
    assert rows[0].result is not None
    assert rows[0].result["champion"] == d.challenger
    assert rows[3].result is None
    assert rows[3].error == "no previous champion to roll back to"
    assert "unknown version 'nope'" in str(rows[4].error)


def test_write_tools_are_unknown_without_the_flag(deployment: McpDeployment) -> None:
    result = call(serve(deployment.settings), "rollback")
    assert error_text(result) == "Unknown tool: rollback"
    assert Registry(deployment.settings.model.registry_dir).resolve("champion") == deployment.champion


# -- transports ------------------------------------------------------------------------------------
def test_stdio_subprocess_evaluates_with_progress(trained: Trained, deployment: McpDeployment) -> None:
    served = dataclasses.replace(deployment, settings=trained.settings)
    notes: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:  # noqa: ARG001
        notes.append(progress)

    async def run() -> tuple[Any, Any]:
        async with Client(stdio_parameters("model", served)) as client:
            listed = await client.call_tool("list_models", {})
            evaluated = await client.call_tool(
                "evaluate_model", {"version": trained.version}, progress_callback=on_progress
            )
            return listed, evaluated

    listed, evaluated = asyncio.run(run())
    assert [v["version"] for v in ok(listed)["versions"]] == [trained.version]
    assert ok(evaluated)["test"]["symbols"] == EVAL_SYMBOLS
    assert len(notes) >= 5
    assert notes == sorted(notes)
    assert notes[-1] == 3.0


def test_http_with_and_without_a_token(deployment: McpDeployment, registry_copy: Path) -> None:
    d = deployment
    served = dataclasses.replace(d, settings=with_registry(d.settings, registry_copy))
    after = last_audit_id(d.settings)
    with http_server("model", served, allow_write=True) as url:
        refused = httpx2.post(
            url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Accept": "application/json, text/event-stream"},
        )
        assert refused.status_code == 401

        async def run() -> tuple[Any, Any]:
            async with Client(bearer_transport(url, TOKENS["ops-agent"])) as client:
                shown = await client.call_tool("show_model", {"version": "champion"})
                promoted = await client.call_tool("promote", {"version": "challenger"})
                return shown, promoted

        shown, promoted = asyncio.run(run())
    assert ok(shown)["summary"]["version"] == d.champion
    assert ok(promoted)["champion"] == d.challenger
    assert Registry(registry_copy).resolve("champion") == d.challenger
    [row] = audit_rows(d.settings, after)
    assert (row.tool, row.caller, row.ok, row.arguments) == (
        "promote",
        "ops-agent",
        True,
        {"version": "challenger"},
    )
