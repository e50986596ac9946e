"""UnifiedPatchTST in PyTorch (DESIGN.md §5), built only from a ``ModelConfig``.

``forward`` maps ``[batch, 96, 240]`` float32 to ``[batch, 20]``: tanh returns (4), raw direction
logits (12) and softplus risk (4), in the order of ``ml.model.schema``.

With ``linear_path`` (the training recipes' setting) a linear map of the newest bar's
RevIN-normalised features (and, for the classes, the RevIN statistics) is added to the returns and
direction heads before their activations: training sets it to the closed-form ridge / logistic fit
and freezes it, so the transformer learns what the linear model misses (docs/MODEL.md).

Calibration has two parts, both fitted on validation data after training (ml/training.py) and
stored with the weights. The per-horizon temperatures (buffer ``horizon_log_temperature``, one per
horizon) are applied inside ``forward``: the 12 direction outputs are logits already divided by
their horizon's temperature, so every consumer (PyTorch, ONNX) gets calibrated logits. The scalar
temperature (``log_temperature``) is not applied by ``forward``: decoding divides by it, which keeps
one place where probabilities are made. A model calibrated per horizon keeps it at 1; a version
stored before per-horizon calibration has all horizon temperatures at 1 and only the scalar.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ml.model.config import DIRECTION_CLASSES, RISK_NAMES, ModelConfig


class RevIN(nn.Module):
    """Reversible instance normalisation: each sample's channels to zero mean, unit variance over time.

    Only the normalising half is used: the heads predict returns, classes and risk, not values in the
    input's space, so there is nothing to de-normalise.
    """

    def __init__(self, n_features: int, eps: float, affine: bool) -> None:
        super().__init__()
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(n_features))
            self.bias = nn.Parameter(torch.zeros(n_features))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, T, F]`` -> (normalised ``[B, T, F]``, statistics ``[B, 2F]``: mean, log std)."""
        y, stats = self.normalise(x)
        return self.apply_affine(y), stats

    def apply_affine(self, y: torch.Tensor) -> torch.Tensor:
        """The learned per-feature map ``γ·y + β`` (the identity without ``affine``)."""
        return y * self.weight + self.bias if self.affine else y

    def normalise(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Like ``forward`` without the affine map (what the linear path reads)."""
        mean = x.mean(dim=1, keepdim=True)
        var = x.var(dim=1, keepdim=True, unbiased=False)
        y = (x - mean) * torch.rsqrt(var + self.eps)
        stats = torch.cat([mean, 0.5 * torch.log(var + self.eps)], dim=2).squeeze(1)
        return y, stats


class LinearPath(nn.Module):
    """The linear ("wide") part of the model: returns and direction logits that are linear in the
    newest bar's RevIN-normalised features ``z`` (returns) and in ``[z, RevIN statistics]``
    standardised by fixed training-row moments (direction). Zero until ``load_fit`` sets it."""

    input_mean: torch.Tensor  # buffers, typed for attribute access
    input_scale: torch.Tensor

    def __init__(self, n_features: int, n_horizons: int) -> None:
        super().__init__()
        self.returns = nn.Linear(n_features, n_horizons)
        self.direction = nn.Linear(3 * n_features, n_horizons * len(DIRECTION_CLASSES))
        for layer in (self.returns, self.direction):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.register_buffer("input_mean", torch.zeros(3 * n_features))
        self.register_buffer("input_scale", torch.ones(3 * n_features))

    def forward(self, last: torch.Tensor, stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(returns ``[B, H]``, direction logits ``[B, 3H]``) in the heads' pre-activation units."""
        features = (torch.cat([last, stats], dim=1) - self.input_mean) / self.input_scale
        return self.returns(last), self.direction(features)

    @torch.no_grad()
    def load_fit(
        self,
        returns_coef: torch.Tensor,
        direction_coef: torch.Tensor,
        direction_mean: torch.Tensor,
        direction_scale: torch.Tensor,
    ) -> None:
        """Set the weights from a linear fit: ``returns_coef`` ``[F + 1, H]`` on ``[z, 1]``,
        ``direction_coef`` ``[3F + 1, 3H]`` on ``[standardised [z, stats], 1]`` (ml/teacher.py)."""
        self.returns.weight.copy_(returns_coef[:-1].T)
        self.returns.bias.copy_(returns_coef[-1])
        self.direction.weight.copy_(direction_coef[:-1].T)
        self.direction.bias.copy_(direction_coef[-1])
        self.input_mean.copy_(direction_mean)
        self.input_scale.copy_(direction_scale)


def sinusoidal_positions(n_positions: int, d_model: int) -> torch.Tensor:
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10_000.0) / d_model))
    table = torch.zeros(n_positions, d_model)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: d_model // 2])
    return table


