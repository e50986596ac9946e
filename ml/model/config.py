"""The architecture's typed configuration: the model is built from this object and nothing else.

It is serialised as ``config.json`` in every artefact (ml/registry.py), so a stored version can be
rebuilt without any number hard-coded in the code that loads it. The defaults are DESIGN.md §5.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DIRECTION_CLASSES: tuple[str, ...] = ("LONG", "SHORT", "FLAT")
# Risk outputs, in output order: max drawdown and max rally over the next 4 bars (1 h with 15-minute
# bars), then over the next 16 bars (4 h). Drawdown and rally are positive fractions of the entry.
RISK_NAMES: tuple[str, ...] = ("drawdown_4", "rally_4", "drawdown_16", "rally_16")
RISK_WINDOWS: tuple[int, ...] = (4, 4, 16, 16)
FORMAT = "mlsignals.unified_patchtst"
FORMAT_VERSION = 1


class ModelConfig(BaseModel):
    """UnifiedPatchTST hyper-parameters and the output contract's scales."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    n_features: int = Field(240, ge=1)
    context: int = Field(96, ge=1)
    d_model: int = Field(256, ge=8)
    patch_len: int = Field(16, ge=1)
    patch_stride: int = Field(8, ge=1)
    n_layers: int = Field(3, ge=1)
    n_heads: int = Field(4, ge=1)
    d_ff: int = Field(512, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    head_hidden: int = Field(256, ge=1)
    revin_eps: float = Field(1e-5, gt=0.0)
    revin_affine: bool = True
    # Feed RevIN's per-sample statistics (each feature's window mean and log standard deviation)
    # to the encoder through one linear map added to every patch embedding. RevIN removes them from
    # the input, and with them every level (a symbol's volatility against the fixed direction
    # thresholds, for one); a forecasting model gets them back by de-normalising its output, these
    # heads cannot, so they get them here. docs/MODEL.md has the measurements.
    revin_stats: bool = True
    # A linear path beside the transformer ("wide and deep"): the returns logits get a linear map of
    # the newest bar's RevIN-normalised features, the direction logits one of those features plus
    # the RevIN statistics. Training sets it to the closed-form ridge / logistic fit on the training
    # rows (ml/teacher.py) and keeps it fixed, so the transformer learns only what a linear model
    # misses; docs/MODEL.md has the measurements. Off for versions stored before it existed.
    linear_path: bool = False
    # Horizons in bars (15 m, 1 h, 4 h, 12 h with 15-minute bars) and the bar length they assume.
    horizons: tuple[int, int, int, int] = (1, 4, 16, 48)
    bar_minutes: int = Field(15, ge=1)
    # The returns head is tanh-bounded: it predicts return / scale, so the scales sit well above the
    # typical move of each horizon (about 5 standard deviations on the simulator) and tanh stays in
    # its near-linear range. Decoding multiplies back.
    return_scales: tuple[float, float, float, float] = (0.03, 0.06, 0.12, 0.2)
    # Risk is softplus-activated (never negative) and predicted in units of these fractions.
    risk_scales: tuple[float, float, float, float] = (0.01, 0.01, 0.02, 0.02)
    # Direction thresholds per horizon: |return| <= threshold is FLAT (DESIGN.md §5).
    direction_thresholds: tuple[float, float, float, float] = (0.0015, 0.003, 0.007, 0.010)
    # How training labels the direction classes (ml/labels.py): "threshold" is the fixed band above;
    # "tercile" (the training recipes' setting) ranks the market-neutral returns of each anchor
    # time in thirds, so the class prior does not move with volatility; the band then serves only
    # anchor times with too few symbols to rank. "threshold" for versions stored before it existed.
    direction_labels: Literal["threshold", "tercile"] = "threshold"

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.format != FORMAT or self.format_version != FORMAT_VERSION:
            raise ValueError(f"not a {FORMAT} v{FORMAT_VERSION} config")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.patch_len > self.context:
            raise ValueError(f"patch_len {self.patch_len} exceeds the context {self.context}")
        if any(s <= 0 for s in (*self.return_scales, *self.risk_scales, *self.direction_thresholds)):
            raise ValueError("scales and thresholds must be positive")
        if list(self.horizons) != sorted(set(self.horizons)) or self.horizons[0] < 1:
            raise ValueError("horizons must be strictly increasing and at least 1 bar")
        return self

    @property
    def n_patches(self) -> int:
        return (self.context - self.patch_len) // self.patch_stride + 1

    @property
    def n_horizons(self) -> int:
        return len(self.horizons)

    @property
    def n_outputs(self) -> int:
        return self.n_horizons + self.n_horizons * len(DIRECTION_CLASSES) + len(RISK_NAMES)

    @property
    def max_horizon(self) -> int:
        return max(self.horizons)

    def to_json(self) -> str:
        return self.model_dump_json(indent=1)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.model_validate_json(text)
