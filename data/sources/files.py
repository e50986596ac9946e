"""Candles imported from CSV, Parquet or ccxt/freqtrade JSON files (format: docs/DATA_IMPORT.md).

The reader parses and never repairs: rows come back in file order, duplicates and gaps included, so
that validation can reject bad data instead of it being hidden here.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import FileFormatError, UnknownSymbolError
from data.candles import CANDLE_COLUMNS, coerce_candles

TIME_COLUMNS: tuple[str, ...] = ("timestamp", "open_time")
REQUIRED_VALUE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume")
OPTIONAL_VALUE_COLUMNS: tuple[str, ...] = ("turnover",)
CSV_SUFFIXES: tuple[str, ...] = (".csv", ".csv.gz")
PARQUET_SUFFIXES: tuple[str, ...] = (".parquet", ".pq")
# ccxt's fetch_ohlcv and freqtrade's data files: ``[[ms, open, high, low, close, volume], …]``.
JSON_SUFFIXES: tuple[str, ...] = (".json", ".json.gz")
JSON_COLUMNS: tuple[str, ...] = ("timestamp", "open", "high", "low", "close", "volume")
# The label imported rows are stored under when neither the user nor the file names an exchange.
DEFAULT_IMPORT_LABEL = "import"
# Anything earlier (1973-03-03) is almost surely seconds, not milliseconds, since the epoch.
MIN_EPOCH_MS = 10**11
# An offset only counts after a clock time: "2026-11-24" ends in "-24" but is a naive date.
_TIME_WITH_ZONE = r"\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$"
_INT_TEXT = r"^[+-]?\d+$"


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (*CSV_SUFFIXES, *PARQUET_SUFFIXES, *JSON_SUFFIXES):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def _load(path: Path) -> pd.DataFrame:
    suffix = _suffix(path)
    try:
        if suffix in CSV_SUFFIXES:
            # pandas' C parser types clean columns fast; anything odd stays text and is checked below.
            return pd.read_csv(path, low_memory=False)
        if suffix in PARQUET_SUFFIXES:
            return pd.read_parquet(path)
        if suffix in JSON_SUFFIXES:
            return _load_json_rows(path)
    except FileFormatError:
        raise
    except Exception as exc:  # pandas and pyarrow raise many unrelated types for unreadable files
        raise FileFormatError(f"{path}: cannot read: {type(exc).__name__}: {exc}") from exc
    known = CSV_SUFFIXES + PARQUET_SUFFIXES + JSON_SUFFIXES
    raise FileFormatError(f"{path}: unsupported file type {suffix!r}; use {known}")


def _load_json_rows(path: Path) -> pd.DataFrame:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt") as fh:
        rows = json.load(fh)
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
        raise FileFormatError(f"{path}: expected a JSON array of [ms, open, high, low, close, volume] rows")
    bad = [i for i, r in enumerate(rows) if len(r) != len(JSON_COLUMNS)]
    if bad:
        raise FileFormatError(
            f"{path}: data row {bad[0] + 1} has {len(rows[bad[0]])} values, expected "
            f"{len(JSON_COLUMNS)} {list(JSON_COLUMNS)} ({len(bad)} bad row(s))"
        )
    return pd.DataFrame(rows, columns=list(JSON_COLUMNS))


def exchange_label(path: str | Path) -> str:
    """Where a file says its candles come from: freqtrade keeps ``<datadir>/<exchange>/<PAIR>-1m.json``,
    so a parent folder named after a ccxt exchange is taken; anything else is ``import``."""
    import ccxt

    parent = Path(path).resolve().parent.name.lower()
    return parent if parent in ccxt.exchanges else DEFAULT_IMPORT_LABEL


def _normalise_columns(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    names = [str(c).strip().lower() for c in raw.columns]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise FileFormatError(f"{path}: columns {duplicated} appear more than once")
    frame = raw.copy()
    frame.columns = pd.Index(names)
    return frame


def _is_text(values: pd.Series) -> bool:
    return values.dtype == object or pd.api.types.is_string_dtype(values.dtype)


def _blank(values: pd.Series) -> pd.Series:
    blank = values.isna()
    if _is_text(values):
        blank |= values.astype(str).str.strip().eq("")
    return blank


def _fail(path: Path, column: str, values: pd.Series, bad: pd.Series, why: str) -> FileFormatError:
    position = int(np.flatnonzero(bad.to_numpy())[0])
    # Row numbers count data rows from 1, as a spreadsheet shows them below the header.
    return FileFormatError(
        f"{path}: column {column!r}: {why} (data row {position + 1}: {values.iloc[position]!r}, "
        f"{int(bad.sum())} bad row(s))"
    )


def _parse_time(values: pd.Series, path: Path, column: str) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        if getattr(values.dtype, "tz", None) is None:
            raise FileFormatError(
                f"{path}: column {column!r} holds naive datetimes; store them with a timezone"
            )
        return _datetimes_to_ms(values)
    if pd.api.types.is_bool_dtype(values.dtype):
        raise FileFormatError(f"{path}: column {column!r} has type bool; use int64 ms or ISO-8601")
    text = values.astype(str).str.strip() if _is_text(values) else None
    missing = values.isna() if text is None else values.isna() | text.eq("")
    if missing.any():
        raise _fail(path, column, values, missing, "missing time")
    if pd.api.types.is_integer_dtype(values.dtype):
        return _checked_ms(values.to_numpy(dtype=np.int64), values, path, column)
    if pd.api.types.is_float_dtype(values.dtype):
        # pandas reads an integer column as float when any cell was empty; those were caught above.
        fractional = values.ne(np.floor(values))
        if fractional.any():
            raise _fail(path, column, values, fractional, "fractional milliseconds")
        return _checked_ms(values.to_numpy().astype(np.int64), values, path, column)
    if text is None:
        raise FileFormatError(f"{path}: column {column!r} has type {values.dtype}; use int64 ms or ISO-8601")
    is_int = text.str.match(_INT_TEXT)
    if is_int.all():
        return _checked_ms(text.astype(np.int64).to_numpy(), values, path, column)
    if is_int.any():
        raise _fail(path, column, values, is_int, "mixes integer milliseconds with ISO-8601 strings")
    parsed = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    unparsable = parsed.isna()
    if unparsable.any():
        raise _fail(path, column, values, unparsable, "not an ISO-8601 time nor integer milliseconds")
    # ``utc=True`` silently reads naive times as UTC; a file must say which zone it means.
    naive = ~text.str.contains(_TIME_WITH_ZONE, regex=True)
    if naive.any():
        raise _fail(path, column, values, naive, "timestamp without timezone (write Z or +00:00)")
    return _datetimes_to_ms(parsed)


def _datetimes_to_ms(values: pd.Series) -> np.ndarray:
    utc = values.dt.tz_convert("UTC").dt.tz_localize(None)
    ms: np.ndarray = utc.to_numpy().astype("datetime64[ms]").astype(np.int64)
    return ms


def _checked_ms(ms: np.ndarray, values: pd.Series, path: Path, column: str) -> np.ndarray:
    too_small = pd.Series(ms < MIN_EPOCH_MS)
    if too_small.any():
        raise _fail(
            path, column, values, too_small, "looks like seconds, expected milliseconds since the epoch"
        )
    return ms


def _parse_number(values: pd.Series, path: Path, column: str, required: bool) -> np.ndarray:
    blank = _blank(values)
    if required and blank.any():
        raise _fail(path, column, values, blank, "missing value")
    if pd.api.types.is_bool_dtype(values.dtype):
        raise FileFormatError(f"{path}: column {column!r} has type bool, not a number")
    if pd.api.types.is_numeric_dtype(values.dtype):
        return values.to_numpy(dtype=np.float64)
    numbers = pd.to_numeric(values.where(~blank), errors="coerce")
    unparsable = numbers.isna() & ~blank
    if unparsable.any():
        raise _fail(path, column, values, unparsable, "not a number")
    return numbers.to_numpy(dtype=np.float64)


def read_candle_file(path: str | Path) -> pd.DataFrame:
    """Read one symbol's 1-minute candles as a candle frame, rows in file order.

    Raises ``FileFormatError`` naming the file and the column for anything not in the documented format.
    """
    path = Path(path)
    frame = _normalise_columns(_load(path), path)
    time_columns = [c for c in TIME_COLUMNS if c in frame.columns]
    if len(time_columns) != 1:
        found = "both" if time_columns else "neither"
        raise FileFormatError(f"{path}: need exactly one time column of {list(TIME_COLUMNS)}, found {found}")
    missing = [c for c in REQUIRED_VALUE_COLUMNS if c not in frame.columns]
    if missing:
        raise FileFormatError(
            f"{path}: missing column(s) {missing}; required: {list(REQUIRED_VALUE_COLUMNS)}"
        )
    out = pd.DataFrame({"open_time": _parse_time(frame[time_columns[0]], path, time_columns[0])})
    for column in REQUIRED_VALUE_COLUMNS:
        out[column] = _parse_number(frame[column], path, column, required=True)
    for column in OPTIONAL_VALUE_COLUMNS:
        if column in frame.columns:
            out[column] = _parse_number(frame[column], path, column, required=False)
    return coerce_candles(out)[list(CANDLE_COLUMNS)]


class FileCandleSource:
    """``CandleSource`` over one candle file per symbol; ``name`` is ``file``.

    Files are read once and kept in memory. ``fetch`` keeps file order inside ``[start_ms, end_ms)``.
    """

    name: str = "file"

    def __init__(self, files: Mapping[str, str | Path]) -> None:
        self._files = {symbol: Path(p) for symbol, p in files.items()}
        self._frames: dict[str, pd.DataFrame] = {}

    @classmethod
    def from_directory(cls, directory: str | Path) -> FileCandleSource:
        """One symbol per supported file, named by the file name without suffix (``BTCUSDT.csv``)."""
        root = Path(directory)
        if not root.is_dir():
            raise FileFormatError(f"{root}: not a directory")
        files: dict[str, Path] = {}
        for path in sorted(root.iterdir()):
            suffix = _suffix(path)
            if path.is_file() and suffix in (*CSV_SUFFIXES, *PARQUET_SUFFIXES):
                symbol = path.name[: -len(suffix)]
                if symbol in files:
                    raise FileFormatError(f"{root}: symbol {symbol!r} has more than one file")
                files[symbol] = path
        return cls(files)

    def list_symbols(self) -> list[str]:
        return sorted(self._files)

    def fetch(self, symbol: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        if symbol not in self._files:
            raise UnknownSymbolError(symbol, self.name, "no file for it")
        frame = self._frames.get(symbol)
        if frame is None:
            frame = self._frames[symbol] = read_candle_file(self._files[symbol])
        times = frame["open_time"]
        return frame[(times >= start_ms) & (times < end_ms)].reset_index(drop=True)
