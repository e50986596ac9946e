"""Golden vectors for ml.decoding: the one function that turns 20 outputs into a signal.

Every expected number below is worked out by hand from the rules in docs/SIGNALS.md with the default
output schema (return scales 0.03/0.06/0.12/0.2, risk scales 0.01/0.01/0.02/0.02) and temperature 2:
a logit vector [4, 0, 0] becomes z = [2, 0, 0], so p = e²/(e² + 2) = 0.786986… for the top class
and 1/(e² + 2) = 0.106507… for the others; [1, 0, 0] gives e^0.5/(e^0.5 + 2) = 0.451863…;
[0, 0, 6] gives e³/(e³ + 2) = 0.909443….

The signal is cost-aware (docs/SIGNALS.md): the 1 h returns output times its scale 0.06 is the
expected edge; with the default costs (2 × (5.5 + 2) bps = 0.0015) and margin (5 bps) a LONG or SHORT
needs |predicted return| > 0.002, the calibrated probabilities on its side, and a confidence of at
least 0.4. An output of 0.2 predicts 0.012, of -0.5 predicts -0.03, of 0.03 only 0.0018.
"""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import ConfigError
from core.settings import Settings
from ml.decoding import DecodeRules, decode, decode_arrays, risk_columns
from ml.model import DEFAULT_OUTPUT_SCHEMA

T = 2.0
P_TOP, P_REST = 0.7869860421615985, 0.10650697891920077
P_WEAK, P_WEAK_REST = 0.45186276187760605, 0.27406861906119695
P_FLAT, P_FLAT_REST = 0.9094429985127419, 0.045278500743629074
THIRD = 1.0 / 3.0


def row(
    returns: list[float], logits_1h: list[float], risk: list[float], logits_other: float = 0.0
) -> list[float]:
    logits = [logits_other] * 12
    logits[3:6] = logits_1h  # horizon index 1 (4 bars = 1 h) is the default primary horizon
    return [*returns, *logits, *risk]


OUTPUTS = np.array(
    [
        row([0.1, 0.2, -0.1, 0.5], [4, 0, 0], [0.5, 0.3, 1.0, 0.8]),  # LONG
        row([0.0, -0.5, 0.0, 0.0], [0, 4, 0], [0.5, 0.3, 1.0, 0.8]),  # SHORT
        row([0.0, 0.03, 0.0, 0.0], [4, 0, 0], [0.5, 0.3, 1.0, 0.8]),  # edge below cost -> NEUTRAL
        row([0.0, 0.2, 0.0, 0.0], [0, 0, 6], [0.5, 0.3, 1.0, 0.8]),  # FLAT: LONG not likelier -> NEUTRAL
        row([0.0, 0.2, 0.0, 0.0], [4, 0, 0], [10.0, 0.3, 1.0, 0.8]),  # LONG, stop clamped at the max
        row([0.0, -0.5, 0.0, 0.0], [0, 4, 0], [0.5, 0.05, 1.0, 0.8]),  # SHORT, stop clamped at the min
        row([0.0, 0.2, 0.0, 0.0], [0, 4, 0], [0.5, 0.3, 1.0, 0.8]),  # returns up, SHORT likelier -> NEUTRAL
        row([0.0, 0.2, 0.0, 0.0], [1, 0, 0], [0.5, 0.3, 1.0, 0.8]),  # LONG at confidence 0.4519
    ]
)
PRICES = np.array([100.0, 50.0, 10.0, 10.0, 100.0, 200.0, 10.0, 10.0])
COST = 0.0015


