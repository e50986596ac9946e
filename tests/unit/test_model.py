"""UnifiedPatchTST: the pinned parameter count, the output contract, determinism and RevIN."""

from __future__ import annotations

import pytest
import torch

from ml.features import FEATURE_SPEC
from ml.model import (
    DEFAULT_OUTPUT_SCHEMA,
    DIRECTION,
    RETURNS,
    RISK,
    ModelConfig,
    OutputSchema,
    RevIN,
    build_model,
    count_parameters,
)

# DESIGN.md §5 says "about 2.8 M". RevIN 480 + patch conv 983 040 + statistics map 123 136
# + 3 encoder layers x 527 104 + final norm 512 + heads 202 516 + temperature 1.
DEFAULT_PARAMETERS = 2_890_997
PLAIN_PARAMETERS = DEFAULT_PARAMETERS - 123_136  # without the RevIN statistics path


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model(ModelConfig())
    # Output layers start at zero (see network.py); randomise them so the tests see real outputs.
    for head in (m.returns_head, m.direction_head, m.risk_head):
        out = head[-1]
        assert isinstance(out, torch.nn.Linear)
        torch.nn.init.normal_(out.weight, std=0.2)
    return m.eval()


def test_parameter_count_is_pinned() -> None:
    assert count_parameters(build_model(ModelConfig())) == DEFAULT_PARAMETERS
    assert count_parameters(build_model(ModelConfig(revin_stats=False))) == PLAIN_PARAMETERS
    size_mb = DEFAULT_PARAMETERS * 4 / 1e6
    assert 11.0 < size_mb < 12.0


def test_default_config_matches_the_design_and_the_feature_spec() -> None:
    c = ModelConfig()
    assert (c.context, c.n_features) == (FEATURE_SPEC.context, FEATURE_SPEC.n_features) == (96, 240)
    assert (c.d_model, c.patch_len, c.patch_stride, c.n_patches) == (256, 16, 8, 11)
    assert (c.n_layers, c.n_heads, c.d_ff, c.dropout) == (3, 4, 512, 0.1)
    assert c.revin_eps == 1e-5
    assert c.revin_affine
    assert c.horizons == (1, 4, 16, 48)
    assert c.direction_thresholds == (0.0015, 0.003, 0.007, 0.010)
    assert c.n_outputs == 20


def test_output_shape_and_ranges(model: torch.nn.Module) -> None:
    with torch.inference_mode():
        out = model(torch.randn(7, 96, 240))
    assert out.shape == (7, 20)
    assert out.dtype == torch.float32
    assert (out[:, RETURNS].abs() < 1).all()  # tanh
    assert (out[:, RISK] >= 0).all()  # softplus


def test_output_schema_is_pinned() -> None:
    s = DEFAULT_OUTPUT_SCHEMA
    assert s.names[:4] == ("return_h1", "return_h4", "return_h16", "return_h48")
    assert s.names[4:7] == ("logit_h1_long", "logit_h1_short", "logit_h1_flat")
    assert s.names[13:16] == ("logit_h48_long", "logit_h48_short", "logit_h48_flat")
    assert s.names[16:] == ("drawdown_4", "rally_4", "drawdown_16", "rally_16")
    assert (slice(0, 4), slice(4, 16), slice(16, 20)) == (RETURNS, DIRECTION, RISK)
    assert s.slices() == {"returns": (0, 4), "direction": (4, 16), "risk": (16, 20)}
    assert OutputSchema.from_json(s.to_json()) == s


def test_config_round_trips_through_json() -> None:
    c = ModelConfig(dropout=0.2, head_hidden=64)
    assert ModelConfig.from_json(c.to_json()) == c
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=250)


def test_inference_is_deterministic(model: torch.nn.Module) -> None:
    x = torch.randn(5, 96, 240)
    with torch.inference_mode():
        a, b = model(x), model(x.clone())
    assert torch.equal(a, b)


def test_each_sample_is_independent_of_the_rest_of_the_batch(model: torch.nn.Module) -> None:
    x = torch.randn(6, 96, 240)
    with torch.inference_mode():
        full = model(x)
        other = model(torch.cat([x[:3], torch.randn(3, 96, 240)]))
    torch.testing.assert_close(full[:3], other[:3], rtol=1e-5, atol=1e-5)


