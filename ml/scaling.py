"""Robust per-feature scaling: fitted on training rows only, stored as JSON, applied identically live.

``scaled = clip((x - median) / scale, -clip, +clip)`` with ``scale`` the inter-quartile range.
Where the IQR is degenerate (a feature that sits on one value for more than half the rows) the
scale falls back to 1.349 standard deviations (the IQR of a normal distribution), and to 1 when
that is degenerate too, so no feature is divided by ~0. Clipping at ±10 (default) bounds the damage
of a data error: one absurd bar cannot send a feature to 1e6 in front of the model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ml.features.spec import FEATURE_SPEC, FeatureSpec, FeatureSpecMismatchError

FORMAT = "mlsignals.robust_scaler"
FORMAT_VERSION = 1
DEFAULT_CLIP = 10.0
# Below this, a quartile spread is treated as zero (features are O(1e-4) to O(1) by design).
MIN_SCALE = 1e-9
_NORMAL_IQR = 1.349


@dataclass(frozen=True, eq=False)
class RobustScaler:
    names: tuple[str, ...]
    spec_hash: str
    center: npt.NDArray[np.float64]
    scale: npt.NDArray[np.float64]
    clip: float = DEFAULT_CLIP
    n_rows: int = 0

    @property
    def n_features(self) -> int:
        return len(self.names)

    @classmethod
    def fit(
        cls, rows: npt.ArrayLike, *, spec: FeatureSpec = FEATURE_SPEC, clip: float = DEFAULT_CLIP
    ) -> RobustScaler:
        """Fit on training rows ``[n_rows, F]`` (or ``[..., F]``); they must all be finite: warm-up
        and gap rows are dropped by the caller, never zero-filled."""
        x = np.asarray(rows, dtype=np.float64)
        if x.ndim < 2 or x.shape[-1] != spec.n_features:
            raise FeatureSpecMismatchError(
                f"scaler fit needs rows of {spec.n_features} features, got shape {x.shape}"
            )
        x = x.reshape(-1, spec.n_features)
        if x.shape[0] < 2:
            raise ValueError(f"scaler fit needs at least 2 rows, got {x.shape[0]}")
        bad = ~np.isfinite(x)
        if bad.any():
            col = int(np.flatnonzero(bad.any(axis=0))[0])
            raise ValueError(
                f"scaler fit got {int(bad.any(axis=1).sum())} rows with non-finite values "
                f"(first in {spec.names[col]}); drop warm-up and gap rows before fitting"
            )
        q25, center, q75 = np.percentile(x, [25.0, 50.0, 75.0], axis=0)
        scale = q75 - q25
        weak = scale <= MIN_SCALE
        if weak.any():
            std = x[:, weak].std(axis=0) * _NORMAL_IQR
            scale[weak] = np.where(std > MIN_SCALE, std, 1.0)
        return cls(spec.names, spec.hash, center, scale, float(clip), int(x.shape[0]))

    def check(self, n_features: int, spec_hash: str | None = None) -> None:
        if n_features != self.n_features:
            raise FeatureSpecMismatchError(
                f"scaler was fitted on {self.n_features} features, got a matrix of {n_features}"
            )
        if spec_hash is not None and spec_hash != self.spec_hash:
            raise FeatureSpecMismatchError(
                f"scaler was fitted for feature spec {self.spec_hash[:12]}…, got {spec_hash[:12]}…"
            )

    def transform(self, features: npt.ArrayLike, spec_hash: str | None = None) -> npt.NDArray[np.float32]:
        """Scale ``[..., F]`` float64 features to C-contiguous float32; NaN stays NaN."""
        x = np.asarray(features, dtype=np.float64)
        self.check(int(x.shape[-1]), spec_hash)
        y = (x - self.center) / self.scale
        np.clip(y, -self.clip, self.clip, out=y)
        return np.ascontiguousarray(y, dtype=np.float32)

    # -- JSON ---------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, object]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "spec_hash": self.spec_hash,
            "clip": self.clip,
            "n_rows": self.n_rows,
            "names": list(self.names),
            # repr of a float64 round-trips exactly through JSON.
            "center": [float(v) for v in self.center],
            "scale": [float(v) for v in self.scale],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, doc: dict[str, object], *, spec: FeatureSpec | None = FEATURE_SPEC) -> RobustScaler:
        if doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"not a {FORMAT} v{FORMAT_VERSION} document")
        names = tuple(str(n) for n in _seq(doc["names"]))
        center = np.array(_seq(doc["center"]), dtype=np.float64)
        scale = np.array(_seq(doc["scale"]), dtype=np.float64)
        if not (len(names) == center.shape[0] == scale.shape[0]):
            raise ValueError("scaler JSON: names, center and scale differ in length")
        if not (np.isfinite(center).all() and np.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("scaler JSON: center and scale must be finite, scale positive")
        scaler = cls(
            names=names,
            spec_hash=str(doc["spec_hash"]),
            center=center,
            scale=scale,
            clip=float(doc["clip"]),  # type: ignore[arg-type]
            n_rows=int(doc["n_rows"]),  # type: ignore[call-overload]
        )
        if spec is not None and (scaler.spec_hash != spec.hash or names != spec.names):
            raise FeatureSpecMismatchError(
                f"scaler JSON is for feature spec {scaler.spec_hash[:12]}…, this engine computes "
                f"{spec.hash[:12]}… (version {spec.version})"
            )
        return scaler

    @classmethod
    def from_json(cls, text: str, *, spec: FeatureSpec | None = FEATURE_SPEC) -> RobustScaler:
        return cls.from_dict(json.loads(text), spec=spec)


def _seq(value: object) -> Sequence[object]:
    if not isinstance(value, list):
        raise ValueError("scaler JSON: expected a list")
    return value