def test_golden_vectors_default_rules() -> None:
    signals = decode(OUTPUTS, T, PRICES, Settings())
    long_, short, weak, flat, wide, narrow, disagree, floor = signals

    assert long_.direction == "LONG"
    assert long_.confidence == pytest.approx(P_TOP, abs=1e-12)
    assert long_.edge == pytest.approx(0.2 * 0.06 - COST, abs=1e-12)
    assert long_.probabilities[1] == pytest.approx((P_TOP, P_REST, P_REST), abs=1e-12)
    assert long_.probabilities[0] == pytest.approx((THIRD, THIRD, THIRD), abs=1e-12)
    assert long_.classes == ("LONG", "LONG", "LONG", "LONG")  # zero logits tie: first class wins
    assert long_.returns == pytest.approx((0.1 * 0.03, 0.2 * 0.06, -0.1 * 0.12, 0.5 * 0.2), abs=1e-12)
    assert long_.risk == pytest.approx((0.005, 0.003, 0.02, 0.016), abs=1e-12)
    # adverse risk of a LONG at 1 h = drawdown over 4 bars = 0.005: stop 1.0 x, target 1.5 x.
    assert long_.stop_loss == pytest.approx(100.0 * (1 - 0.005), abs=1e-9)
    assert long_.take_profit == pytest.approx(100.0 * (1 + 0.0075), abs=1e-9)
    assert long_.entry_price == 100.0
    assert long_.horizons == (1, 4, 16, 48)
    assert long_.risk_names == ("drawdown_4", "rally_4", "drawdown_16", "rally_16")

    # adverse risk of a SHORT = rally over 4 bars = 0.003; stop above, target below.
    assert short.direction == "SHORT"
    assert short.confidence == pytest.approx(P_TOP, abs=1e-12)
    assert short.stop_loss == pytest.approx(50.0 * (1 + 0.003), abs=1e-9)
    assert short.take_profit == pytest.approx(50.0 * (1 - 0.0045), abs=1e-9)
    assert short.returns[1] == pytest.approx(-0.5 * 0.06, abs=1e-12)
    assert short.edge == pytest.approx(0.5 * 0.06 - COST, abs=1e-12)  # symmetric: |return| - cost

    # 0.03 x 0.06 = 0.0018 beats the cost 0.0015 but not cost + margin 0.002.
    assert weak.direction == "NEUTRAL"
    assert weak.confidence == pytest.approx(P_TOP, abs=1e-12)
    assert weak.edge == pytest.approx(0.0018 - COST, abs=1e-12)
    assert weak.stop_loss is None
    assert weak.take_profit is None

    assert flat.direction == "NEUTRAL"
    assert flat.classes[1] == "FLAT"
    assert flat.confidence == pytest.approx(P_FLAT_REST, abs=1e-12)
    assert flat.probabilities[1] == pytest.approx((P_FLAT_REST, P_FLAT_REST, P_FLAT), abs=1e-12)
    assert flat.stop_loss is None
    assert flat.take_profit is None

    assert disagree.direction == "NEUTRAL"
    assert disagree.confidence == pytest.approx(P_REST, abs=1e-12)

    assert floor.direction == "LONG"  # 0.4519 >= the default floor 0.4
    assert floor.confidence == pytest.approx(P_WEAK, abs=1e-12)
    assert floor.probabilities[1] == pytest.approx((P_WEAK, P_WEAK_REST, P_WEAK_REST), abs=1e-12)

    # drawdown 10 x 0.01 = 0.1: both distances clamp to max_stop_fraction 0.05.
    assert wide.stop_loss == pytest.approx(95.0, abs=1e-9)
    assert wide.take_profit == pytest.approx(105.0, abs=1e-9)
    # rally 0.05 x 0.01 = 0.0005: 0.0005 and 0.00075 both clamp to min_stop_fraction 0.002.
    assert narrow.stop_loss == pytest.approx(200.0 * 1.002, abs=1e-9)
    assert narrow.take_profit == pytest.approx(200.0 * 0.998, abs=1e-9)


def test_rules_come_from_settings() -> None:
    settings = Settings(
        decoding={"stop_loss_risk_multiple": 2.0, "take_profit_risk_multiple": 3.0},
    )
    floor = decode(OUTPUTS[7:8], T, PRICES[7:8], settings)[0]
    assert floor.direction == "LONG"
    # drawdown 0.005: stop 2 x = 0.01, target 3 x = 0.015.
    assert floor.stop_loss == pytest.approx(10.0 * 0.99, abs=1e-9)
    assert floor.take_profit == pytest.approx(10.0 * 1.015, abs=1e-9)

    strict = Settings(ml_integration={"signals": {"confidence_threshold": 0.5}})
    assert decode(OUTPUTS[7:8], T, PRICES[7:8], strict)[0].direction == "NEUTRAL"  # 0.4519 < 0.5


def test_costs_come_from_trading_settings() -> None:
    """Dearer trading (fees 30 bps, slippage 10 bps: a round trip of 0.008) needs a larger edge."""
    rules = DecodeRules.from_settings(Settings(trading={"fee_bps": 30.0, "slippage_bps": 10.0}))
    assert rules.round_trip_cost == pytest.approx(0.008)
    assert rules.edge_margin == pytest.approx(0.0005)
    decoded = decode(OUTPUTS[:2], T, PRICES[:2], rules)
    # LONG predicts 0.012 > 0.0085; SHORT predicts 0.03 > 0.0085: both stay.
    assert [s.direction for s in decoded] == ["LONG", "SHORT"]
    small = np.array([row([0.0, 0.12, 0.0, 0.0], [4, 0, 0], [0.5, 0.3, 1.0, 0.8])])  # 0.0072 < 0.0085
    assert decode(small, T, [10.0], rules)[0].direction == "NEUTRAL"
    margin = DecodeRules.from_settings(Settings(decoding={"edge_margin_bps": 0.0}))
    assert decode(OUTPUTS[2:3], T, PRICES[2:3], margin)[0].direction == "LONG"  # 0.0018 > 0.0015


