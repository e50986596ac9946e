"""Bounded label values for the free-text reasons the pipeline and the trading ledger store."""

from __future__ import annotations

from trading.risk import Rejection, code_of

# Why a symbol got no signal in a minute (the ``reason`` label of mlsignals_symbol_failures_total).
NO_CANDLE = "no_candle"
WINDOW_QUALITY = "window_quality"
FEATURE_ERROR = "feature_error"
WINDOW_MISSING = "window_missing"
VALIDATION = "validation"
OTHER = "other"
SYMBOL_FAILURE_REASONS = (NO_CANDLE, WINDOW_QUALITY, FEATURE_ERROR, WINDOW_MISSING, VALIDATION, OTHER)

# The prefixes the pipeline writes (pipeline/steps.py, pipeline/stages.py, data/freshness.py).
_PREFIXES = (
    ("no closed candle", NO_CANDLE),
    ("window_quality:", WINDOW_QUALITY),
    ("feature task error:", FEATURE_ERROR),
    ("feature window expired", WINDOW_MISSING),
    ("rejected by the feature stage", WINDOW_QUALITY),
)


def symbol_failure_reason(text: str) -> str:
    """The label of one stored failure reason: its known prefix, ``validation`` for a data rule
    (``rule: detail`` from data/validation.py), else ``other``."""
    for prefix, reason in _PREFIXES:
        if text.startswith(prefix):
            return reason
    head, sep, _ = text.partition(":")
    if sep and head and head.replace("_", "").isalnum() and head == head.lower():
        return VALIDATION
    return OTHER


NO_REASON = "none"
OPERATOR = "operator"
_REJECTIONS = frozenset(r.value for r in Rejection)
# Kill-switch reasons set by code rather than by a person typing one.
_HALT_CODES = _REJECTIONS | {"quality_breaker"}


def rejection_code(text: str | None) -> str:
    """An intent's stored reason as a code of trading.risk.Rejection; ``none`` or ``other``."""
    code = code_of(text)
    if code is None:
        return NO_REASON
    return code if code in _REJECTIONS else OTHER


def halt_code(text: str | None) -> str:
    """The kill switch's reason as a bounded label: a code set by the system, else ``operator``."""
    code = code_of(text)
    if code is None:
        return NO_REASON
    return code if code in _HALT_CODES else OPERATOR
