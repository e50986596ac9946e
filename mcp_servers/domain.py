"""The project's handles an MCP server works through, each built on first use and then shared by the
tool calls (sync tools run in worker threads: every handle here is thread-safe, and each database
call takes its own connection from the engine's pool)."""

from __future__ import annotations

import threading
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from core.settings import Settings

if TYPE_CHECKING:
    import redis
    from sqlalchemy import Engine

    from data.sources.base import CandleSource
    from data.store import CandleStore
    from ml.registry import Registry
    from pipeline.ledger import RunLedger
    from pipeline.signal_store import SignalStore


class Domain:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()

    @cached_property
    def engine(self) -> Engine:
        """The database on an up-to-date schema (SQLite upgrades itself; a server must be upgraded)."""
        from data import db

        with self._lock:
            return db.ready_engine(self.settings.database_url)

    @cached_property
    def source(self) -> CandleSource:
        """The configured candle source (its ``name`` labels the exchange's rows in the store)."""
        from data.sources.factory import make_source

        with self._lock:
            return make_source(self.settings)

    @property
    def exchange(self) -> str:
        return self.source.name

    @cached_property
    def store(self) -> CandleStore:
        from data.store import CandleStore

        return CandleStore(self.engine)

    @cached_property
    def signals(self) -> SignalStore:
        from pipeline.signal_store import SignalStore

        return SignalStore(self.engine)

    @cached_property
    def ledger(self) -> RunLedger:
        from pipeline.ledger import RunLedger

        return RunLedger(self.engine)

    @cached_property
    def registry(self) -> Registry:
        from ml.registry import open_registry

        return open_registry(self.settings.model.registry_dir)

    @cached_property
    def redis(self) -> redis.Redis:
        import redis

        return redis.Redis.from_url(self.settings.redis_url, socket_timeout=5)

    @property
    def import_dir(self) -> Path:
        return self.settings.mcp.import_dir or self.settings.data_dir / "imports"

    def close(self) -> None:
        """Release the connections (tests; a server process just exits)."""
        if "redis" in self.__dict__:
            self.redis.close()
