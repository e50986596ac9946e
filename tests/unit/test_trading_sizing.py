"""Position sizing, with every expected number worked out by hand in the comments."""

from __future__ import annotations

import pytest

from trading.sizing import MarketRules, SizingRules, confidence_scale, round_down, size_position

RULES = SizingRules(risk_per_trade=0.01, confidence_threshold=0.6, min_scale=0.5, max_leverage=5.0)
LOTS = MarketRules(qty_step=0.1, min_qty=0.0, min_notional=5.0)


@pytest.mark.parametrize(
    ("confidence", "expected"),
    [
        (0.6, 0.5),  # at the threshold: min_scale
        (0.8, 0.75),  # halfway from 0.6 to 1: 0.5 + 0.5 * 0.5
        (0.9, 0.875),  # 0.5 + 0.5 * 0.75
        (1.0, 1.0),
        (0.5, 0.5),  # below the threshold: clipped (the risk checks reject it anyway)
    ],
)
def test_confidence_scale_is_linear_from_the_threshold_to_one(confidence: float, expected: float) -> None:
    assert confidence_scale(confidence, 0.6, 0.5) == pytest.approx(expected)


def test_confidence_scale_edge_rules() -> None:
    assert confidence_scale(0.7, 0.6, 1.0) == 1.0  # min_scale 1: confidence does not matter
    assert confidence_scale(0.99, 1.0, 0.3) == 0.3
    assert confidence_scale(1.0, 1.0, 0.3) == 1.0


def test_the_worked_example_of_the_docs() -> None:
    # equity 10,000, risk 1 % -> budget 100; confidence 0.8 -> scale 0.75 -> 75 at risk;
    # entry 100, stop 98 -> 2 per unit -> 37.5 units, notional 3,750 (cap 5 x 10,000 = 50,000).
    size = size_position(equity=10_000, entry=100, stop_loss=98, confidence=0.8, rules=RULES, market=LOTS)
    assert size.ok
    assert size.qty == 37.5
    assert size.notional == pytest.approx(3_750)
    assert size.scale == pytest.approx(0.75)
    assert size.risk_amount == pytest.approx(75)  # the loss at the stop equals the scaled budget
    assert not size.capped_by_leverage


def test_a_short_sizes_on_the_stop_above_the_entry() -> None:
    # Same numbers mirrored: stop 102 above an entry of 100 is also 2 per unit.
    size = size_position(equity=10_000, entry=100, stop_loss=102, confidence=0.8, rules=RULES, market=LOTS)
    assert size.qty == 37.5


def test_the_leverage_cap() -> None:
    # stop 0.1 away at full confidence: 100 / 0.1 = 1,000 units = 100,000 notional;
    # the cap is 2 x 10,000 = 20,000 -> 200 units.
    rules = SizingRules(0.01, 0.6, 0.5, max_leverage=2.0)
    size = size_position(
        equity=10_000, entry=100, stop_loss=99.9, confidence=1.0, rules=rules, market=MarketRules(0.001)
    )
    assert size.capped_by_leverage
    assert size.qty == 200
    assert size.notional == pytest.approx(20_000)
    assert size.risk_amount == pytest.approx(20)  # 200 units x 0.1: less than the 100 budget


def test_rounding_is_always_down_to_the_lot() -> None:
    # equity 1,000 x 0.5 % = 5, at the threshold (scale 0.5) 2.5 at risk; stop 300 away:
    # 2.5 / 300 = 0.008333… -> 0.008 with a 0.001 lot; notional 0.008 x 30,000 = 240.
    rules = SizingRules(0.005, 0.6, 0.5, 5.0)
    size = size_position(
        equity=1_000, entry=30_000, stop_loss=29_700, confidence=0.6, rules=rules, market=MarketRules(0.001)
    )
    assert size.qty == 0.008
    assert size.notional == pytest.approx(240)
    assert size.risk_amount == pytest.approx(2.4)  # never more than the 2.5 budgeted


def test_below_the_minimum_notional_is_rejected() -> None:
    # 2.5 at risk, stop 900 away: 0.002777… -> 0.002 units = 60 notional, under a minimum of 100.
    rules = SizingRules(0.005, 0.6, 0.5, 5.0)
    market = MarketRules(qty_step=0.001, min_notional=100)
    size = size_position(
        equity=1_000, entry=30_000, stop_loss=29_100, confidence=0.6, rules=rules, market=market
    )
    assert not size.ok
    assert size.qty == 0
    assert size.reason is not None
    assert size.reason.startswith("below_min_notional:")
    # A lot bigger than the whole size rounds down to nothing: rejected the same way.
    coarse = size_position(
        equity=1_000, entry=30_000, stop_loss=29_100, confidence=0.6, rules=rules, market=MarketRules(0.01)
    )
    assert coarse.reason is not None
    assert coarse.reason.startswith("below_min_notional:")


def test_minimum_quantity() -> None:
    size = size_position(
        equity=10_000,
        entry=100,
        stop_loss=98,
        confidence=0.8,
        rules=RULES,
        market=MarketRules(0.1, min_qty=50),
    )
    assert size.reason is not None
    assert size.reason.startswith("below_min_notional:")


@pytest.mark.parametrize("stop", [None, 0.0, 100.0])
def test_no_usable_stop_loss_is_rejected(stop: float | None) -> None:
    size = size_position(equity=10_000, entry=100, stop_loss=stop, confidence=0.8, rules=RULES, market=LOTS)
    assert size.reason is not None
    assert size.reason.startswith("no_stop_loss:")


def test_no_equity_is_rejected() -> None:
    size = size_position(equity=0, entry=100, stop_loss=98, confidence=0.8, rules=RULES, market=LOTS)
    assert size.reason is not None
    assert size.reason.startswith("no_equity:")


@pytest.mark.parametrize(
    ("qty", "step", "expected"),
    [
        (37.5, 0.1, 37.5),
        (0.3, 0.1, 0.3),
        (1.23456, 0.001, 1.234),
        (7.0, 0.025, 7.0),
        (5, 10, 0),
        (123.9, 1, 123),
    ],
)
def test_round_down(qty: float, step: float, expected: float) -> None:
    assert round_down(qty, step) == expected
