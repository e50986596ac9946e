"""The candle store: bulk idempotent writes, newest-candle look-ups, status and the bar read path.

Writes never change a traded candle: a closed candle is immutable, so every re-run of a backfill or
sync is a no-op. The one exception is a flagged filler (``is_filled``) of a minute the source had
no candle for at the time: when the real candle turns up later (a repair, an import) it replaces
the filler. PostgreSQL writes go through ``COPY`` into a temporary table and one
``INSERT … SELECT``; SQLite uses one ``executemany``. The gaps a batch found are recorded in
``candle_gaps`` in the same transaction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Connection, Engine, bindparam, delete, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from core.timegrid import MINUTE_MS
from data import pgcopy
from data.bars import BAR_FIELDS, BarPanel, bar_open_times
from data.candles import CANDLE_COLUMNS
from data.models import CandleGap, DataQuarantine
from data.validation import ValidatedBatch

if TYPE_CHECKING:
    import pandas as pd

INTERVAL = "1m"
_WRITE_COLUMNS = pgcopy.COLUMNS
_VALUE_UPDATE = ", ".join(f"{c} = excluded.{c}" for c in (*CANDLE_COLUMNS[1:], "is_filled"))
# Only a filler gives way, and only to a real candle.
_REAL_REPLACES_FILLER = (
    f"DO UPDATE SET {_VALUE_UPDATE} WHERE raw_market_data.is_filled AND NOT excluded.is_filled"
)
_GAP_COLUMNS = ("exchange", "symbol", "start_time", "end_time", "minutes", "filled", "outage")


@dataclass(frozen=True)
class NewestCandle:
    open_time: int
    close: float


@dataclass(frozen=True)
class SymbolStatus:
    symbol: str
    candles: int
    first_open_ms: int | None
    newest_open_ms: int | None
    missing_minutes: int
    filled_minutes: int
    quarantine_rule: str | None = None
    quarantine_detail: str | None = None


@dataclass(frozen=True)
class GapRecord:
    symbol: str
    start_ms: int
    end_ms: int
    minutes: int
    filled: int
    outage: bool


@dataclass(frozen=True)
class Outage:
    """The same missing minutes in many symbols at once: reported once, for the exchange."""

    start_ms: int
    end_ms: int
    symbols: list[str]

    @property
    def minutes(self) -> int:
        return (self.end_ms - self.start_ms) // MINUTE_MS


@dataclass(frozen=True)
class HorizonExit:
    """A symbol's stored exit over a signal's horizon (``CandleStore.horizon_exits``)."""

    exit_close: float | None
    exit_filled: bool
    gap_minutes: int  # minutes of the horizon the source had no candle for (gap-filled)


def group_outages(
    gaps: Sequence[GapRecord], universe: int, min_share: float
) -> tuple[list[Outage], list[GapRecord]]:
    """Split outage gaps into exchange-wide outages (the same range in at least ``min_share`` of
    ``universe`` symbols, and at least 2) and the gaps that remain each symbol's own."""
    by_range: dict[tuple[int, int], list[GapRecord]] = {}
    for gap in gaps:
        by_range.setdefault((gap.start_ms, gap.end_ms), []).append(gap)
    wide: list[Outage] = []
    own: list[GapRecord] = []
    for (start, end), members in sorted(by_range.items()):
        if members[0].outage and len(members) >= max(2, min_share * universe):
            wide.append(Outage(start, end, sorted(g.symbol for g in members)))
        else:
            own.extend(members)
    return wide, own


class CandleStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    # -- writes -------------------------------------------------------------------------------
    def write(self, exchange: str, batches: Sequence[ValidatedBatch]) -> int:
        """Insert every candle of ``batches`` in one transaction; returns how many were new."""
        import pandas as pd

        batches = [b for b in batches if len(b.frame)]
        if not batches:
            return 0
        if self.dialect == "postgresql":
            return self._write_postgres(exchange, batches)
        return self._write_generic(
            pd.concat([self._tagged(exchange, b) for b in batches], ignore_index=True),
            _gap_rows(exchange, batches),
        )

    def write_rows(self, exchange: str, rows: pd.DataFrame) -> int:
        """Insert validated, gap-free candles of many symbols at once: ``rows`` has a ``symbol``
        column, the candle columns and ``is_filled``. The stream's every-flush path: one frame and
        one encode for 500 symbols instead of 500 batches."""
        if rows.empty:
            return 0
        if self.dialect == "postgresql":
            return self._copy_postgres(pgcopy.encode_rows(exchange, INTERVAL, rows), [])
        tagged = rows.assign(exchange=exchange, interval=INTERVAL)
        return self._write_generic(tagged, [])

    @staticmethod
    def _tagged(exchange: str, batch: ValidatedBatch) -> pd.DataFrame:
        import pandas as pd

        frame = batch.frame
        out = pd.DataFrame(
            {"exchange": exchange, "symbol": batch.symbol, "interval": INTERVAL}, index=frame.index
        )
        for col in (*CANDLE_COLUMNS, "is_filled"):
            out[col] = frame[col]
        return out

    def _write_postgres(self, exchange: str, batches: Sequence[ValidatedBatch]) -> int:
        payload = b"".join(pgcopy.encode_candles(exchange, b.symbol, INTERVAL, b.frame) for b in batches)
        return self._copy_postgres(payload, _gap_rows(exchange, batches))

    def _copy_postgres(self, payload: bytes, gaps: list[tuple[Any, ...]]) -> int:
        cols = ", ".join(pgcopy.COLUMNS)
        with self._driver_transaction() as driver, driver.cursor() as cur:
            cur.execute(
                "CREATE TEMP TABLE IF NOT EXISTS stage_raw_market_data "
                "(LIKE raw_market_data INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            with cur.copy(f"COPY stage_raw_market_data ({cols}) FROM STDIN WITH (FORMAT binary)") as copy:
                copy.write(pgcopy.HEADER + payload + pgcopy.TRAILER)
            cur.execute(
                f"INSERT INTO raw_market_data ({cols}) SELECT {cols} FROM stage_raw_market_data "
                f"ON CONFLICT ON CONSTRAINT pk_raw_market_data {_REAL_REPLACES_FILLER}"
            )
            written = int(cur.rowcount)
            if gaps:
                marks = ", ".join("%s" for _ in _GAP_COLUMNS)
                cur.executemany(
                    f"INSERT INTO candle_gaps ({', '.join(_GAP_COLUMNS)}) VALUES ({marks}) "
                    "ON CONFLICT DO NOTHING",
                    gaps,
                )
            return written

    def _write_generic(self, rows: pd.DataFrame, gaps: list[tuple[Any, ...]]) -> int:
        columns = [rows[c].tolist() for c in _WRITE_COLUMNS]
        turnover = _WRITE_COLUMNS.index("turnover")
        # SQLite stores NaN as NULL anyway; being explicit keeps the two dialects identical.
        columns[turnover] = [None if v != v else v for v in columns[turnover]]
        values = list(zip(*columns, strict=True))
        cols = ", ".join(_WRITE_COLUMNS)
        marks = ", ".join("?" for _ in _WRITE_COLUMNS)
        with self._driver_transaction() as driver:
            cur = driver.cursor()
            cur.executemany(
                f"INSERT INTO raw_market_data ({cols}) VALUES ({marks}) "
                f"ON CONFLICT (exchange, symbol, interval, open_time) {_REAL_REPLACES_FILLER}",
                values,
            )
            written = int(cur.rowcount)
            if gaps:
                gap_marks = ", ".join("?" for _ in _GAP_COLUMNS)
                cur.executemany(
                    f"INSERT OR IGNORE INTO candle_gaps ({', '.join(_GAP_COLUMNS)}) VALUES ({gap_marks})",
                    gaps,
                )
            return written

    @contextmanager
    def _driver_transaction(self) -> Iterator[Any]:
        """The DB-API driver's own connection (COPY, executemany), committed when the block ends."""
        raw = self.engine.raw_connection()
        try:
            yield raw.driver_connection
            raw.commit()
        except BaseException:
            raw.rollback()
            raise
        finally:
            raw.close()

    # -- look-ups -----------------------------------------------------------------------------
    def newest(self, exchange: str, symbols: Sequence[str]) -> dict[str, NewestCandle]:
        """The newest stored candle of each symbol (absent when none is stored)."""
        if not symbols:
            return {}
        if self.dialect == "postgresql":
            stmt = text(
                "SELECT s.symbol, r.open_time, r.close FROM unnest(CAST(:symbols AS text[])) AS s(symbol) "
                "CROSS JOIN LATERAL (SELECT open_time, close FROM raw_market_data "
                "WHERE exchange = :exchange AND symbol = s.symbol AND interval = :interval "
                "ORDER BY open_time DESC LIMIT 1) r"
            )
            with self.engine.connect() as conn:
                rows = conn.execute(
                    stmt, {"symbols": list(symbols), "exchange": exchange, "interval": INTERVAL}
                )
                return {r.symbol: NewestCandle(int(r.open_time), float(r.close)) for r in rows}
        stmt = text(
            "SELECT open_time, close FROM raw_market_data WHERE exchange = :exchange AND symbol = :symbol "
            "AND interval = :interval ORDER BY open_time DESC LIMIT 1"
        )
        out: dict[str, NewestCandle] = {}
        with self.engine.connect() as conn:
            for symbol in symbols:
                row = conn.execute(
                    stmt, {"exchange": exchange, "symbol": symbol, "interval": INTERVAL}
                ).first()
                if row is not None:
                    out[symbol] = NewestCandle(int(row.open_time), float(row.close))
        return out

    def candle_before(self, exchange: str, symbol: str, ts_ms: int) -> NewestCandle | None:
        """The last stored candle that opens before ``ts_ms``."""
        stmt = text(
            "SELECT open_time, close FROM raw_market_data WHERE exchange = :exchange AND symbol = :symbol "
            "AND interval = :interval AND open_time < :ts ORDER BY open_time DESC LIMIT 1"
        )
        params = {"exchange": exchange, "symbol": symbol, "interval": INTERVAL, "ts": ts_ms}
        with self.engine.connect() as conn:
            row = conn.execute(stmt, params).first()
        return None if row is None else NewestCandle(int(row.open_time), float(row.close))

    def chunk_counts(
        self, exchange: str, symbols: Sequence[str], start_ms: int, chunk_ms: int, end_ms: int
    ) -> dict[tuple[str, int], int]:
        """Stored candles per ``(symbol, chunk index)`` where chunks of ``chunk_ms`` start at ``start_ms``."""
        stmt = text(
            "SELECT symbol, (open_time - :start) / :chunk AS c, count(*) AS n FROM raw_market_data "
            "WHERE exchange = :exchange AND interval = :interval AND symbol IN :symbols "
            "AND open_time >= :start AND open_time < :end GROUP BY symbol, (open_time - :start) / :chunk"
        ).bindparams(bindparam("symbols", expanding=True))
        params = {
            "exchange": exchange,
            "interval": INTERVAL,
            "symbols": list(symbols),
            "start": start_ms,
            "chunk": chunk_ms,
            "end": end_ms,
        }
        with self.engine.connect() as conn:
            return {(r.symbol, int(r.c)): int(r.n) for r in conn.execute(stmt, params)}

    def coverage(
        self, exchange: str, symbols: Sequence[str], start_ms: int, end_ms: int
    ) -> dict[str, tuple[int, int, int]]:
        """Per symbol ``(first, newest, count)`` of stored candles with open time in ``[start, end)``."""
        stmt = text(
            "SELECT symbol, min(open_time) AS first, max(open_time) AS newest, count(*) AS n "
            "FROM raw_market_data WHERE exchange = :exchange AND interval = :interval "
            "AND symbol IN :symbols AND open_time >= :start AND open_time < :end GROUP BY symbol"
        ).bindparams(bindparam("symbols", expanding=True))
        with self.engine.connect() as conn:
            rows = conn.execute(
                stmt,
                {
                    "exchange": exchange,
                    "interval": INTERVAL,
                    "symbols": list(symbols),
                    "start": start_ms,
                    "end": end_ms,
                },
            )
            return {r.symbol: (int(r.first), int(r.newest), int(r.n)) for r in rows}

    def horizon_exits(
        self,
        exchange: str,
        symbols: Sequence[str],
        start_ms: int,
        exit_open_ms: int,
        *,
        conn: Connection | None = None,
    ) -> dict[str, HorizonExit]:
        """Per symbol: the close of the candle opening at ``exit_open`` (None if not stored) and
        whether it is a gap fill, and how many minutes of ``[start, exit_open]`` ``candle_gaps``
        records as missing at the source (signal outcomes, quality/outcomes.py).

        Why the gap records and not a count of the stored candles: ingestion stores every minute
        (missing ones as flagged fills, each gap recorded), so the only candles a complete range can
        lack are the live edge's, which the exit look-up sees; and counting 720 candles for each of
        500 symbols costs ~80 ms a query where these two index look-ups cost a few."""
        params = {
            "exchange": exchange,
            "interval": INTERVAL,
            "symbols": list(symbols),
            "start": start_ms,
            "exit": exit_open_ms,
        }
        exits = text(
            "SELECT symbol, close, is_filled FROM raw_market_data WHERE exchange = :exchange "
            "AND interval = :interval AND symbol IN :symbols AND open_time = :exit"
        ).bindparams(bindparam("symbols", expanding=True))
        # Gaps are [start_time, end_time) in open times; the horizon is [start, exit] inclusive.
        gaps = text(
            "SELECT symbol, start_time, end_time FROM candle_gaps WHERE exchange = :exchange "
            "AND symbol IN :symbols AND start_time <= :exit AND end_time > :start"
        ).bindparams(bindparam("symbols", expanding=True))
        missing: dict[str, int] = {}
        with contextlib.ExitStack() as stack:
            if conn is None:  # the caller's connection (one transaction for its reads) or our own
                conn = stack.enter_context(self.engine.connect())
            closes = {r.symbol: (float(r.close), bool(r.is_filled)) for r in conn.execute(exits, params)}
            for r in conn.execute(gaps, params):
                inside = min(int(r.end_time), exit_open_ms + MINUTE_MS) - max(int(r.start_time), start_ms)
                missing[r.symbol] = missing.get(r.symbol, 0) + inside // MINUTE_MS
        out = {}
        for symbol in symbols:
            close, filled = closes.get(symbol, (None, False))
            out[symbol] = HorizonExit(close, filled, missing.get(symbol, 0))
        return out

    def read_candles(self, exchange: str, symbol: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        """One symbol's stored candles with open time in ``[start, end)``, ascending."""
        import pandas as pd

        stmt = text(
            f"SELECT {', '.join(CANDLE_COLUMNS)}, is_filled FROM raw_market_data WHERE exchange = :exchange "
            "AND symbol = :symbol AND interval = :interval AND open_time >= :start AND open_time < :end "
            "ORDER BY open_time"
        )
        params = {
            "exchange": exchange,
            "symbol": symbol,
            "interval": INTERVAL,
            "start": start_ms,
            "end": end_ms,
        }
        with self.engine.connect() as conn:
            frame = pd.DataFrame(conn.execute(stmt, params).all(), columns=[*CANDLE_COLUMNS, "is_filled"])
        frame["open_time"] = frame["open_time"].astype(np.int64)
        for col in CANDLE_COLUMNS[1:]:
            frame[col] = frame[col].astype(np.float64)
        frame["is_filled"] = frame["is_filled"].astype(bool)
        return frame

    def candles_since(
        self, exchange: str, starts: Mapping[str, int], end_ms: int
    ) -> dict[str, list[tuple[int, float, float, float, float]]]:
        """Per symbol, ``(open_time, open, high, low, close)`` of ``starts[symbol] <= open_time < end_ms``.

        One query for all symbols: the paper broker's per-minute step reads every symbol it holds.
        """
        if not starts:
            return {}
        stmt = text(
            "SELECT symbol, open_time, open, high, low, close FROM raw_market_data "
            "WHERE exchange = :exchange AND interval = :interval AND symbol IN :symbols "
            "AND open_time >= :start AND open_time < :end ORDER BY symbol, open_time"
        ).bindparams(bindparam("symbols", expanding=True))
        params = {
            "exchange": exchange,
            "interval": INTERVAL,
            "symbols": sorted(starts),
            "start": min(starts.values()),
            "end": end_ms,
        }
        out: dict[str, list[tuple[int, float, float, float, float]]] = {s: [] for s in starts}
        with self.engine.connect() as conn:
            for r in conn.execute(stmt, params):
                if int(r.open_time) >= starts[r.symbol]:
                    out[r.symbol].append(
                        (int(r.open_time), float(r.open), float(r.high), float(r.low), float(r.close))
                    )
        return out

    def symbols(self, exchange: str) -> list[str]:
        stmt = text("SELECT DISTINCT symbol FROM raw_market_data WHERE exchange = :exchange ORDER BY symbol")
        with self.engine.connect() as conn:
            return [r.symbol for r in conn.execute(stmt, {"exchange": exchange})]

    def status(self, exchange: str, symbols: Sequence[str] | None = None) -> list[SymbolStatus]:
        """Per symbol: how many candles, first and newest, missing minutes inside the span, quarantine."""
        stmt = text(
            "SELECT symbol, count(*) AS n, min(open_time) AS first, max(open_time) AS newest, "
            "sum(CASE WHEN is_filled THEN 1 ELSE 0 END) AS filled "
            "FROM raw_market_data WHERE exchange = :exchange AND interval = :interval GROUP BY symbol"
        )
        with self.engine.connect() as conn:
            stored = {r.symbol: r for r in conn.execute(stmt, {"exchange": exchange, "interval": INTERVAL})}
        quarantine = self.quarantined(exchange)
        names = sorted(set(stored) | set(quarantine) | set(symbols or ()))
        if symbols is not None:
            names = [s for s in names if s in set(symbols)]
        out = []
        for name in names:
            row = stored.get(name)
            rule, detail = quarantine.get(name, (None, None))
            if row is None:
                out.append(SymbolStatus(name, 0, None, None, 0, 0, rule, detail))
                continue
            span = (int(row.newest) - int(row.first)) // MINUTE_MS + 1
            out.append(
                SymbolStatus(
                    name,
                    int(row.n),
                    int(row.first),
                    int(row.newest),
                    span - int(row.n),
                    int(row.filled or 0),
                    rule,
                    detail,
                )
            )
        return out

    def analyze(self) -> None:
        """Refresh the planner's statistics after a bulk load. Without them PostgreSQL reads a freshly
        loaded table's bars with a sequential scan (about 2.5x slower for 50 of 500 symbols) until
        autovacuum gets round to it; SQLite needs nothing."""
        if self.dialect == "postgresql":
            with self.engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE raw_market_data")

    # -- gaps -----------------------------------------------------------------------------------
    def gaps(
        self, exchange: str, *, since_ms: int = 0, outages_only: bool = False, limit: int = 100_000
    ) -> list[GapRecord]:
        """Recorded gaps that ended at or after ``since_ms``, oldest first."""
        stmt = select(CandleGap).where(CandleGap.exchange == exchange, CandleGap.end_time >= since_ms)
        if outages_only:
            stmt = stmt.where(CandleGap.outage.is_(True))
        stmt = stmt.order_by(CandleGap.start_time, CandleGap.symbol).limit(limit)
        with self.engine.connect() as conn:
            return [
                GapRecord(r.symbol, r.start_time, r.end_time, r.minutes, r.filled, bool(r.outage))
                for r in conn.execute(stmt)
            ]

    # -- quarantine ---------------------------------------------------------------------------
    def quarantine(self, exchange: str, reasons: dict[str, tuple[str, str]]) -> None:
        if not reasons:
            return
        now = datetime.now(UTC)
        rows = [
            {
                "exchange": exchange,
                "symbol": s,
                "rule": rule,
                "detail": detail[:2000],
                "since": now,
                "updated_at": now,
            }
            for s, (rule, detail) in reasons.items()
        ]
        insert = pg_insert if self.dialect == "postgresql" else sqlite_insert
        stmt = insert(DataQuarantine).values(rows)
        # ``since`` keeps the first failure time of an ongoing quarantine.
        stmt = stmt.on_conflict_do_update(
            index_elements=["exchange", "symbol"],
            set_={
                "rule": stmt.excluded.rule,
                "detail": stmt.excluded.detail,
                "updated_at": stmt.excluded.updated_at,
            },
        )
        with self.engine.begin() as conn:
            conn.execute(stmt)

    def release(self, exchange: str, symbols: Iterable[str]) -> None:
        names = list(symbols)
        if not names:
            return
        with self.engine.begin() as conn:
            conn.execute(
                delete(DataQuarantine).where(
                    DataQuarantine.exchange == exchange, DataQuarantine.symbol.in_(names)
                )
            )

    def quarantined(self, exchange: str) -> dict[str, tuple[str, str]]:
        stmt = select(DataQuarantine.symbol, DataQuarantine.rule, DataQuarantine.detail).where(
            DataQuarantine.exchange == exchange
        )
        with self.engine.connect() as conn:
            return {r.symbol: (r.rule, r.detail) for r in conn.execute(stmt)}

    # -- read path ----------------------------------------------------------------------------
    def read_bars(
        self, exchange: str, symbols: Sequence[str], anchor_ms: int, n_bars: int, bar_minutes: int
    ) -> BarPanel:
        """Anchored bars (data/bars.py) of many symbols, aggregated inside the database in one query.

        Bar ``k`` back from the anchor takes its open from the oldest minute of the bar and its close
        from the newest; a bar lacking any minute is incomplete and its values are NaN.
        """
        bar_ms = bar_minutes * MINUTE_MS
        params = {
            "newest": anchor_ms - MINUTE_MS,
            "bar_ms": bar_ms,
            "minute": MINUTE_MS,
            "last_pos": bar_minutes - 1,
            "exchange": exchange,
            "interval": INTERVAL,
            "symbols": list(symbols),
            "start": anchor_ms - n_bars * bar_ms,
            "anchor": anchor_ms,
        }
        data = self._bars_postgres(params) if self.dialect == "postgresql" else self._bars_generic(params)
        shape = (len(symbols), n_bars)
        arrays = {name: np.full(shape, np.nan) for name in BAR_FIELDS}
        complete = np.zeros(shape, dtype=bool)
        filled = np.zeros(shape, dtype=np.int64)
        sym = data["sym"]
        col = n_bars - 1 - data["k"]
        ok = (data["n"] == bar_minutes) & (col >= 0) & (col < n_bars)
        complete[sym[ok], col[ok]] = True
        for name in BAR_FIELDS:
            arrays[name][sym[ok], col[ok]] = data[name][ok]
        inside = (col >= 0) & (col < n_bars)
        filled[sym[inside], col[inside]] = data["filled"][inside]
        return BarPanel(
            symbols=list(symbols),
            anchor_ms=anchor_ms,
            bar_minutes=bar_minutes,
            bar_open_ms=bar_open_times(anchor_ms, n_bars, bar_minutes),
            complete=complete,
            filled=filled,
            **arrays,
        )

    _BARS_SELECT = (
        "count(*) AS n, max(high) AS high, min(low) AS low, sum(volume) AS volume, "
        "max(CASE WHEN pos = :last_pos THEN open END) AS open, "
        "max(CASE WHEN pos = 0 THEN close END) AS close, "
        "sum(CASE WHEN is_filled THEN 1 ELSE 0 END) AS filled "
        "FROM (SELECT symbol, open, high, low, close, volume, is_filled, "
        "(:newest - open_time) / :bar_ms AS k, ((:newest - open_time) % :bar_ms) / :minute AS pos "
        "FROM raw_market_data WHERE exchange = :exchange AND interval = :interval "
        "AND symbol IN :symbols AND open_time >= :start AND open_time < :anchor) AS w "
        "GROUP BY symbol, k"
    )

    def _bars_generic(self, params: dict[str, Any]) -> dict[str, np.ndarray]:
        stmt = text(f"SELECT symbol, k, {self._BARS_SELECT}").bindparams(bindparam("symbols", expanding=True))
        with self.engine.connect() as conn:
            rows = conn.execute(stmt, params).all()
        index = {s: i for i, s in enumerate(params["symbols"])}
        table = np.array(
            [[index[r.symbol], r.k, r.n, r.open, r.high, r.low, r.close, r.volume, r.filled] for r in rows],
            dtype=np.float64,
        ).reshape(-1, 9)
        out = {
            "sym": table[:, 0].astype(np.int64),
            "k": table[:, 1].astype(np.int64),
            "n": table[:, 2],
            "filled": table[:, 8].astype(np.int64),
        }
        for j, name in enumerate(BAR_FIELDS):
            out[name] = table[:, 3 + j]
        return out

    def _bars_postgres(self, params: dict[str, Any]) -> dict[str, np.ndarray]:
        """Pack each symbol's bars into one bytea of fixed-width big-endian rows, parsed by numpy.

        Turning ~150k result rows into Python objects would cost more than the aggregation itself,
        so the database returns one row per symbol.
        """
        packed = " || ".join(
            ["int8send(k::int8)", "int8send(n::int8)", "int8send(filled::int8)"]
            + [f"float8send(coalesce({f}, 'NaN'))" for f in BAR_FIELDS]
        )
        stmt = text(
            f"SELECT symbol, string_agg({packed}, ''::bytea) AS bars "
            f"FROM (SELECT symbol, k, {self._BARS_SELECT}) AS agg GROUP BY symbol"
        ).bindparams(bindparam("symbols", expanding=True))
        with self.engine.begin() as conn:
            # The aggregation spills to disk under the default 4 MB work_mem; JIT only adds latency here.
            conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
            conn.exec_driver_sql("SET LOCAL jit = off")
            rows = conn.execute(stmt, params).all()
        index = {s: i for i, s in enumerate(params["symbols"])}
        parts = [np.frombuffer(r.bars, dtype=_BARS_ROW) for r in rows]
        syms = [np.full(len(p), index[r.symbol], dtype=np.int64) for p, r in zip(parts, rows, strict=True)]
        table = np.concatenate(parts) if parts else np.empty(0, dtype=_BARS_ROW)
        out = {
            "sym": np.concatenate(syms) if syms else np.empty(0, dtype=np.int64),
            "k": table["k"].astype(np.int64),
            "n": table["n"].astype(np.int64),
            "filled": table["filled"].astype(np.int64),
        }
        for name in BAR_FIELDS:
            out[name] = table[name].astype(np.float64)
        return out


def _gap_rows(exchange: str, batches: Sequence[ValidatedBatch]) -> list[tuple[Any, ...]]:
    return [
        (exchange, b.symbol, g.start_ms, g.end_ms, g.minutes, g.filled, g.outage)
        for b in batches
        for g in b.gaps
    ]


_BARS_ROW = np.dtype([("k", ">i8"), ("n", ">i8"), ("filled", ">i8")] + [(name, ">f8") for name in BAR_FIELDS])
