"""Market data: database models and sessions, candle sources, validation, ingestion, the candle store.

May import ``core``; never ``ml``, ``trading``, ``pipeline``, ``worker``, ``tasks`` or ``cli``.
"""
