"""A linear teacher that denoises the training targets (distillation; docs/MODEL.md, "Why a teacher").

A 1-hour return of the simulator is about 99 % noise; the learnable part is a small, nearly linear
function of the newest bar's features. A network that sees 96 x 240 inputs needs far more noisy
samples to find it than a 2-core machine can show it in minutes, and meanwhile memorises what is
specific to the training period. A linear model of the newest bar's RevIN-normalised features
finds it from the same training samples in closed form, so the network is taught *its*
predictions (a clean function of the input that it learns in a few hundred steps) mixed with
the real labels:

* **returns**: ridge regression of the training target (``returns_target``, scaled) on the newest
  row's RevIN-normalised features (what the model's normalised input holds), per horizon;
* **direction**: multinomial logistic regression of the classes per horizon on the same features
  plus the RevIN statistics (each feature's window mean and log standard deviation: levels such
  as a symbol's volatility decide FLAT against the fixed thresholds).

Both are fitted on training samples only, with L2 penalties; they exist only during training and
are not part of the stored model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from ml.dataset import Dataset

FloatArray = npt.NDArray[np.float64]


def window_features(ds: Dataset, idx: npt.NDArray[np.int64], eps: float) -> tuple[FloatArray, FloatArray]:
    """(newest row RevIN-normalised ``[n, F]``, RevIN statistics ``[n, 2F]``) without the affine map.

    Window means and variances come from running sums over the dataset's rows (float64), so no
    ``[n, 96, F]`` block is ever built. Rows outside every valid window may be NaN; they are zeroed
    for the sums, which only ever span valid windows.
    """
    context = ds.context
    x = np.nan_to_num(ds.x.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    s1 = np.zeros((x.shape[0] + 1, x.shape[1]))
    np.cumsum(x, axis=0, out=s1[1:])
    rows = ds.row[idx]
    mean = (s1[rows + 1] - s1[rows + 1 - context]) / context
    np.square(x, out=x)
    np.cumsum(x, axis=0, out=s1[1:])
    var = np.maximum((s1[rows + 1] - s1[rows + 1 - context]) / context - mean * mean, 0.0)
    del s1, x
    last = ds.x[rows].astype(np.float64)
    z = (last - mean) / np.sqrt(var + eps)
    return z, np.concatenate([mean, 0.5 * np.log(var + eps)], axis=1)


@dataclass(frozen=True)
class LinearTeacher:
    returns_coef: FloatArray  # [F + 1, H] on [z, 1]
    direction_coef: FloatArray  # [3F + 1, H * 3] on standardised [z, stats, 1]
    direction_mean: FloatArray  # [3F]
    direction_scale: FloatArray  # [3F]
    n_horizons: int
    eps: float

    def predict(self, ds: Dataset, idx: npt.NDArray[np.int64]) -> tuple[FloatArray, FloatArray]:
        """(scaled return targets ``[n, H]``, class probabilities ``[n, H, 3]``)."""
        return self.predict_features(*window_features(ds, idx, self.eps))

    def predict_features(self, z: FloatArray, stats: FloatArray) -> tuple[FloatArray, FloatArray]:
        ret = np.c_[z, np.ones(z.shape[0])] @ self.returns_coef
        x = (np.c_[z, stats] - self.direction_mean) / self.direction_scale
        logits = (np.c_[x, np.ones(x.shape[0])] @ self.direction_coef).reshape(-1, self.n_horizons, 3)
        logits -= logits.max(axis=-1, keepdims=True)
        p = np.exp(logits)
        return ret, p / p.sum(axis=-1, keepdims=True)


def fit_teacher(
    ds: Dataset,
    idx: npt.NDArray[np.int64],
    returns_target: FloatArray,
    *,
    eps: float,
    ridge: float,
    l2: float,
    max_iter: int = 50,
) -> tuple[LinearTeacher, FloatArray, FloatArray]:
    """Fit on the training samples ``idx`` (``returns_target``: their scaled return targets);
    returns the teacher and its predictions for those samples."""
    z, stats = window_features(ds, idx, eps)
    xr = np.c_[z, np.ones(z.shape[0])]
    penalty = ridge * np.eye(xr.shape[1])
    penalty[-1, -1] = 0.0
    returns_coef = np.linalg.solve(xr.T @ xr + penalty, xr.T @ returns_target)

    del xr
    # One float32 design matrix, standardised in place: the float64 copies would double the peak.
    x_t = torch.empty(z.shape[0], z.shape[1] + stats.shape[1] + 1)
    x_t[:, : z.shape[1]] = torch.from_numpy(z)
    x_t[:, z.shape[1] : -1] = torch.from_numpy(stats)
    x_t[:, -1] = 1.0
    mean = x_t[:, :-1].double().mean(dim=0)
    scale = x_t[:, :-1].double().std(dim=0, unbiased=False)
    scale[scale < 1e-9] = 1.0
    x_t[:, :-1] -= mean.float()
    x_t[:, :-1] /= scale.float()
    mean_np, scale_np = mean.numpy(), scale.numpy()
    n_h = ds.classes.shape[1]
    y_t = torch.from_numpy(ds.classes[idx]).long()
    coef = torch.zeros(x_t.shape[1], n_h * 3, requires_grad=True)
    optimizer = torch.optim.LBFGS([coef], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = (x_t @ coef).reshape(-1, n_h, 3)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 3), y_t.reshape(-1))
        loss = loss + l2 * coef[:-1].square().sum() / x_t.shape[0]
        loss.backward()
        return loss

    optimizer.step(closure)
    teacher = LinearTeacher(
        returns_coef=returns_coef,
        direction_coef=coef.detach().double().numpy(),
        direction_mean=mean_np,
        direction_scale=scale_np,
        n_horizons=n_h,
        eps=eps,
    )
    return (teacher, *teacher.predict_features(z, stats))
