"""What the tasks share: the retry options of the minute's tasks and their transient errors."""

from __future__ import annotations

from typing import TypedDict

from core.settings import get_settings
from pipeline.clock import minute_dt
from pipeline.errors import TRANSIENT_ERRORS

# Re-exported for the task modules, benchmarks and tests: they live in ``pipeline``.
__all__ = ["MINUTE_RETRY", "TRANSIENT_ERRORS", "RetryOptions", "minute_dt"]


class RetryOptions(TypedDict):
    """Celery's autoretry options, typed so that ``@app.task(**MINUTE_RETRY)`` type-checks."""

    autoretry_for: tuple[type[BaseException], ...]
    max_retries: int
    retry_backoff: int
    retry_backoff_max: int
    retry_jitter: bool


# Celery reads task options at import: the worker's settings at start decide.
_PIPELINE = get_settings().pipeline
MINUTE_RETRY = RetryOptions(
    autoretry_for=TRANSIENT_ERRORS,
    max_retries=_PIPELINE.task_max_retries,
    # Countdown drawn from [0, min(4, 2**retries)] s: four retries fit in ~11 s at worst.
    retry_backoff=1,
    retry_backoff_max=4,
    retry_jitter=True,
)
