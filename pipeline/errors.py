"""Which errors a step of the minute may overcome by trying again a few seconds later."""

from __future__ import annotations

import redis.exceptions
import sqlalchemy.exc

from core.errors import TemporaryError

# Errors of the infrastructure that the same step may overcome a few seconds later: a dropped or
# refused database connection, a Redis restart, a temporarily unreachable exchange. The minute's
# tasks retry them with Celery's autoretry (exponential backoff, full jitter); the retry keeps the
# minute's expiry, so no retry runs after the deadline (docs/ML_INTEGRATION.md, "Failures").
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    TemporaryError,
)
