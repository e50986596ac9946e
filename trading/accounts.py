"""The account rows: creation, the kill switch, and the lock every decision and fill holds.

One row per execution mode (``paper``, ``live``) in ``trading_accounts``. ``AccountLock`` is the
transaction in which an account changes: the row locked (``SELECT … FOR UPDATE`` on PostgreSQL;
SQLite has no row locks, so a first write takes its database-wide write lock), the day's starting
equity rolled over at the first lock of a UTC day, and on the way out the ledger's changes and the
account row written, with its ``version`` bumped (docs/TRADING.md, Concurrency).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from core.settings import Settings
from trading.book import Book
from trading.ledger import ACCOUNTS, Account, Ledger

__all__ = [
    "LIVE",
    "PAPER",
    "AccountLock",
    "Txn",
    "ensure_account",
    "lock_account",
    "midnight",
    "set_halted",
    "utcnow",
]

# The accounts, one per ``trading.mode``.
PAPER, LIVE = "paper", "live"


def utcnow() -> datetime:
    return datetime.now(UTC)


def midnight(dt: datetime) -> datetime:
    return dt.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def ensure_account(engine: Engine, settings: Settings, name: str, now: datetime | None = None) -> None:
    """Create the account row of ``name`` once (a live account's cash comes from the exchange)."""
    when = now or utcnow()
    balance = settings.trading.paper_balance if name == PAPER else 0.0
    insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    stmt = (
        insert(ACCOUNTS)
        .values(
            name=name,
            currency=settings.trading.currency,
            initial_balance=balance,
            balance=balance,
            equity=balance,
            day_start_at=midnight(when),
            day_start_equity=balance,
            halted=False,
            ticked_to_ms=0,
            version=0,
            updated_at=when,
        )
        .on_conflict_do_nothing(index_elements=["name"])
    )
    with engine.begin() as conn:
        conn.execute(stmt)


def lock_account(conn: Connection, name: str) -> Account:
    """The account row, locked until the transaction ends."""
    if conn.dialect.name == "sqlite":
        # No row locks: a first write takes the database's write lock (waiting on busy_timeout)
        # before anything is read, so no decision reads a state another is changing.
        conn.execute(update(ACCOUNTS).where(ACCOUNTS.c.name == name).values(updated_at=utcnow()))
    row = conn.execute(select(ACCOUNTS).where(ACCOUNTS.c.name == name).with_for_update()).one()
    return Account.from_row(row)


def set_halted(
    engine: Engine,
    settings: Settings,
    halted: bool,
    why: str | None = None,
    *,
    also: Callable[[Connection], None] | None = None,
) -> None:
    """The kill switch, on every account: no new order is placed while it is on. ``also`` writes in
    the same transaction (the quality breaker's record of a trip or a resume)."""
    now = utcnow()
    ensure_account(engine, settings, settings.trading.mode, now)
    with engine.begin() as conn:
        if also is not None:
            also(conn)
        conn.execute(
            update(ACCOUNTS).values(
                halted=halted,
                halt_reason=(why or "halted by the operator") if halted else None,
                halted_at=now if halted else None,
                updated_at=now,
            )
        )


def halt_state(engine: Engine, settings: Settings) -> tuple[bool, str | None]:
    """(halted, reason) of the trading mode's account; an account not made yet is not halted (a read:
    the MCP tool ``signal_quality`` calls it, and reads write nothing)."""
    with engine.connect() as conn:
        row = conn.execute(
            select(ACCOUNTS.c.halted, ACCOUNTS.c.halt_reason).where(ACCOUNTS.c.name == settings.trading.mode)
        ).first()
    return (False, None) if row is None else (bool(row.halted), row.halt_reason)


@dataclass
class Txn:
    """One transaction holding the account lock."""

    conn: Connection
    acct: Account
    ledger: Ledger
    version_seen: int
    # The batch's view of positions and entries (``trading.book``), when a decision has read it.
    book: Book | None = None


class AccountLock:
    """The account of one mode: created on first use, then locked by each transaction that changes it."""

    def __init__(
        self, settings: Settings, engine: Engine, name: str, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.name = name
        self.clock = clock
        self._ready = False

    def ensure(self) -> None:
        if not self._ready:
            ensure_account(self.engine, self.settings, self.name, self.clock())
            self._ready = True

    @contextmanager
    def locked(self) -> Iterator[Txn]:
        """A transaction holding the account row's lock; the ledger and the row are written at its end."""
        self.ensure()
        with self.engine.begin() as conn:
            acct = lock_account(conn, self.name)
            txn = Txn(conn, acct, Ledger(conn, acct, self.clock), acct.version)
            acct.version += 1
            now = self.clock()
            if acct.day_start_at < midnight(now):
                # The daily loss limit counts from the equity at the first decision of the UTC day.
                acct.day_start_at = midnight(now)
                acct.day_start_equity = acct.equity
            yield txn
            txn.ledger.write()
            conn.execute(
                update(ACCOUNTS).where(ACCOUNTS.c.name == acct.name).values(**acct.values(), updated_at=now)
            )