def _head(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    out = nn.Linear(hidden, d_out)
    # Zero-initialised output layers: the untrained model predicts zero returns and uniform classes,
    # and moves away only where the gradient is consistent. With targets this noisy, a random start
    # spends its first epochs shrinking random outputs (and fits noise on the way).
    nn.init.zeros_(out.weight)
    nn.init.zeros_(out.bias)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), out)


class UnifiedPatchTST(nn.Module):
    positions: torch.Tensor  # a buffer (register_buffer below), typed for attribute access
    horizon_log_temperature: torch.Tensor  # a buffer too

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.revin = RevIN(c.n_features, c.revin_eps, c.revin_affine)
        # Channel-mixing patch embedding: one convolution over all features, cheap at inference.
        self.patch = nn.Conv1d(c.n_features, c.d_model, c.patch_len, stride=c.patch_stride, bias=False)
        self.stats = nn.Linear(2 * c.n_features, c.d_model) if c.revin_stats else None
        # Fixed, not learned, so it is not part of the state dict: it follows from the config.
        self.register_buffer("positions", sinusoidal_positions(c.n_patches, c.d_model), persistent=False)
        self.dropout = nn.Dropout(c.dropout)
        layer = nn.TransformerEncoderLayer(
            d_model=c.d_model,
            nhead=c.n_heads,
            dim_feedforward=c.d_ff,
            dropout=c.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # Pre-norm layers train stably at a high learning rate; the final norm closes the stack.
        self.encoder = nn.TransformerEncoder(
            layer, num_layers=c.n_layers, norm=nn.LayerNorm(c.d_model), enable_nested_tensor=False
        )
        n_h = c.n_horizons
        self.returns_head = _head(c.d_model, c.head_hidden, n_h, c.dropout)
        self.direction_head = _head(c.d_model, c.head_hidden, n_h * len(DIRECTION_CLASSES), c.dropout)
        self.risk_head = _head(c.d_model, c.head_hidden, len(RISK_NAMES), c.dropout)
        self.linear = LinearPath(c.n_features, n_h) if c.linear_path else None
        # log T = 0 -> T = 1. Trained after the network, on validation data (ml/training.py).
        self.log_temperature = nn.Parameter(torch.zeros(()))
        self.register_buffer("horizon_log_temperature", torch.zeros(n_h))

    @property
    def temperature(self) -> float:
        return float(self.log_temperature.detach().exp())

    @property
    def horizon_temperatures(self) -> tuple[float, ...]:
        """The per-horizon temperatures applied in ``forward`` (1.0 each until calibrated)."""
        log_t = self.horizon_log_temperature
        return tuple(float(v) for v in log_t.detach().exp())

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, F]`` -> pooled representation ``[B, d_model]``."""
        return self._encode(*self.revin(x))

    def _encode(self, z: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """RevIN's output (affine map applied) and statistics -> pooled representation."""
        z = self.patch(z.transpose(1, 2)).transpose(1, 2)  # [B, patches, d_model]
        z = z + self.positions
        if self.stats is not None:
            z = z + self.stats(stats).unsqueeze(1)
        z = self.dropout(z)
        z = self.encoder(z)
        return z.mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, stats = self.revin.normalise(x)
        h = self._encode(self.revin.apply_affine(z), stats)
        returns = self.returns_head(h)
        logits = self.direction_head(h)
        if self.linear is not None:
            linear_returns, linear_logits = self.linear(z[:, -1, :], stats)
            returns = returns + linear_returns
            logits = logits + linear_logits
        returns = torch.tanh(returns)
        log_t = self.horizon_log_temperature
        scale = torch.exp(-log_t).to(logits.dtype).repeat_interleave(len(DIRECTION_CLASSES))
        logits = logits * scale
        risk = nn.functional.softplus(self.risk_head(h))
        return torch.cat([returns, logits, risk], dim=1)


def build_model(config: ModelConfig) -> UnifiedPatchTST:
    return UnifiedPatchTST(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
