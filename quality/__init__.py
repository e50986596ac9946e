"""Signal quality in production (docs/SIGNAL_QUALITY.md): what happened after each signal
(``outcomes``), the rolling figures of each model version (``rolling``), and the circuit breaker that
halts new entries when the champion stops working (``breaker``).

Layer: beside ``pipeline``; it reads the signal and candle tables (``data``), the model registry and
the evaluation statistics (``ml``) and the kill switch (``trading``). No Celery here: the periodic
task lives in ``tasks.quality``.
"""
