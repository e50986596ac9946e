"""Encode candle rows in PostgreSQL's binary COPY format with numpy, not row by row in Python.

Text CSV costs ~8 µs a row to format; a structured numpy array per symbol batch costs ~0.1 µs.
Layout per row: int16 field count, then per field int32 byte length (-1 for NULL) and big-endian data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
TRAILER = (-1).to_bytes(2, "big", signed=True)
FLOAT_COLUMNS = ("open", "high", "low", "close", "volume", "turnover")
# Column order of the encoded rows, for the COPY statement.
COLUMNS = ("exchange", "symbol", "interval", "open_time", *FLOAT_COLUMNS, "is_filled")


def _encode_group(
    exchange: bytes, symbol: bytes | np.ndarray, interval: bytes, frame: pd.DataFrame, turnover_null: bool
) -> bytes:
    """``symbol`` is one name for every row, or an array of names that all have the same length."""
    symbol_len = len(symbol) if isinstance(symbol, bytes) else int(symbol.dtype.itemsize)
    fields: list[tuple[str, str]] = [("n", ">i2")]
    for name, size in (("exchange", len(exchange)), ("symbol", symbol_len), ("interval", len(interval))):
        fields += [(f"l_{name}", ">i4"), (name, f"S{size}")]
    fields += [("l_open_time", ">i4"), ("open_time", ">i8")]
    for name in FLOAT_COLUMNS:
        fields.append((f"l_{name}", ">i4"))
        if not (name == "turnover" and turnover_null):
            fields.append((name, ">f8"))
    fields += [("l_is_filled", ">i4"), ("is_filled", "u1")]
    rows = np.empty(len(frame), dtype=np.dtype(fields))
    rows["n"] = len(COLUMNS)
    for name, text, size in (
        ("exchange", exchange, len(exchange)),
        ("symbol", symbol, symbol_len),
        ("interval", interval, len(interval)),
    ):
        rows[f"l_{name}"] = size
        rows[name] = text
    rows["l_open_time"] = 8
    rows["open_time"] = frame["open_time"].to_numpy(dtype=np.int64)
    for name in FLOAT_COLUMNS:
        if name == "turnover" and turnover_null:
            rows["l_turnover"] = -1
            continue
        rows[f"l_{name}"] = 8
        rows[name] = frame[name].to_numpy(dtype=np.float64)
    rows["l_is_filled"] = 1
    rows["is_filled"] = frame["is_filled"].to_numpy(dtype=bool)
    return rows.tobytes()


def encode_candles(exchange: str, symbol: str, interval: str, frame: pd.DataFrame) -> bytes:
    """Rows of one symbol's batch (candle columns plus ``is_filled``), without header or trailer."""
    ex, sym, iv = exchange.encode(), symbol.encode(), interval.encode()
    null_turnover = frame["turnover"].isna().to_numpy()
    if not null_turnover.any():
        return _encode_group(ex, sym, iv, frame, turnover_null=False)
    if null_turnover.all():
        return _encode_group(ex, sym, iv, frame, turnover_null=True)
    return _encode_group(ex, sym, iv, frame[~null_turnover], False) + _encode_group(
        ex, sym, iv, frame[null_turnover], True
    )


def encode_rows(exchange: str, interval: str, rows: pd.DataFrame) -> bytes:
    """Rows of many symbols (a ``symbol`` column beside the candle columns and ``is_filled``).

    A binary COPY field carries its own length, but a numpy record is fixed-width: rows are encoded
    in groups of symbols of one byte length (a handful of groups for any universe)."""
    ex, iv = exchange.encode(), interval.encode()
    names = rows["symbol"].to_numpy(dtype=object)
    encoded = np.array([n.encode() for n in names], dtype=object)
    lengths = np.fromiter((len(n) for n in encoded), dtype=np.int64, count=len(encoded))
    null_turnover = rows["turnover"].isna().to_numpy()
    parts = []
    for size in np.unique(lengths):
        for null in (False, True):
            mask = (lengths == size) & (null_turnover == null)
            if mask.any():
                symbols = np.array(list(encoded[mask]), dtype=f"S{size}")
                parts.append(_encode_group(ex, symbols, iv, rows[mask], turnover_null=null))
    return b"".join(parts)