def test_revin_normalisation_is_invariant_to_per_sample_per_channel_affine_maps() -> None:
    torch.manual_seed(1)
    revin = RevIN(240, 1e-5, affine=True)
    with torch.no_grad():
        revin.weight.uniform_(0.5, 1.5)
        revin.bias.uniform_(-0.5, 0.5)
    x = torch.randn(4, 96, 240, dtype=torch.float64)
    scale = torch.rand(4, 1, 240, dtype=torch.float64) * 3 + 0.5
    shift = torch.randn(4, 1, 240, dtype=torch.float64) * 5
    revin = revin.double()
    y, stats = revin(x)
    y2, stats2 = revin(x * scale + shift)
    # Exact but for eps: sqrt(a²σ² + eps) vs a·sqrt(σ² + eps) differ by a relative eps/(2σ²) ~ 5e-6,
    # times |normalised value| (up to ~4) times the affine weight (up to 1.5).
    torch.testing.assert_close(y, y2, rtol=0, atol=1e-4)
    # The statistics carry exactly what the normalisation removed.
    torch.testing.assert_close(
        stats2[:, :240], stats[:, :240] * scale[:, 0] + shift[:, 0], rtol=1e-9, atol=1e-9
    )
    torch.testing.assert_close(stats2[:, 240:], stats[:, 240:] + torch.log(scale[:, 0]), rtol=0, atol=2e-5)


def test_without_the_statistics_path_the_model_is_blind_to_levels_and_scales() -> None:
    torch.manual_seed(2)
    plain = build_model(ModelConfig(revin_stats=False)).eval()
    for head in (plain.returns_head, plain.direction_head, plain.risk_head):
        out = head[-1]
        assert isinstance(out, torch.nn.Linear)
        torch.nn.init.normal_(out.weight, std=0.2)
    x = torch.randn(3, 96, 240)
    scale = torch.rand(3, 1, 240) * 2 + 1.0
    shift = torch.randn(3, 1, 240)
    with torch.inference_mode():
        torch.testing.assert_close(plain(x), plain(x * scale + shift), rtol=1e-3, atol=1e-3)


def test_the_statistics_path_sees_levels(model: torch.nn.Module) -> None:
    x = torch.randn(3, 96, 240)
    with torch.inference_mode():
        assert not torch.allclose(model(x), model(x + 1.0), atol=1e-4)


def test_temperature_is_a_parameter_stored_with_the_weights() -> None:
    m = build_model(ModelConfig())
    assert "log_temperature" in m.state_dict()
    assert m.temperature == pytest.approx(1.0)
    with torch.no_grad():
        m.log_temperature.fill_(0.5)
    assert m.temperature == pytest.approx(1.6487212707, rel=1e-6)


def test_zero_initialised_heads_start_neutral() -> None:
    m = build_model(ModelConfig()).eval()
    with torch.inference_mode():
        out = m(torch.randn(2, 96, 240))
    assert torch.equal(out[:, RETURNS], torch.zeros(2, 4))
    assert torch.equal(out[:, DIRECTION], torch.zeros(2, 12))


def test_horizon_temperatures_divide_each_horizons_logits_inside_forward() -> None:
    """Per-horizon calibration lives in the network: every consumer (PyTorch, ONNX) gets calibrated
    logits, and the other outputs do not move."""
    torch.manual_seed(1)
    model = build_model(ModelConfig()).eval()
    for head in (model.returns_head, model.direction_head, model.risk_head):
        out = head[-1]
        assert isinstance(out, torch.nn.Linear)
        torch.nn.init.normal_(out.weight, std=0.2)
    assert "horizon_log_temperature" in model.state_dict()
    x = torch.randn(4, 96, 240)
    with torch.inference_mode():
        before = model(x)
        model.horizon_log_temperature.copy_(torch.log(torch.tensor([1.0, 2.0, 0.5, 4.0])))
        after = model(x)
        model.horizon_log_temperature.zero_()
    assert model.horizon_temperatures == pytest.approx((1.0, 1.0, 1.0, 1.0))
    logits_before = before[:, DIRECTION].reshape(4, 4, 3)
    logits_after = after[:, DIRECTION].reshape(4, 4, 3)
    for h, t in enumerate((1.0, 2.0, 0.5, 4.0)):
        torch.testing.assert_close(logits_after[:, h], logits_before[:, h] / t)
    torch.testing.assert_close(after[:, RETURNS], before[:, RETURNS])
    torch.testing.assert_close(after[:, RISK], before[:, RISK])
