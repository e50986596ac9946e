"""Training samples from the candle store, built exactly as the live minute builds its input.

Per symbol the 1-minute candles become anchored bars (``data.bars.resample_anchored``) for one or
more *phases* (anchor minute mod bar length; phase 0 anchors on the quarter hour, other phases
multiply the samples the way live anchors at every minute do), then features
(``ml.features.compute``) and labels (``ml.labels``). A sample is the window of the 96 consecutive
feature rows ending at an anchor ``t``; it exists only when all 96 rows are finite (rows inside the
warm-up or next to an incomplete bar are dropped, never zero-filled) and every future bar its labels
need is complete.

Samples are not materialised: the scaled rows of all series live in one float32 matrix and a
sample is an index into it, gathered into a ``[batch, 96, F]`` block only when a batch is needed.

The split is by anchor time, the same boundaries for every symbol: train, a purge gap, validation,
a purge gap, test. The gap (default: the longest horizon, the context and the features' warm-up,
48 + 96 + 200 bars) is longer than any label's look-ahead, so no training label overlaps a
validation or test label, and no validation input — the 96-bar window, nor the up to 200 older bars
its features read — reaches back into a bar that a training label looked at.

Direction classes are market-neutral, like the returns target: the class of a sample comes from its
return minus the mean return of the symbols at the same anchor time (``cross_sectional_demean``;
the raw return where fewer than ``MIN_NEUTRAL_GROUP`` symbols share the time). The class prior
therefore holds no market drift of the training window: LONG means "beats the market". With
``direction_labels="tercile"`` (the recipes' setting) the classes are the thirds of that
cross-section (``ml.labels.tercile_classes``): LONG means "in the best third", and the class prior
stays a third each in calm and wild periods alike.
The scaler is fitted on rows that end before the first gap only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from core.errors import PermanentError
from core.logging import get_logger
from core.timegrid import MINUTE_MS
from data.bars import resample_anchored
from data.store import CandleStore
from ml.features import FEATURE_SPEC, compute
from ml.labels import direction_classes, make_labels, tercile_classes
from ml.model.config import ModelConfig
from ml.scaling import RobustScaler

log = get_logger(__name__)

TRAIN, VAL, TEST, PURGED = 0, 1, 2, -1
PART_NAMES = {"train": TRAIN, "val": VAL, "test": TEST}
# The scaler's quantiles are stable long before this many rows; more only costs time.
_SCALER_MAX_ROWS = 300_000
MIN_NEUTRAL_GROUP = 5

ProgressFn = Callable[[str, int, int], None]


class DatasetError(PermanentError):
    """Not enough usable history to build the requested samples."""


@dataclass(frozen=True)
class DatasetSpec:
    """How samples are cut from history (part of the training recipe)."""

    bar_minutes: int = 15
    phases: tuple[int, ...] = (0,)
    train_fraction: float = 0.70
    val_fraction: float = 0.15
    # None: the longest horizon, the context and the features' warm-up (48 + 96 + 200 bars with the
    # default model and feature spec).
    purge_bars: int | None = None

    def gap_bars(self, config: ModelConfig) -> int:
        if self.purge_bars is not None:
            return self.purge_bars
        return config.max_horizon + config.context + FEATURE_SPEC.warmup


@dataclass(frozen=True)
class SplitBounds:
    """Anchor-time boundaries: train ``[start, train_end)``, val ``[val_start, val_end)``,
    test ``[test_start, end]``; ``val_start - train_end == test_start - val_end == gap_ms``."""

    start_ms: int
    train_end_ms: int
    val_start_ms: int
    val_end_ms: int
    test_start_ms: int
    end_ms: int
    gap_ms: int

    @classmethod
    def from_anchors(
        cls, first_ms: int, last_ms: int, train_fraction: float, val_fraction: float, gap_ms: int
    ) -> SplitBounds:
        span = last_ms - first_ms
        # On the minute grid, so the boundaries read as plain times.
        b1 = first_ms + int(span * train_fraction) // MINUTE_MS * MINUTE_MS
        b2 = first_ms + int(span * (train_fraction + val_fraction)) // MINUTE_MS * MINUTE_MS
        return cls(first_ms, b1, b1 + gap_ms, b2, b2 + gap_ms, last_ms, gap_ms)

    def part(self, anchor_ms: npt.NDArray[np.int64]) -> npt.NDArray[np.int8]:
        out = np.full(anchor_ms.shape, PURGED, dtype=np.int8)
        out[(anchor_ms >= self.start_ms) & (anchor_ms < self.train_end_ms)] = TRAIN
        out[(anchor_ms >= self.val_start_ms) & (anchor_ms < self.val_end_ms)] = VAL
        out[(anchor_ms >= self.test_start_ms) & (anchor_ms <= self.end_ms)] = TEST
        return out

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> SplitBounds:
        return cls(**{k: int(doc[k]) for k in cls.__dataclass_fields__})


@dataclass
class _Series:
    symbol: str
    phase: int
    end_ms: npt.NDArray[np.int64]
    features: npt.NDArray[np.float64]  # [n, F] raw
    close: npt.NDArray[np.float64]
    anchors: npt.NDArray[np.int64]  # rows that are valid samples
    returns: npt.NDArray[np.float64]
    risk: npt.NDArray[np.float64]


@dataclass
class Dataset:
    x: npt.NDArray[np.float32]  # [rows, F] scaled rows of every series
    row: npt.NDArray[np.int64]  # [S] row of each sample's newest bar
    anchor_ms: npt.NDArray[np.int64]  # [S] end time of that bar (the live anchor)
    symbol: npt.NDArray[np.int32]  # [S] index into ``symbols``
    phase: npt.NDArray[np.int16]
    close: npt.NDArray[np.float64]  # [S] entry reference price
    returns: npt.NDArray[np.float64]  # [S, H]
    classes: npt.NDArray[np.int64]  # [S, H]
    risk: npt.NDArray[np.float64]  # [S, 4]
    part: npt.NDArray[np.int8]  # [S] TRAIN / VAL / TEST / PURGED
    symbols: list[str]
    split: SplitBounds
    scaler: RobustScaler
    context: int
    info: dict[str, Any] = field(default_factory=dict)
    _neutral: npt.NDArray[np.float64] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.row.shape[0])

    def indices(self, name: str) -> npt.NDArray[np.int64]:
        return np.flatnonzero(self.part == PART_NAMES[name]).astype(np.int64)

    @property
    def neutral_returns(self) -> npt.NDArray[np.float64]:
        """Returns minus the mean over the symbols sharing the sample's anchor time (raw where fewer
        than ``MIN_NEUTRAL_GROUP`` share it): the market factor removed, the cross-section kept."""
        if self._neutral is None:
            self._neutral = cross_sectional_demean(self.returns, self.anchor_ms)
        return self._neutral

    def windows(self, idx: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """The model input of samples ``idx``: float32 ``[len(idx), context, F]``, oldest row first."""
        offsets = np.arange(1 - self.context, 1, dtype=np.int64)
        windows: npt.NDArray[np.float32] = self.x[self.row[idx][:, None] + offsets[None, :]]
        return windows


def cross_sectional_demean(
    values: npt.NDArray[np.float64], times: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    _, group, counts = np.unique(times, return_inverse=True, return_counts=True)
    out = values.copy()
    for j in range(values.shape[1]):
        mean = np.bincount(group, weights=values[:, j]) / counts
        out[:, j] = values[:, j] - mean[group]
    small = counts[group] < MIN_NEUTRAL_GROUP
    out[small] = values[small]
    return out


def _series(
    symbol: str, candles: pd.DataFrame, phase: int, config: ModelConfig, spec: DatasetSpec
) -> _Series | None:
    bars = resample_anchored(candles, spec.bar_minutes, phase)
    feats = compute(bars, bar_minutes=spec.bar_minutes).to_numpy(dtype=np.float64)
    n = feats.shape[0]
    if n < config.context:
        return None
    open_ms = pd.DatetimeIndex(bars.index).tz_convert(None).to_numpy(dtype="datetime64[ms]").astype(np.int64)
    end_ms = open_ms + spec.bar_minutes * MINUTE_MS
    labels = make_labels(
        bars["close"].to_numpy(),
        bars["high"].to_numpy(),
        bars["low"].to_numpy(),
        bars["complete"].to_numpy(dtype=bool),
        config.horizons,
        config.direction_thresholds,
    )
    bad_row = ~np.isfinite(feats).all(axis=1)
    bad = np.concatenate([[0], np.cumsum(bad_row)])
    t = np.arange(config.context - 1, n)
    window_ok = bad[t + 1] - bad[t + 1 - config.context] == 0
    anchors = t[window_ok & labels.valid[t]]
    return _Series(
        symbol=symbol,
        phase=phase,
        end_ms=end_ms,
        features=feats,
        close=bars["close"].to_numpy(dtype=np.float64),
        anchors=anchors.astype(np.int64),
        returns=labels.returns[anchors],
        risk=labels.risk[anchors],
    )


def build_dataset(
    candles: Mapping[str, pd.DataFrame],
    config: ModelConfig,
    spec: DatasetSpec,
    *,
    scaler: RobustScaler | None = None,
    split: SplitBounds | None = None,
    progress: ProgressFn | None = None,
) -> Dataset:
    """Samples of every symbol and phase; fits the scaler on training rows unless one is given.

    ``split`` fixes the boundaries (evaluation of a stored version); otherwise they follow from the
    anchors' time range and ``spec``'s fractions.
    """
    if config.n_features != FEATURE_SPEC.n_features or config.context != FEATURE_SPEC.context:
        raise DatasetError(
            f"model expects {config.context}x{config.n_features} inputs, the feature spec gives "
            f"{FEATURE_SPEC.context}x{FEATURE_SPEC.n_features}"
        )
    symbols = [s for s, frame in candles.items() if len(frame)]
    jobs = [(s, p) for s in symbols for p in spec.phases]
    series: list[_Series] = []
    for k, (symbol, phase) in enumerate(jobs):
        item = _series(symbol, candles[symbol], phase, config, spec)
        if item is not None and item.anchors.size:
            series.append(item)
        if progress is not None:
            progress("features", k + 1, len(jobs))
    if not series:
        raise DatasetError(
            "no usable samples: each symbol needs at least "
            f"{FEATURE_SPEC.warmup + config.context + config.max_horizon} complete bars of "
            f"{spec.bar_minutes} minutes"
        )
    anchor_ms = np.concatenate([s.end_ms[s.anchors] for s in series])
    if split is None:
        gap_ms = spec.gap_bars(config) * spec.bar_minutes * MINUTE_MS
        split = SplitBounds.from_anchors(
            int(anchor_ms.min()), int(anchor_ms.max()), spec.train_fraction, spec.val_fraction, gap_ms
        )
        shortest = min(split.val_end_ms - split.val_start_ms, split.end_ms - split.test_start_ms)
        if shortest <= 0:
            span_days = (split.end_ms - split.start_ms) / 86_400_000
            raise DatasetError(
                f"history too short: {span_days:.1f} days of usable anchors leave no validation or test "
                f"period after the {gap_ms / 3_600_000:.0f} h purge gaps; load more days "
                "(the first ~3 days of any history are feature warm-up)"
            )
    part = split.part(anchor_ms)
    if scaler is None:
        scaler = _fit_scaler(series, split)
    offsets = np.cumsum([0] + [s.features.shape[0] for s in series])
    x = np.empty((int(offsets[-1]), config.n_features), dtype=np.float32)
    for s, off in zip(series, offsets[:-1], strict=False):
        x[off : off + s.features.shape[0]] = scaler.transform(s.features, FEATURE_SPEC.hash)
        s.features = np.empty((0, config.n_features))  # release the float64 copy early
    index = {name: i for i, name in enumerate(symbols)}
    returns = np.concatenate([s.returns for s in series])
    neutral = cross_sectional_demean(returns, anchor_ms)
    thresholds = np.asarray(config.direction_thresholds, dtype=np.float64)
    if config.direction_labels == "tercile":
        classes = tercile_classes(neutral, anchor_ms, thresholds, MIN_NEUTRAL_GROUP)
    else:
        classes = direction_classes(neutral, thresholds)
    ds = Dataset(
        x=x,
        row=np.concatenate([s.anchors + off for s, off in zip(series, offsets[:-1], strict=False)]),
        anchor_ms=anchor_ms,
        symbol=np.concatenate([np.full(s.anchors.size, index[s.symbol], np.int32) for s in series]),
        phase=np.concatenate([np.full(s.anchors.size, s.phase, np.int16) for s in series]),
        close=np.concatenate([s.close[s.anchors] for s in series]),
        returns=returns,
        classes=classes,
        risk=np.concatenate([s.risk for s in series]),
        part=part,
        symbols=symbols,
        split=split,
        scaler=scaler,
        context=config.context,
        _neutral=neutral,
    )
    ds.info = {
        "samples": {name: int((part == code).sum()) for name, code in PART_NAMES.items()},
        "purged": int((part == PURGED).sum()),
        "rows": int(x.shape[0]),
        "series": len(series),
    }
    return ds


def _fit_scaler(series: Sequence[_Series], split: SplitBounds) -> RobustScaler:
    rows = []
    for s in series:
        keep = (s.end_ms < split.train_end_ms) & np.isfinite(s.features).all(axis=1)
        rows.append(s.features[keep])
    train_rows = np.concatenate(rows)
    if train_rows.shape[0] < 2:
        raise DatasetError("the training period holds no finite feature rows to fit the scaler on")
    if train_rows.shape[0] > _SCALER_MAX_ROWS:
        # Evenly spaced rather than random: deterministic and covers the whole training period.
        pick = np.linspace(0, train_rows.shape[0] - 1, _SCALER_MAX_ROWS).astype(np.int64)
        train_rows = train_rows[pick]
    return RobustScaler.fit(train_rows)


def load_candles(
    store: CandleStore,
    exchange: str,
    symbols: Sequence[str],
    start_ms: int,
    end_ms: int,
    progress: ProgressFn | None = None,
) -> dict[str, pd.DataFrame]:
    out: dict[str, pd.DataFrame] = {}
    for k, symbol in enumerate(symbols):
        frame = store.read_candles(exchange, symbol, start_ms, end_ms)
        if len(frame):
            out[symbol] = frame
        else:
            log.warning("no stored candles in the requested range; skipped", symbol=symbol)
        if progress is not None:
            progress("candles", k + 1, len(symbols))
    return out
