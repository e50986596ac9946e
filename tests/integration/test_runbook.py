"""The runbook's procedures (docs/OPERATIONS.md), run as it writes them.

* **Model rollback**: the embedded runtime (real Celery worker, in-process broker, the registry's
  model server) replays a minute under champion A, the runbook's ``mlsignals model promote`` and
  ``mlsignals model rollback`` run as separate processes (as an operator runs them), and each next
  minute's ledger row, champion signals and order intents carry the new champion's version, served
  by the same model server: no worker restart, only the hot reload at the minute's start.
* **Kill switch**: the runbook's ``mlsignals trading halt`` / ``status`` / ``resume`` lines, on SQLite
  and PostgreSQL: halted, a new intent is rejected ``kill_switch``; resumed, the next one is accepted.
* **Flatten**: the runbook's ``mlsignals trading flatten`` line, confirmed as an operator would, on
  open paper positions: all closed (``flatten`` fills), trading halted with the runbook's reason.

The commands are read from the runbook's code blocks, so a change there is tested here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cli.main import app as cli_app
from core.settings import Settings
from core.timegrid import MINUTE_MS, floor_minute, iso_minute, now_ms
from data.models import OrderIntent
from ml.predictor import Predictor
from ml.registry import Registry
from pipeline.clock import minute_dt
from tasks.pipeline import start_minute
from tests.support.models import biased_model, identity_scaler, register_challenger
from tests.support.trading import (
    intent,
    intent_row,
    make_trader,
    ms,
    order_queue_spy,
    positions,
    write_candles,
)
from tests.support.workers import backfill_live_history, embedded_settings
from trading.executor import Trader
from trading.intents import OrderIntentMessage
from trading.risk import code_of
from worker.app import app
from worker.embedded import embedded_runtime
from worker.runtime import Runtime

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "docs" / "OPERATIONS.md"
N_SYMBOLS = 4


def runbook_command(section: str, prefix: str) -> list[str]:
    """The first line of the runbook section ``## <section>``'s bash blocks that starts with
    ``prefix``, split as the shell would (its comment dropped)."""
    text = RUNBOOK.read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S):
        for line in block.splitlines():
            if line.startswith(prefix):
                return shlex.split(line, comments=True)
    raise AssertionError(f"no `{prefix}` in the runbook's section {section!r}")


# --- model rollback --------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s: Settings = embedded_settings(tmp_path, N_SYMBOLS)
    backfill_live_history(s.database_url, N_SYMBOLS, end_lag_minutes=6, extra_minutes=30)
    return s


@pytest.fixture
def intents_sent(monkeypatch: pytest.MonkeyPatch) -> list[OrderIntentMessage]:
    """A spy on the ``orders`` queue port: every intent the publish step sends."""
    return order_queue_spy(monkeypatch)


@pytest.fixture
def model_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every model version a ``Predictor`` was loaded for, in order."""
    loads: list[str] = []
    original = Predictor.load.__func__  # type: ignore[attr-defined]

    def load(cls: type[Predictor], registry: Registry, ref: str, settings: Settings) -> Predictor:
        predictor: Predictor = original(cls, registry, ref, settings)
        loads.append(predictor.version)
        return predictor

    monkeypatch.setattr(Predictor, "load", classmethod(load))
    return loads


