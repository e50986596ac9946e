"""The per-minute lock: a cheap first guard before the ledger's unique row decides for good."""

from __future__ import annotations

import threading
import time
from typing import Protocol

import redis


class MinuteLock(Protocol):
    def acquire(self, minute_iso: str, ttl_seconds: int) -> bool: ...


class RedisMinuteLock:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def acquire(self, minute_iso: str, ttl_seconds: int) -> bool:
        return bool(self.client.set(f"mlsig:lock:minute:{minute_iso}", "1", nx=True, ex=ttl_seconds))


class MemoryMinuteLock:
    def __init__(self) -> None:
        self._held: dict[str, float] = {}
        self._lock = threading.Lock()

    def acquire(self, minute_iso: str, ttl_seconds: int) -> bool:
        now = time.monotonic()
        with self._lock:
            expiry = self._held.get(minute_iso)
            if expiry is not None and expiry > now:
                return False
            self._held[minute_iso] = now + ttl_seconds
            return True
