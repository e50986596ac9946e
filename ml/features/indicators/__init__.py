"""Feature families, one module per group; each maps a spec ``kind`` to a function of the context.

Every function takes the ``Ctx`` and the feature's parameters and returns the output columns
``ctx.s..T-1`` as an ``[n, T - s]`` float64 array.
"""

from __future__ import annotations

from collections.abc import Callable

from ml.features.indicators import (
    micro,
    momentum,
    price,
    rally,
    regime,
    timeenc,
    trend,
    volatility,
    volume,
)
from ml.features.kernels import Array

KindFn = Callable[..., Array]

REGISTRY: dict[str, KindFn] = {}
for _module in (price, trend, momentum, volatility, volume, micro, regime, rally, timeenc):
    for _name, _fn in _module.KINDS.items():
        if _name in REGISTRY:
            raise RuntimeError(f"feature kind {_name!r} is defined twice")
        REGISTRY[_name] = _fn
