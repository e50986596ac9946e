"""The training loss and its normalisers, and the temperature fit (ml/training.py uses them).

* **returns**: MSE between the tanh output and the scaled return target (``return / return_scale``,
  market-neutral by default, winsorised at ``target_clip_sd`` training standard deviations), per
  horizon divided by the training variance of that target so each horizon weighs about 1 at the
  no-skill level; with cross-sectional batches the error's mean over each anchor time is removed
  first, so a move common to all symbols neither helps nor hurts;
* **direction**: focal cross-entropy (``focal_gamma``) with class weights ``frequency ** -power``
  per horizon (normalised to average 1 over the training labels), averaged over horizons;
* **risk**: MSE of the softplus output against ``risk / risk_scale`` (winsorised above),
  variance-normalised like the returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import torch

from ml.dataset import Dataset
from ml.model.config import DIRECTION_CLASSES, ModelConfig

RETURN_CLIP = 0.999


class TargetRecipe(Protocol):
    """What the targets and their normalisers read of a training recipe (``ml.training.TrainingRecipe``
    is one; the loss does not depend on the training loop's module)."""

    @property
    def model(self) -> ModelConfig: ...

    @property
    def returns_target(self) -> Literal["raw", "neutral"]: ...

    @property
    def target_clip_sd(self) -> float: ...

    @property
    def class_weight_power(self) -> float: ...


@dataclass
class TargetStats:
    """Training-set normalisers of the loss terms."""

    return_var: torch.Tensor  # [H]
    risk_var: torch.Tensor  # [4]
    class_weights: torch.Tensor  # [H, 3]
    return_clip: npt.NDArray[np.float64]  # [H] winsorising bounds of the scaled return targets
    risk_clip: npt.NDArray[np.float64]  # [4] upper bounds of the scaled risk targets

    def to(self, device: torch.device) -> TargetStats:
        return TargetStats(
            self.return_var.to(device),
            self.risk_var.to(device),
            self.class_weights.to(device),
            self.return_clip,
            self.risk_clip,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "return_clip": self.return_clip.tolist(),
            "risk_clip": self.risk_clip.tolist(),
            "return_var": self.return_var.tolist(),
            "risk_var": self.risk_var.tolist(),
            "class_weights": self.class_weights.tolist(),
        }


def raw_targets(
    ds: Dataset, idx: npt.NDArray[np.int64], recipe: TargetRecipe
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    config = recipe.model
    raw = ds.neutral_returns[idx] if recipe.returns_target == "neutral" else ds.returns[idx]
    return (
        raw / np.asarray(config.return_scales),
        ds.classes[idx],
        ds.risk[idx] / np.asarray(config.risk_scales),
    )


def targets(
    ds: Dataset, idx: npt.NDArray[np.int64], recipe: TargetRecipe, stats: TargetStats
) -> tuple[np.ndarray, ...]:
    ret, cls, risk = raw_targets(ds, idx, recipe)
    ret = np.clip(ret, -stats.return_clip, stats.return_clip)
    risk = np.minimum(risk, stats.risk_clip)
    return ret.astype(np.float32), cls, risk.astype(np.float32)


def target_stats(ds: Dataset, idx: npt.NDArray[np.int64], recipe: TargetRecipe) -> TargetStats:
    ret, cls, risk = raw_targets(ds, idx, recipe)
    k = recipe.target_clip_sd
    return_clip = np.minimum(k * ret.std(axis=0), RETURN_CLIP)
    risk_clip = risk.mean(axis=0) + k * risk.std(axis=0)
    ret = np.clip(ret, -return_clip, return_clip)
    risk = np.minimum(risk, risk_clip)
    n_c = len(DIRECTION_CLASSES)
    weights = np.ones((cls.shape[1], n_c))
    for h in range(cls.shape[1]):
        freq = np.bincount(cls[:, h], minlength=n_c) / cls.shape[0]
        w = np.where(freq > 0, np.maximum(freq, 1e-6) ** -recipe.class_weight_power, 0.0)
        weights[h] = w / (freq * w).sum()
    return TargetStats(
        return_var=torch.tensor(np.maximum(ret.var(axis=0), 1e-8), dtype=torch.float32),
        risk_var=torch.tensor(np.maximum(risk.var(axis=0), 1e-8), dtype=torch.float32),
        class_weights=torch.tensor(weights, dtype=torch.float32),
        return_clip=return_clip,
        risk_clip=risk_clip,
    )


def loss_terms(
    out: torch.Tensor,
    ret: torch.Tensor,
    cls: torch.Tensor,
    risk: torch.Tensor,
    stats: TargetStats,
    gamma: float,
    groups: torch.Tensor | None = None,
    soft: torch.Tensor | None = None,
    soft_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three loss terms. With ``groups`` (the anchor-time group of each sample) the returns term
    compares predictions and targets after removing each group's mean; with ``soft`` (teacher class
    probabilities ``[B, H, 3]``) the direction term mixes in their cross-entropy at ``soft_weight``."""
    n_h = ret.shape[1]
    n_c = len(DIRECTION_CLASSES)
    pred = out[:, :n_h]
    if groups is None:
        l_ret = ((pred - ret) ** 2 / stats.return_var).mean()
    else:
        n_g = int(groups.max()) + 1
        size = torch.zeros(n_g, device=out.device).index_add_(
            0, groups, torch.ones_like(groups, dtype=out.dtype)
        )
        err = pred - ret
        mean = torch.zeros(n_g, n_h, device=out.device, dtype=out.dtype).index_add_(0, groups, err)
        err = err - (mean / size[:, None])[groups]
        keep = (size[groups] > 1).to(out.dtype)[:, None]
        l_ret = (err**2 * keep / stats.return_var).sum() / keep.sum().clamp_min(1.0) / n_h
    logits = out[:, n_h : n_h + n_h * n_c].reshape(-1, n_h, n_c)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, cls.unsqueeze(-1)).squeeze(-1)  # [B, H]
    focal = (1.0 - logp.exp()).clamp_min(0.0) ** gamma if gamma > 0 else torch.ones_like(logp)
    alpha = stats.class_weights[torch.arange(n_h, device=cls.device)[None, :], cls]  # [B, H]
    l_dir = -(alpha * focal * logp).sum() / alpha.sum()
    if soft is not None and soft_weight > 0:
        # Cross-entropy against the teacher's class probabilities (distillation).
        l_soft = -(soft * torch.log_softmax(logits, dim=-1)).sum(dim=-1).mean()
        l_dir = (1.0 - soft_weight) * l_dir + soft_weight * l_soft
    l_risk = ((out[:, n_h + n_h * n_c :] - risk) ** 2 / stats.risk_var).mean()
    return l_ret, l_dir, l_risk


def fit_log_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """``log T`` minimising the mean negative log-likelihood of ``softmax(logits / T)``.

    ``logits`` is ``[N, H, C]``, ``labels`` ``[N, H]``. The NLL is convex in ``1/T``, hence
    unimodal in ``log T``: a golden-section search over ``[-3, 3]`` finds it deterministically.
    """
    logits = logits.double()
    target = labels.long().unsqueeze(-1)

    def nll(log_t: float) -> float:
        logp = torch.log_softmax(logits / math.exp(log_t), dim=-1)
        return float(-logp.gather(-1, target).mean())

    lo, hi = -3.0, 3.0
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return (lo + hi) / 2.0

