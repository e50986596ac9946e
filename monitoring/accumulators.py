"""Counters and histograms the exporter accumulates from rows it has read, as metric families."""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

Labels = tuple[str, ...]


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


@dataclass
class LabelledHistogram:
    """A histogram per label set; ``observe`` adds one value, ``add_buckets`` pre-bucketed counts."""

    name: str
    documentation: str
    label_names: Sequence[str]
    bounds: Sequence[float]  # upper bounds, ascending, without +Inf
    _counts: dict[Labels, list[int]] = field(default_factory=dict)
    _sums: dict[Labels, float] = field(default_factory=lambda: defaultdict(float))

    def _row(self, labels: Labels) -> list[int]:
        if labels not in self._counts:
            self._counts[labels] = [0] * (len(self.bounds) + 1)
        return self._counts[labels]

    def touch(self, labels: Labels) -> None:
        """Make the label set exist with zero counts (so that rules see 0, not an absent series)."""
        self._row(labels)

    def observe(self, labels: Labels, value: float) -> None:
        self.add_buckets(labels, [(bisect.bisect_left(self.bounds, value), 1)], value)

    def observe_many(self, labels: Labels, values: Sequence[float]) -> None:
        """Many values at once (a first refresh reads the whole signal table)."""
        array = np.asarray(values, dtype=np.float64)
        if array.size == 0:
            return
        # bisect_left per value: the first bound >= value, so a value equal to a bound falls in it.
        counts = np.bincount(np.searchsorted(self.bounds, array, side="left"), minlength=len(self.bounds) + 1)
        self.add_buckets(labels, ((i, int(c)) for i, c in enumerate(counts) if c), float(array.sum()))

    def add_buckets(self, labels: Labels, buckets: Iterable[tuple[int, int]], total: float) -> None:
        """``buckets``: (index of the first bound >= value, count); index len(bounds) is +Inf."""
        row = self._row(labels)
        for index, count in buckets:
            row[index] += count
        self._sums[labels] += total

    def family(self) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(self.name, self.documentation, labels=list(self.label_names))
        for labels, counts in sorted(self._counts.items()):
            cumulative, buckets = 0, []
            for bound, count in zip([*self.bounds, math.inf], counts, strict=True):
                cumulative += count
                buckets.append((_le(bound), float(cumulative)))
            fam.add_metric(list(labels), buckets, self._sums[labels])
        return fam


@dataclass
class LabelledCounter:
    name: str
    documentation: str
    label_names: Sequence[str]
    _values: dict[Labels, float] = field(default_factory=lambda: defaultdict(float))

    def touch(self, labels: Labels) -> None:
        self._values[labels] += 0.0

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        self._values[labels] += amount

    def value(self, labels: Labels) -> float:
        return self._values.get(labels, 0.0)

    def family(self) -> CounterMetricFamily:
        fam = CounterMetricFamily(self.name, self.documentation, labels=list(self.label_names))
        for labels, value in sorted(self._values.items()):
            fam.add_metric(list(labels), value)
        return fam