def operator(settings: Settings, argv: list[str]) -> str:
    """Run a runbook command (``mlsignals …``) in its own process, as an operator does, on the
    deployment's database and registry; its output."""
    assert argv[0] == "mlsignals"
    executable = Path(sys.executable).with_name("mlsignals")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLSIG_")},
        "MLSIG_DATABASE_URL": settings.database_url,
        "MLSIG_DATA_DIR": str(settings.data_dir),
        "MLSIG_MODEL__REGISTRY_DIR": str(settings.model.registry_dir),
        "MLSIG_LOG_LEVEL": "WARNING",
        "COLUMNS": "200",
    }
    result = subprocess.run(
        [str(executable), *argv[1:]], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def replay(rt: Runtime, minute: str) -> None:
    """One minute as beat starts it, through the in-process broker, to its last order task."""
    outcome = start_minute(rt, minute, replay=True)
    assert outcome["status"] == "running", outcome
    result = app.AsyncResult(outcome["result_id"]).get(timeout=90)
    for task_id in [*result["order_tasks"], result["tick_task"]]:
        app.AsyncResult(task_id).get(timeout=30)


def assert_minute_served_by(
    rt: Runtime, minute: str, version: str, direction: str, intents: list[OrderIntentMessage]
) -> None:
    """The minute's ledger row, its champion signals and its order intents are ``version``'s."""
    when = minute_dt(minute)
    run = rt.ledger.get(when)
    assert run is not None
    assert (run.status, run.model_version, run.signals_made) == ("done", version, N_SYMBOLS)
    signals = rt.signals.for_minute(when, version)
    assert [s.direction for s in signals] == [direction] * N_SYMBOLS
    sent = [i for i in intents if i.minute == when]
    assert {(i.model_version, i.direction) for i in sent} == {(version, direction)}
    assert len(sent) == N_SYMBOLS
    with rt.store.engine.connect() as conn:
        stored = set(
            conn.execute(select(OrderIntent.model_version).where(OrderIntent.minute == when)).scalars()
        )
    assert stored == {version}


@pytest.mark.slow
def test_model_rollback_reaches_the_running_inference_worker_at_the_next_minute(
    settings: Settings, intents_sent: list[OrderIntentMessage], model_loads: list[str]
) -> None:
    registry = Registry(settings.model.registry_dir)
    # A: every signal SHORT; B (registered next, the challenger): every signal LONG.
    a, alias = registry.register(biased_model(0, "SHORT"), identity_scaler(), {"note": "A"}, {})
    assert alias == "champion"
    b = register_challenger(registry, seed=1, direction="LONG")
    section = "Model rollback"
    promote = ["mlsignals", "model", "promote", "challenger"]  # the release of B, before the rollback
    rollback = runbook_command(section, "mlsignals model rollback")
    listing = runbook_command(section, "mlsignals model list")
    assert rollback == ["mlsignals", "model", "rollback"]
    base = floor_minute(now_ms())
    first, second, third = (iso_minute(base - k * MINUTE_MS) for k in (5, 4, 3))

    with embedded_runtime(settings, beat=False) as rt:
        server = rt.model_server()
        server.warm_up()
        assert server.wait_for_challenger(60)  # type: ignore[attr-defined]
        replay(rt, first)
        assert_minute_served_by(rt, first, a, "SHORT", intents_sent)

        assert f"champion is now {b}" in operator(settings, promote)
        replay(rt, second)
        assert_minute_served_by(rt, second, b, "LONG", intents_sent)

        # The runbook's rollback, then its check.
        assert f"champion rolled back to {a}" in operator(settings, rollback)
        listed = {
            line.split("│")[1].strip(): line
            for line in operator(settings, listing).splitlines()
            if "│" in line
        }
        assert "champion" in listed[a]
        assert "challenger" in listed[b]
        assert registry.aliases()["champion"] == a
        assert registry.aliases()["challenger"] == b
        loads_before = len(model_loads)
        replay(rt, third)
        assert_minute_served_by(rt, third, a, "SHORT", intents_sent)

        # No restart: the same runtime and model server served all three minutes; A was loaded
        # again for the minute after the rollback (B was let go when it became champion alone).
        assert rt.model_server() is server
        assert model_loads[loads_before:] == [a]
        # The demoted B runs as the shadow challenger: its signals stored, never traded.
        shadow = rt.signals.for_minute(minute_dt(third), b)
        assert [s.direction for s in shadow] == ["LONG"] * N_SYMBOLS
        assert all(s.orders_enqueued_at is None for s in shadow)


# --- kill switch -----------------------------------------------------------------------------------

runner = CliRunner(env={"COLUMNS": "200"})
KILL_SWITCH = "Trading: kill switch and flattening"


def invoke(argv: list[str], answer: str | None = None) -> str:
    assert argv[0] == "mlsignals"
    result = runner.invoke(cli_app, argv[1:], input=answer)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def trader(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Trader:
    """A paper trader on ``db_url``, where the runbook's commands look (SQLite and PostgreSQL)."""
    monkeypatch.setenv("MLSIG_DATABASE_URL", db_url)
    monkeypatch.setenv("MLSIG_LOG_LEVEL", "WARNING")
    return make_trader(db_url)


def test_the_runbooks_kill_switch_halts_and_resumes_trading(trader: Trader) -> None:
    halt = runbook_command(KILL_SWITCH, "mlsignals trading halt")
    status = runbook_command(KILL_SWITCH, "mlsignals trading status")
    history = runbook_command(KILL_SWITCH, "mlsignals trading history")
    resume = runbook_command(KILL_SWITCH, "mlsignals trading resume")
    reason = halt[halt.index("--reason") + 1]

    assert f"trading halted: {reason}" in invoke(halt)
    assert "HALTED" in invoke(status)
    refused = trader.execute(intent("BTC/USDT:USDT", 0))
    assert refused.status == "rejected"
    assert code_of(refused.reason) == "kill_switch"
    assert reason in (refused.reason or "")
    assert intent_row(trader, refused.client_order_id).status == "rejected"
    assert "kill_switch" in invoke(history)

    assert "trading resumed" in invoke(resume)
    assert "HALTED" not in invoke(status)
    accepted = trader.execute(intent("ETH/USDT:USDT", 0))
    assert accepted.status != "rejected", accepted.reason
    assert accepted.reason is None
    assert intent_row(trader, accepted.client_order_id).status == accepted.status


def test_the_runbooks_flatten_closes_every_position_and_halts(trader: Trader) -> None:
    for symbol, direction, stop, target in (
        ("BTC/USDT:USDT", "LONG", 98, 104),
        ("ETH/USDT:USDT", "SHORT", 102, 96),
    ):
        trader.execute(intent(symbol, 0, direction, entry=100, stop=stop, target=target))
        write_candles(trader, symbol, [(0, 100.0, 100.5, 99.5, 100.2)])
    trader.tick(ms(1))
    assert [p.status for p in positions(trader)] == ["open", "open"]
    flatten = runbook_command(KILL_SWITCH, "mlsignals trading flatten")
    status = runbook_command(KILL_SWITCH, "mlsignals trading status")
    reason = flatten[flatten.index("--reason") + 1]

    out = invoke(flatten, answer="y\n")
    assert "close 2 open positions of the paper account at market and halt trading?" in out
    assert "flattened paper account (2 positions" in out
    assert [(p.status, p.exit_reason) for p in positions(trader)] == [("closed", "flatten")] * 2
    shown = invoke(status)
    assert "open positions (0)" in shown
    assert "HALTED" in shown
    assert f"flatten: {reason}" in shown
