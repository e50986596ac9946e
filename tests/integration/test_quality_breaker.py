"""The quality circuit breaker on a replayed run: a trained model, then a deliberately broken copy
of it (sign-flipped returns head, LONG and SHORT swapped to match) written to the registry and
promoted; the minutes replayed through the embedded pipeline with the quality pass after each; the
breaker trips within its window and no entry is placed after the trip; `mlsignals trading resume`
lifts it, and both are recorded."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cli.main import app as cli
from core.settings import Settings, reset_settings_cache
from core.timegrid import MINUTE_MS, floor_minute, iso_minute, now_ms
from data import db
from data.ingest import Ingestor
from data.models import OrderIntent, QualityEvent, TradingOrder
from data.sources.factory import make_source, resolve_symbols
from data.store import CandleStore
from data.validation import ValidationPolicy
from ml.jobs import train_version
from ml.registry import Registry
from ml.training import QUICK_RECIPE
from quality.breaker import TRIPPED
from quality.service import run_quality
from tasks.pipeline import start_minute
from tests.support.models import register_sign_flipped
from worker.app import app
from worker.embedded import embedded_runtime

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_SYMBOLS = 30
# No trading costs and a confidence floor at chance make about half the signals actionable (~15 a
# minute of 30 symbols), so the verdict rests on 150 resolved actionable signals after ~10 minutes.
# With the default costs and floor the quick model made ~1 actionable signal a minute: 25 of them
# took most of the replay, and a verdict on so few could miss the broken model (a CI run ended
# "insufficient" at 24, another "ok" on 25). Over 150 the broken model's hit rate was 0.41 and its
# IC -0.06 (floors 0.45 and 0) in both runs measured, tripping at the first verdict.
MIN_SAMPLES = 150
WINDOW = 400
MAX_MINUTES = 30  # the breaker must trip well inside this replay
AFTER_TRIP = 4  # minutes replayed after the trip, to see that no entry follows it


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, str, str]:
    root = tmp_path_factory.mktemp("breaker")
    settings = Settings(
        data_dir=root,
        data={"universe_size": N_SYMBOLS},
        model={"registry_dir": root / "models", "device": "cpu"},
        pipeline={"symbols_per_task": N_SYMBOLS, "candle_wait_seconds": 0},
        trading={"cooldown_minutes": 0, "max_open_positions": 0, "fee_bps": 0.0, "slippage_bps": 0.0},
        ml_integration={"signals": {"confidence_threshold": 0.34}},
        quality={"breaker": {"horizon": 0, "min_samples": MIN_SAMPLES, "window_signals": WINDOW}},
    )
    db.upgrade(settings.database_url)
    store = CandleStore(db.get_engine(settings.database_url))
    source = make_source(settings)
    symbols = resolve_symbols(settings, source)
    end = floor_minute(now_ms())
    assert Ingestor(store, source, ValidationPolicy()).backfill(symbols, QUICK_RECIPE.days, end_ms=end).ok
    recipe = QUICK_RECIPE.model_copy(update={"symbols": N_SYMBOLS, "samples_per_epoch": 1024})
    good = train_version(settings, store, recipe, device="cpu", symbols=symbols).version
    registry = Registry(settings.model.registry_dir)
    broken = register_sign_flipped(registry, good)
    registry.promote(broken)
    return settings, good, broken


def replay(minute: str) -> None:
    from worker.runtime import get_runtime

    outcome = start_minute(get_runtime(), minute, replay=True)
    result: dict[str, Any] = app.AsyncResult(outcome["result_id"]).get(timeout=120)
    for task_id in [*result["order_tasks"], result["tick_task"]]:
        app.AsyncResult(task_id).get(timeout=60)


def test_a_broken_champion_trips_the_breaker_and_no_entry_follows(
    workspace: tuple[Settings, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, _good, broken = workspace
    registry = Registry(settings.model.registry_dir)
    # Replayed minutes far enough back that their 15-minute outcomes are settled at once.
    first = floor_minute(now_ms()) - (MAX_MINUTES + 40) * MINUTE_MS
    trip: dict[str, Any] | None = None
    trip_minute = None
    with embedded_runtime(settings, beat=False) as rt:
        engine = rt.signals.engine
        for i in range(MAX_MINUTES):
            minute = first + i * MINUTE_MS
            replay(iso_minute(minute))
            summary = run_quality(engine, settings, exchange=rt.source.name, registry=registry)
            if trip is None and summary["breaker"]["state"] == TRIPPED:
                trip, trip_minute = summary["breaker"], minute
            if trip_minute is not None and minute >= trip_minute + AFTER_TRIP * MINUTE_MS:
                break
    assert trip is not None, "the broken champion was never caught"
    assert trip["model_version"] == broken
    figures = trip["figures"]
    assert MIN_SAMPLES <= figures["actionable"] <= WINDOW
    assert figures["ic"] < 0.0 or figures["hit_rate"] < settings.quality.breaker.hit_rate_floor
    assert trip["reason"].startswith("quality_breaker: champion")

    with engine.connect() as conn:
        later_intents = conn.execute(
            select(OrderIntent).where(OrderIntent.minute > as_utc_dt(trip_minute))
        ).all()
        later_entries = conn.execute(
            select(TradingOrder).where(
                TradingOrder.signal_minute > as_utc_dt(trip_minute), TradingOrder.purpose == "entry"
            )
        ).all()
        earlier = conn.execute(select(OrderIntent).where(OrderIntent.minute <= as_utc_dt(trip_minute))).all()
    assert earlier, "the broken model made no actionable signal before the trip"
    assert later_intents, "no actionable signal after the trip: nothing was tested"
    assert {i.status for i in later_intents} == {"rejected"}
    assert all((i.reason or "").startswith("kill_switch") for i in later_intents)
    assert later_entries == []

    monkeypatch.setenv("MLSIG_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("MLSIG_MODEL__REGISTRY_DIR", str(settings.model.registry_dir))
    reset_settings_cache()
    out = CliRunner().invoke(cli, ["trading", "resume"])
    assert out.exit_code == 0, out.output
    assert "trading resumed" in out.output
    with engine.connect() as conn:
        events = conn.execute(select(QualityEvent).order_by(QualityEvent.id)).all()
    assert [(e.kind, e.source) for e in events] == [("trip", "breaker"), ("resume", "operator")]
    assert events[0].figures["actionable"] == figures["actionable"]
    assert events[1].figures["previous_reason"] == trip["reason"]


def as_utc_dt(ms: int | None) -> Any:
    from datetime import UTC, datetime

    assert ms is not None
    return datetime.fromtimestamp(ms / 1000, UTC)
