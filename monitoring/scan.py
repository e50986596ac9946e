"""Read each row of a growing table once, across refreshes, without missing a late commit.

Ids are handed out when a transaction starts but become visible when it commits, so a plain
``id > last`` cursor skips a row that committed after a larger id was read. A row is therefore
*settled* only once its time column is ``settle_s`` old (every transaction that wrote it has long
committed) and, for tables whose rows change status, once no row at or below it is still pending.
The cursor (``below``) moves over settled rows only; rows read above it are remembered in ``seen``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, Table, func, literal, select, true

# Rows fetched per query, so that a first refresh over a long history streams it in pieces.
_CHUNK = 50_000


@dataclass
class SettledScan:
    table: Table
    columns: Sequence[str]
    time_column: str
    # Rows in a final state; None: every row is final as soon as it is written (insert-only tables).
    final: ColumnElement[bool] | None = None
    settle_s: float = 120.0
    below: int = 0
    seen: set[int] = field(default_factory=set)

    def poll(self, conn: Connection, now: datetime) -> list[Any]:
        """The rows that became final since the last poll, in id order."""
        ident = self.table.c.id
        settled = select(func.max(ident)).where(
            ident > self.below, self.table.c[self.time_column] < now - timedelta(seconds=self.settle_s)
        )
        if self.final is not None:
            # Computed before the rows are read: a row still pending now has an id above the cursor.
            pending = select(func.min(ident)).where(ident > self.below, ~self.final).scalar_subquery()
            settled = settled.where(ident < func.coalesce(pending, literal(2**62)))
        candidate = conn.execute(settled).scalar()
        fresh: list[Any] = []
        after = self.below
        while True:
            stmt = (
                select(ident, *(self.table.c[name] for name in self.columns))
                .where(ident > after, self.final if self.final is not None else true())
                .order_by(ident)
                .limit(_CHUNK)
            )
            rows = conn.execute(stmt).all()
            fresh += [r for r in rows if r.id not in self.seen]
            if len(rows) < _CHUNK:
                break
            after = int(rows[-1].id)
        if candidate is not None and int(candidate) > self.below:
            self.below = int(candidate)
            self.seen = {i for i in self.seen if i > self.below}
        # Only rows above the cursor can be met again.
        self.seen.update(int(r.id) for r in fresh if r.id > self.below)
        return fresh
