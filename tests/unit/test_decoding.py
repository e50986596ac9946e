"""Golden vectors for ml.decoding: the one function that turns 20 outputs into a signal.

Every expected number below is worked out by hand from the rules in docs/SIGNALS.md with the default
output schema (return scales 0.03/0.06/0.12/0.2, risk scales 0.01/0.01/0.02/0.02) and temperature 2:
a logit vector [4, 0, 0] becomes z = [2, 0, 0], so p = e²/(e² + 2) = 0.786986… for the top class
and 1/(e² + 2) = 0.106507… for the others; [1, 0, 0] gives e^0.5/(e^0.5 + 2) = 0.451863…;
[0, 0, 6] gives e³/(e³ + 2) = 0.909443….
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
        row([0.0, 0.0, 0.0, 0.0], [1, 0, 0], [0.5, 0.3, 1.0, 0.8]),  # LONG below threshold -> NEUTRAL
        row([0.0, 0.0, 0.0, 0.0], [0, 0, 6], [0.5, 0.3, 1.0, 0.8]),  # FLAT -> NEUTRAL
        row([0.0, 0.0, 0.0, 0.0], [4, 0, 0], [10.0, 0.3, 1.0, 0.8]),  # LONG, stop clamped at the max
        row([0.0, 0.0, 0.0, 0.0], [0, 4, 0], [0.5, 0.05, 1.0, 0.8]),  # SHORT, stop clamped at the min
    ]
)
PRICES = np.array([100.0, 50.0, 10.0, 10.0, 100.0, 200.0])


def test_golden_vectors_default_rules() -> None:
    signals = decode(OUTPUTS, T, PRICES, Settings())
    long_, short, weak, flat, wide, narrow = signals

    assert long_.direction == "LONG"
    assert long_.confidence == pytest.approx(P_TOP, abs=1e-12)
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

    assert weak.direction == "NEUTRAL"
    assert weak.confidence == pytest.approx(P_WEAK, abs=1e-12)
    assert weak.probabilities[1] == pytest.approx((P_WEAK, P_WEAK_REST, P_WEAK_REST), abs=1e-12)
    assert weak.stop_loss is None
    assert weak.take_profit is None

    assert flat.direction == "NEUTRAL"
    assert flat.classes[1] == "FLAT"
    assert flat.confidence == pytest.approx(P_FLAT, abs=1e-12)
    assert flat.probabilities[1] == pytest.approx((P_FLAT_REST, P_FLAT_REST, P_FLAT), abs=1e-12)
    assert flat.stop_loss is None
    assert flat.take_profit is None

    # drawdown 10 x 0.01 = 0.1: both distances clamp to max_stop_fraction 0.05.
    assert wide.stop_loss == pytest.approx(95.0, abs=1e-9)
    assert wide.take_profit == pytest.approx(105.0, abs=1e-9)
    # rally 0.05 x 0.01 = 0.0005: 0.0005 and 0.00075 both clamp to min_stop_fraction 0.002.
    assert narrow.stop_loss == pytest.approx(200.0 * 1.002, abs=1e-9)
    assert narrow.take_profit == pytest.approx(200.0 * 0.998, abs=1e-9)


def test_rules_come_from_settings() -> None:
    settings = Settings(
        ml_integration={"signals": {"confidence_threshold": 0.4}},
        decoding={"stop_loss_risk_multiple": 2.0, "take_profit_risk_multiple": 3.0},
    )
    weak = decode(OUTPUTS[2:3], T, PRICES[2:3], settings)[0]
    assert weak.direction == "LONG"  # 0.4519 >= 0.4
    # drawdown 0.005: stop 2 x = 0.01, target 3 x = 0.015.
    assert weak.stop_loss == pytest.approx(10.0 * 0.99, abs=1e-9)
    assert weak.take_profit == pytest.approx(10.0 * 1.015, abs=1e-9)


def test_primary_horizon_selects_logits_and_risk_window() -> None:
    outputs = np.zeros((1, 20))
    outputs[0, 13:16] = [0, 4, 0]  # horizon 3 (48 bars): SHORT
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
    assert arrays.probabilities.shape == (6, 4, 3)
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
