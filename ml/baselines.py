"""The simple predictors the network has to beat, fitted on the version's own training rows.

Each baseline gives, per sample and horizon, a score whose cross-sectional rank is compared with the
realised returns' (the information coefficient of ml/evaluation.py); only ranks within one anchor
time matter, so no baseline needs a return's scale.

* **ridge**: the ridge regression of ml/teacher.py: the training returns target of the recipe
  (``ml.losses.targets``: ``return / return_scale``, market-neutral by default, winsorised at
  ``target_clip_sd`` training standard deviations) on the newest row's RevIN-normalised features,
  with the recipe's ``teacher_ridge`` penalty. With distillation on (the default recipe) this is the
  very teacher whose predictions the network is trained on: the network's IC minus the ridge's is
  what the deep model adds to (or loses from) its linear teacher.
* **logistic**: ml/teacher.py's multinomial logistic regression of the direction classes on the same
  features plus the RevIN statistics (``teacher_l2`` penalty), scored ``p_LONG - p_SHORT``.
* **past_return**: one feature alone, the newest bar's past 1 h return (``ret_4`` at 15-minute bars;
  ``past_return_feature``), the same for every horizon, with its sign per horizon fitted on the
  training rows (the sign of its mean per-time IC against the market-neutral return there), so
  momentum and reversal are both allowed.

``fit_baselines`` fits all three; ``Baselines.to_arrays``/``from_arrays`` is what the registry stores
as ``baselines.npz`` next to a version (plain arrays, no pickles).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ml.dataset import Dataset
from ml.evaluation import ic_per_time
from ml.features import FEATURE_SPEC
from ml.losses import target_stats, targets
from ml.teacher import LinearTeacher, fit_teacher

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ml.training import TrainingRecipe

FloatArray = npt.NDArray[np.float64]

BASELINE_NAMES: tuple[str, ...] = ("ridge", "logistic", "past_return")
FORMAT = "mlsignals.baselines"
FORMAT_VERSION = 1
PAST_RETURN_MINUTES = 60
# The logistic regression's L-BFGS iterations (the teacher's own default).
LOGISTIC_MAX_ITER = 50


def past_return_feature(bar_minutes: int) -> str:
    """The feature holding the past ``PAST_RETURN_MINUTES`` of return at this bar length: ``ret_k``
    with ``k`` bars, the nearest ``k`` the feature spec has."""
    want = max(1, round(PAST_RETURN_MINUTES / bar_minutes))
    have = sorted(int(n.removeprefix("ret_")) for n in FEATURE_SPEC.names if n.removeprefix("ret_").isdigit())
    return f"ret_{min(have, key=lambda k: (abs(k - want), k))}"


@dataclass(frozen=True)
class Baselines:
    teacher: LinearTeacher
    feature: str  # the past-return feature's name
    signs: FloatArray  # [H] +1 momentum, -1 reversal

    @property
    def feature_index(self) -> int:
        return FEATURE_SPEC.index(self.feature)

    def predict(self, ds: Dataset, idx: npt.NDArray[np.int64]) -> dict[str, FloatArray]:
        """Scores ``[len(idx), H]`` per baseline name (``BASELINE_NAMES``)."""
        if idx.size == 0:
            empty = np.empty((0, self.teacher.n_horizons))
            return dict.fromkeys(BASELINE_NAMES, empty)
        ridge, probs = self.teacher.predict(ds, idx)
        # The scaled feature: the robust scaler is monotone (up to its clip), so ranks are kept.
        feature = ds.x[ds.row[idx], self.feature_index].astype(np.float64)
        return {
            "ridge": np.asarray(ridge, dtype=np.float64),
            "logistic": probs[:, :, 0] - probs[:, :, 1],
            "past_return": feature[:, None] * self.signs[None, :],
        }

    def to_arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        t = self.teacher
        return {
            "format": np.array(FORMAT),
            "format_version": np.array(FORMAT_VERSION),
            "returns_coef": t.returns_coef,
            "direction_coef": t.direction_coef,
            "direction_mean": t.direction_mean,
            "direction_scale": t.direction_scale,
            "n_horizons": np.array(t.n_horizons),
            "eps": np.array(t.eps),
            "feature": np.array(self.feature),
            "signs": self.signs,
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.NDArray[np.generic]]) -> Baselines:
        if str(arrays["format"]) != FORMAT or int(arrays["format_version"]) != FORMAT_VERSION:
            raise ValueError(f"not a {FORMAT} v{FORMAT_VERSION} artefact")
        teacher = LinearTeacher(
            returns_coef=np.asarray(arrays["returns_coef"], dtype=np.float64),
            direction_coef=np.asarray(arrays["direction_coef"], dtype=np.float64),
            direction_mean=np.asarray(arrays["direction_mean"], dtype=np.float64),
            direction_scale=np.asarray(arrays["direction_scale"], dtype=np.float64),
            n_horizons=int(arrays["n_horizons"]),
            eps=float(arrays["eps"]),
        )
        feature = str(arrays["feature"])
        FEATURE_SPEC.index(feature)  # KeyError for a feature this engine does not compute
        signs = np.asarray(arrays["signs"], dtype=np.float64)
        if signs.shape != (teacher.n_horizons,) or teacher.returns_coef.shape[1] != teacher.n_horizons:
            raise ValueError("baselines: coefficient shapes disagree with the number of horizons")
        return cls(teacher=teacher, feature=feature, signs=signs)


def fit_baselines(
    ds: Dataset,
    train_idx: npt.NDArray[np.int64],
    recipe: TrainingRecipe,
    *,
    max_iter: int = LOGISTIC_MAX_ITER,
    teacher: LinearTeacher | None = None,
) -> Baselines:
    """Fit the three baselines on the training samples ``train_idx`` of ``ds``. ``teacher``: the
    linear teacher that training already fitted on the same samples, target and penalties (the
    ridge and logistic baselines are that model), so it is not fitted twice."""
    if train_idx.size < 2:
        raise ValueError(f"baselines need training samples, got {train_idx.size}")
    if teacher is None:
        stats = target_stats(ds, train_idx, recipe)
        target = targets(ds, train_idx, recipe, stats)[0].astype(np.float64)
        teacher, _, _ = fit_teacher(
            ds,
            train_idx,
            target,
            eps=recipe.model.revin_eps,
            ridge=recipe.teacher_ridge,
            l2=recipe.teacher_l2,
            max_iter=max_iter,
        )
    feature = past_return_feature(recipe.model.bar_minutes)
    values = ds.x[ds.row[train_idx], FEATURE_SPEC.index(feature)].astype(np.float64)
    neutral = ds.neutral_returns[train_idx]
    times = ds.anchor_ms[train_idx]
    signs = np.ones(neutral.shape[1])
    for h in range(neutral.shape[1]):
        ic, _ = ic_per_time(values, neutral[:, h], times)
        if np.isfinite(ic) and ic < 0:
            signs[h] = -1.0
    return Baselines(teacher=teacher, feature=feature, signs=signs)