def test_long_and_short_are_symmetric() -> None:
    """Mirroring the returns and swapping the LONG and SHORT logits mirrors the signal."""
    rng = np.random.default_rng(3)
    outputs = rng.normal(0.0, 1.0, (200, 20))
    mirrored = outputs.copy()
    mirrored[:, :4] *= -1
    logits = mirrored[:, 4:16].reshape(-1, 4, 3)
    logits[:, :, [0, 1]] = logits[:, :, [1, 0]]
    mirrored[:, 4:16] = logits.reshape(-1, 12)
    prices = np.full(200, 10.0)
    a = decode_arrays(outputs, 1.0, prices, DecodeRules())
    b = decode_arrays(mirrored, 1.0, prices, DecodeRules())
    swap = np.array([1, 0, 2])
    np.testing.assert_array_equal(swap[a.direction], b.direction)
    np.testing.assert_allclose(a.confidence, b.confidence)
    np.testing.assert_allclose(a.edge, b.edge)
    assert 0 < (a.direction != 2).sum() < 200


def test_primary_horizon_selects_logits_and_risk_window() -> None:
    outputs = np.zeros((1, 20))
    outputs[0, 3] = -0.5  # horizon 3 (48 bars): returns -0.5 x 0.2 = -0.1
    outputs[0, 13:16] = [0, 4, 0]  # and SHORT
    outputs[0, 16:20] = [0.5, 0.3, 1.0, 0.8]
    rules = DecodeRules(primary_horizon=3)
    signal = decode(outputs, T, [20.0], rules)[0]
    assert signal.direction == "SHORT"
    assert signal.primary_horizon == 3
    # 48 bars is beyond the longest risk window, so the 16-bar rally 0.8 x 0.02 = 0.016 applies.
    assert signal.stop_loss == pytest.approx(20.0 * 1.016, abs=1e-9)
    assert signal.take_profit == pytest.approx(20.0 * (1 - 0.024), abs=1e-9)


def test_risk_window_mapping() -> None:
    schema = DEFAULT_OUTPUT_SCHEMA
    assert risk_columns(schema, 1) == (0, 1)
    assert risk_columns(schema, 4) == (0, 1)
    assert risk_columns(schema, 16) == (2, 3)
    assert risk_columns(schema, 48) == (2, 3)


def test_temperature_sharpens_or_flattens() -> None:
    hot = decode_arrays(OUTPUTS[:1], 4.0, PRICES[:1], DecodeRules())
    cold = decode_arrays(OUTPUTS[:1], 1.0, PRICES[:1], DecodeRules())
    assert hot.confidence[0] < P_TOP < cold.confidence[0]
    assert 0.0 <= hot.confidence[0] <= 1.0
    assert 0.0 <= cold.confidence[0] <= 1.0


def test_vectorised_core_matches_the_list_api() -> None:
    arrays = decode_arrays(OUTPUTS, T, PRICES, DecodeRules())
    signals = decode(OUTPUTS, T, PRICES, DecodeRules())
    assert [s.direction for s in signals] == [("LONG", "SHORT", "NEUTRAL")[d] for d in arrays.direction]
    np.testing.assert_allclose([s.confidence for s in signals], arrays.confidence)
    np.testing.assert_allclose([s.edge for s in signals], arrays.edge)
    assert arrays.probabilities.shape == (8, 4, 3)
    np.testing.assert_allclose(arrays.probabilities.sum(axis=-1), 1.0)


@pytest.mark.parametrize(
    ("outputs", "temperature", "prices", "error"),
    [
        (np.zeros((2, 19)), 1.0, [1.0, 1.0], ValueError),
        (np.zeros((2, 20)), 1.0, [1.0], ValueError),
        (np.zeros((1, 20)), 0.0, [1.0], ValueError),
        (np.zeros((1, 20)), 1.0, [-1.0], ValueError),
        (np.full((1, 20), np.nan), 1.0, [1.0], ValueError),
    ],
)
def test_bad_inputs_are_refused(
    outputs: np.ndarray, temperature: float, prices: list[float], error: type
) -> None:
    with pytest.raises(error):
        decode(outputs, temperature, prices, DecodeRules())


def test_inconsistent_stop_bounds_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="min_stop_fraction"):
        DecodeRules(min_stop_fraction=0.1, max_stop_fraction=0.05)
