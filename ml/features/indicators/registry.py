"""A name -> function table that the group modules fill with a decorator."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ml.features.kernels import Array

F = TypeVar("F", bound=Callable[..., Array])


class KindTable(dict[str, Callable[..., Array]]):
    def register(self, fn: F) -> F:
        self[fn.__name__] = fn
        return fn
