"""The quality breaker's rules on hand-made outcomes (SQLite and PostgreSQL): no verdict below
``min_samples`` or ``min_periods`` (the window widened to them), a trip on either floor with its
record, nothing judged while halted, the window restarting at a resume, and the halt lifted by a
new champion only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select

from core.settings import Settings
from data import db
from data.models import QualityEvent, SignalOutcome
from quality.breaker import HALTED, INSUFFICIENT, OK, RESUMED, TRIPPED, evaluate
from quality.events import OPERATOR, resume, resume_after_promotion
from trading.accounts import halt_state, set_halted

BASE = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SYMBOLS = [f"S{i}" for i in range(6)]


def settings(**breaker: Any) -> Settings:
    # One period (15 minutes at this horizon) is enough here: these rules play out over a few minutes;
    # the periods rule has its own test.
    rules = {"horizon": 0, "min_samples": 12, "min_periods": 1, "window_signals": 100}
    return Settings(quality={"breaker": rules | breaker})


def add_minutes(engine: Any, version: str, first: int, count: int, *, skill: float, made: datetime) -> None:
    """``count`` minutes of 6 symbols at 15 m: two actionable per minute; ``skill`` > 0 ranks the
    predictions like the outcomes and makes the actionable ones right, < 0 the opposite."""
    rows = []
    for m in range(first, first + count):
        minute = BASE + timedelta(minutes=m)
        for k, symbol in enumerate(SYMBOLS):
            neutral = (k - 2.5) / 100
            direction = "LONG" if k == 5 else "SHORT" if k == 0 else "NEUTRAL"
            sign = {"LONG": 1.0, "SHORT": -1.0}.get(direction)
            right = None if sign is None else (skill > 0)
            rows.append(
                {
                    "signal_id": m * 100 + k,
                    "symbol": symbol,
                    "minute": minute,
                    "signal_made_at": made,
                    "model_version": version,
                    "horizon_bars": 1,
                    "status": "resolved",
                    "direction": direction,
                    "actionable": sign is not None,
                    "exit_time": minute + timedelta(minutes=15),
                    "entry_price": 100.0,
                    "exit_price": 100.0,
                    "realised_return": neutral,
                    "neutral_return": neutral,
                    "realised_class": "FLAT",
                    "predicted_return": skill * neutral,
                    "prob_long": 0.4,
                    "prob_short": 0.3,
                    "prob_flat": 0.3,
                    "correct": right,
                    "net_return": None if sign is None else (0.01 if right else -0.01),
                    "net_return_raw": None,
                    "cost": 0.0015,
                }
            )
    with engine.begin() as conn:
        conn.execute(insert(SignalOutcome), rows)


@pytest.fixture
def engine(migrated_url: str) -> Any:
    return db.get_engine(migrated_url)


def events(engine: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(QualityEvent).order_by(QualityEvent.id)))


def test_a_good_champion_is_left_alone_and_few_samples_give_no_verdict(engine: Any) -> None:
    s = settings()
    add_minutes(engine, "good", 0, 5, skill=1.0, made=BASE)
    assert evaluate(engine, s, "good").state == INSUFFICIENT  # 10 actionable < 12
    add_minutes(engine, "good", 5, 5, skill=1.0, made=BASE)
    verdict = evaluate(engine, s, "good")
    assert verdict.state == OK
    assert verdict.figures["hit_rate"] == 1.0
    assert verdict.figures["ic"] == pytest.approx(1.0)
    assert halt_state(engine, s) == (False, None)


@pytest.mark.parametrize("floor", ["hit_rate", "ic"])
def test_either_floor_trips_the_kill_switch_with_its_record(engine: Any, floor: str) -> None:
    # The broken model is wrong on its actionable signals (hit rate 0) and ranks backwards (IC -1);
    # each floor alone is enough: the other one is set where it cannot fire.
    s = settings(**({"ic_floor": -1.0} if floor == "hit_rate" else {"hit_rate_floor": 0.0}))
    add_minutes(engine, "bad", 0, 10, skill=-1.0, made=BASE)
    verdict = evaluate(engine, s, "bad")
    assert verdict.state == TRIPPED
    halted, why = halt_state(engine, s)
    assert halted
    assert why is not None
    assert why.startswith("quality_breaker: champion bad at 15m:")
    assert ("hit rate 0.000 < 0.450" in why) == (floor == "hit_rate")
    assert ("IC -1.0000 < +0.0000" in why) == (floor == "ic")
    [trip] = events(engine)
    assert (trip.kind, trip.source, trip.model_version) == ("trip", "breaker", "bad")
    assert trip.figures["actionable"] == 20
    # While halted nothing more is judged (and nothing recorded twice).
    assert evaluate(engine, s, "bad").state == HALTED
    assert len(events(engine)) == 1


def test_no_verdict_until_the_window_spans_min_periods_which_widens_it(engine: Any) -> None:
    s = settings(min_periods=4, window_signals=20)
    # 20 actionable signals (over min_samples) from 10 minutes: one 15-minute period, no verdict.
    add_minutes(engine, "bad", 0, 10, skill=-1.0, made=BASE)
    verdict = evaluate(engine, s, "bad")
    assert verdict.state == INSUFFICIENT
    assert (verdict.figures["actionable"], verdict.figures["periods"]) == (20, 1)
    assert "hit_rate" not in verdict.figures
    assert halt_state(engine, s) == (False, None)
    # Minutes 10..55: the newest 20 signals still come from 10 minutes, so the window widens to every
    # actionable signal of the last 4 periods: from minute 55 - 3 x 15 = 10 on.
    add_minutes(engine, "bad", 10, 46, skill=-1.0, made=BASE)
    verdict = evaluate(engine, s, "bad")
    assert verdict.state == TRIPPED
    assert (verdict.figures["actionable"], verdict.figures["periods"]) == (92, 4)
    assert verdict.figures["first_minute"] == (BASE + timedelta(minutes=10)).isoformat()
    # The IC is the bars': the newest minute of each 15-minute bar (14, 29, 44 and 55).
    assert verdict.figures["ic_minutes"] == 4
    assert verdict.figures["ic"] == pytest.approx(-1.0)


def test_a_resume_restarts_the_window(engine: Any) -> None:
    s = settings()
    add_minutes(engine, "bad", 0, 10, skill=-1.0, made=BASE)
    assert evaluate(engine, s, "bad").state == TRIPPED
    assert resume(engine, s, source=OPERATOR, reason="checked by hand")
    assert not resume(engine, s, source=OPERATOR, reason="again")  # was not halted: no record
    # The signals before the resume do not count again: no verdict until new ones resolve.
    assert evaluate(engine, s, "bad").state == INSUFFICIENT
    made_later = datetime.now(UTC) + timedelta(seconds=5)
    add_minutes(engine, "bad", 10, 10, skill=-1.0, made=made_later)
    assert evaluate(engine, s, "bad").state == TRIPPED
    assert [(e.kind, e.source) for e in events(engine)] == [
        ("trip", "breaker"),
        ("resume", "operator"),
        ("trip", "breaker"),
    ]


def test_only_a_new_champion_lifts_a_trip(engine: Any) -> None:
    s = settings()
    add_minutes(engine, "bad", 0, 10, skill=-1.0, made=BASE)
    assert evaluate(engine, s, "bad").state == TRIPPED
    assert not resume_after_promotion(engine, s, "bad")  # the same version: still halted
    assert halt_state(engine, s)[0]
    assert evaluate(engine, s, "fixed").state == RESUMED
    assert halt_state(engine, s) == (False, None)
    last = events(engine)[-1]
    assert (last.kind, last.source, last.model_version) == ("resume", "promotion", "fixed")


def test_an_operator_halt_is_not_lifted_by_a_promotion(engine: Any) -> None:
    s = settings()
    set_halted(engine, s, True, "maintenance")
    assert not resume_after_promotion(engine, s, "other")
    assert halt_state(engine, s) == (True, "maintenance")
    assert evaluate(engine, s, "other").state == HALTED
