"""Importing one file of 1-minute candles into the store (``mlsignals data import``, ml-data's
``import_file``): read it (CSV, Parquet, ccxt/freqtrade JSON: docs/DATA_IMPORT.md), validate it as one
batch continuing the symbol's stored history, and write it. Nothing is written if any rule fails;
missing minutes are filled (flagged, never counted as trades) and reported as gaps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.timegrid import MINUTE_MS, now_ms
from data.validation import Gap, ValidationPolicy, validate_batch

if TYPE_CHECKING:
    from data.store import CandleStore


@dataclass(frozen=True)
class FileImport:
    path: Path
    symbol: str
    exchange: str
    read: int  # candles in the file
    filled_minutes: int
    gaps: tuple[Gap, ...]
    inserted: int  # candles new to the store (0 on a re-import)


def import_candle_file(
    store: CandleStore,
    path: str | Path,
    symbol: str,
    policy: ValidationPolicy,
    *,
    exchange: str | None = None,
    now: int | None = None,
) -> FileImport:
    """Store ``path``'s candles for ``symbol`` under ``exchange`` (default: the freqtrade folder the
    file lies in, else ``import``). Raises ``FileFormatError`` or ``DataValidationError``."""
    from data.sources.files import exchange_label, read_candle_file

    path = Path(path)
    label = exchange or exchange_label(path)
    frame = read_candle_file(path)
    # The batch continues the stored history: the candle before it sets the expected start and the
    # previous close the jump rules compare with.
    before = store.candle_before(label, symbol, int(frame["open_time"].min())) if len(frame) else None
    batch = validate_batch(
        frame,
        symbol,
        now_ms=now_ms() if now is None else now,
        policy=policy,
        expected_start_ms=None if before is None else before.open_time + MINUTE_MS,
        prev_close=None if before is None else before.close,
    )
    inserted = store.write(label, [batch])
    return FileImport(path, symbol, label, len(frame), batch.filled_minutes, batch.gaps, inserted)
