"""The minute's live path: anchored bars of many symbols -> scaled float32 ``[symbols, 96, 240]``.

Per symbol it needs the newest ``96 + warmup`` bars. A symbol with an incomplete bar in that
window, or with any non-finite feature, is rejected with a reason; the others go on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from core.timegrid import MINUTE_MS, iso_minute
from data.bars import BarPanel
from ml.features.engine import bad_bars, compute_window
from ml.features.kernels import Array
from ml.features.spec import FEATURE_SPEC, FeatureSpec


class Scaler(Protocol):
    """What the live path needs from ``ml.scaling.RobustScaler``."""

    @property
    def spec_hash(self) -> str: ...

    def transform(self, features: Array) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True)
class SymbolQuality:
    symbol: str
    ok: bool
    reason: str | None = None
    incomplete_bars: int = 0


@dataclass(frozen=True)
class LiveRaw:
    """Unscaled features of the accepted symbols: ``values`` float64 ``[n_ok, 96, F]``."""

    values: Array
    symbols: list[str]
    quality: dict[str, SymbolQuality]
    bar_end_ms: npt.NDArray[np.int64]


@dataclass(frozen=True)
class LiveBatch:
    """The model input of one minute.

    ``tensor`` is C-contiguous float32 ``[len(symbols), 96, F]`` (``torch.from_numpy`` takes it
    as is), rows oldest bar first; ``bar_end_ms`` holds the end time of each of the 96 bars.
    """

    tensor: npt.NDArray[np.float32]
    symbols: list[str]
    quality: dict[str, SymbolQuality]
    bar_end_ms: npt.NDArray[np.int64]
    anchor_ms: int
    spec_hash: str
    rejected: dict[str, str] = field(default_factory=dict)


def _bad_reason(bad_row: npt.NDArray[np.bool_], n_bars: int) -> str:
    count = int(bad_row.sum())
    good = np.flatnonzero(~bad_row)
    if good.size and not bad_row[good[0] :].any():
        return f"insufficient history: {n_bars - count} of the {n_bars} bars needed"
    if not good.size:
        return f"insufficient history: 0 of the {n_bars} bars needed"
    return f"incomplete bars: {count}"


def live_features(panel: BarPanel, spec: FeatureSpec = FEATURE_SPEC) -> LiveRaw:
    """Unscaled features of the newest ``spec.context`` bars of every usable symbol."""
    need = spec.window
    if panel.n_bars < need:
        raise ValueError(
            f"the live path needs {need} bars per symbol ({spec.context} + warm-up {spec.warmup}), "
            f"the panel has {panel.n_bars}"
        )
    cut = slice(panel.n_bars - need, panel.n_bars)
    arrays = [
        np.asarray(getattr(panel, name)[:, cut], dtype=np.float64)
        for name in ("open", "high", "low", "close", "volume")
    ]
    bad = bad_bars(*arrays) | ~np.asarray(panel.complete[:, cut], dtype=bool)
    bar_ms = panel.bar_minutes * MINUTE_MS
    bar_end_ms = np.asarray(panel.bar_open_ms[-spec.context :], dtype=np.int64) + bar_ms

    quality: dict[str, SymbolQuality] = {}
    usable = ~bad.any(axis=1)
    for i in np.flatnonzero(~usable):
        sym = panel.symbols[i]
        quality[sym] = SymbolQuality(sym, False, _bad_reason(bad[i], need), int(bad[i].sum()))

    rows = np.flatnonzero(usable)
    o, h, l, c, v = (x[rows] for x in arrays)  # noqa: E741
    values = compute_window(o, h, l, c, v, bar_end_ms, bad=bad[rows], start=spec.warmup, spec=spec)
    finite = np.isfinite(values)
    keep: list[int] = []
    for k, i in enumerate(rows):
        sym = panel.symbols[i]
        if finite[k].all():
            keep.append(k)
            quality[sym] = SymbolQuality(sym, True)
            continue
        bar, feat = np.argwhere(~finite[k])[0]
        reason = f"non-finite feature {spec.names[feat]} at bar ending {iso_minute(int(bar_end_ms[bar]))}"
        quality[sym] = SymbolQuality(sym, False, reason)
    ordered = {sym: quality[sym] for sym in panel.symbols}
    return LiveRaw(values[keep], [panel.symbols[rows[k]] for k in keep], ordered, bar_end_ms)


def build_live_batch(panel: BarPanel, scaler: Scaler, *, spec: FeatureSpec = FEATURE_SPEC) -> LiveBatch:
    """Scaled float32 model input ``[accepted symbols, 96, F]`` plus per-symbol quality flags."""
    spec.check_hash(scaler.spec_hash, "the scaler")
    raw = live_features(panel, spec)
    tensor = np.ascontiguousarray(scaler.transform(raw.values), dtype=np.float32)
    rejected = {s: q.reason or "" for s, q in raw.quality.items() if not q.ok}
    return LiveBatch(
        tensor=tensor,
        symbols=raw.symbols,
        quality=raw.quality,
        bar_end_ms=raw.bar_end_ms,
        anchor_ms=panel.anchor_ms,
        spec_hash=spec.hash,
        rejected=rejected,
    )
