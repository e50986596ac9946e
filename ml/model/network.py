"""UnifiedPatchTST in PyTorch (DESIGN.md §5), built only from a ``ModelConfig``.

``forward`` maps ``[batch, 96, 240]`` float32 to ``[batch, 20]``: tanh returns (4), raw direction
logits (12) and softplus risk (4), in the order of ``ml.model.schema``.

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
        mean = x.mean(dim=1, keepdim=True)
        var = x.var(dim=1, keepdim=True, unbiased=False)
        y = (x - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        stats = torch.cat([mean, 0.5 * torch.log(var + self.eps)], dim=2).squeeze(1)
        return y, stats


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
        z: torch.Tensor
        stats: torch.Tensor
        z, stats = self.revin(x)
        z = self.patch(z.transpose(1, 2)).transpose(1, 2)  # [B, patches, d_model]
        z = z + self.positions
        if self.stats is not None:
            z = z + self.stats(stats).unsqueeze(1)
        z = self.dropout(z)
        z = self.encoder(z)
        return z.mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        returns = torch.tanh(self.returns_head(h))
        logits = self.direction_head(h)
        log_t = self.horizon_log_temperature
        scale = torch.exp(-log_t).to(logits.dtype).repeat_interleave(len(DIRECTION_CLASSES))
        logits = logits * scale
        risk = nn.functional.softplus(self.risk_head(h))
        return torch.cat([returns, logits, risk], dim=1)


def build_model(config: ModelConfig) -> UnifiedPatchTST:
    return UnifiedPatchTST(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
