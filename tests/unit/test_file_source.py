"""CSV and Parquet candle import (docs/DATA_IMPORT.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.errors import FileFormatError, UnknownSymbolError
from core.timegrid import MINUTE_MS, iso_minute, parse_minute
from data.candles import CANDLE_COLUMNS
from data.sources.base import CandleSource
from data.sources.files import FileCandleSource, read_candle_file

T0 = parse_minute("2026-11-24T10:00:00Z")
HEADER = "timestamp,open,high,low,close,volume,turnover\n"


@pytest.fixture
def candles() -> pd.DataFrame:
    n = 5
    close = 100.0 + np.arange(n) * 0.25
    return pd.DataFrame(
        {
            "open_time": T0 + np.arange(n, dtype=np.int64) * MINUTE_MS,
            "open": close - 0.125,
            "high": close + 0.5,
            "low": close - 0.5,
            "close": close,
            "volume": np.arange(1, n + 1, dtype=np.float64) * 1.5,
            "turnover": close * 3.0,
        }
    )


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_round_trip_with_ms_timestamps(tmp_path: Path, candles: pd.DataFrame) -> None:
    path = tmp_path / "BTCUSDT.csv"
    candles.rename(columns={"open_time": "timestamp"}).to_csv(path, index=False)
    pd.testing.assert_frame_equal(read_candle_file(path), candles)


def test_csv_with_iso_timestamps_and_offsets(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "a.csv",
        HEADER
        + f"{iso_minute(T0)},1,2,0.5,1.5,10,15\n"
        # The same instant plus one minute, written in another zone.
        + "2026-11-24T11:01:00+01:00,1.5,2,1,1.75,11,\n",
    )
    frame = read_candle_file(path)
    assert frame["open_time"].tolist() == [T0, T0 + MINUTE_MS]
    assert frame["open_time"].dtype == np.int64
    assert frame["turnover"].iloc[0] == 15.0
    assert np.isnan(frame["turnover"].iloc[1])


def test_open_time_column_and_extra_columns(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "a.csv",
        f"Symbol, Open_Time ,open,high,low,close,volume,trades\nBTC,{T0},1,2,0.5,1.5,10,7\n",
    )
    frame = read_candle_file(path)
    assert list(frame.columns) == list(CANDLE_COLUMNS)
    assert frame["open_time"].tolist() == [T0]
    assert frame["turnover"].isna().all()


def test_parquet_round_trip(tmp_path: Path, candles: pd.DataFrame) -> None:
    path = tmp_path / "BTCUSDT.parquet"
    candles.rename(columns={"open_time": "timestamp"}).to_parquet(path, index=False)
    pd.testing.assert_frame_equal(read_candle_file(path), candles)


def test_parquet_with_tz_aware_datetimes(tmp_path: Path, candles: pd.DataFrame) -> None:
    stored = candles.drop(columns="open_time")
    stored.insert(0, "timestamp", pd.to_datetime(candles["open_time"], unit="ms", utc=True))
    path = tmp_path / "a.parquet"
    stored.to_parquet(path, index=False)
    pd.testing.assert_frame_equal(read_candle_file(path), candles)


def test_parquet_with_naive_datetimes_is_rejected(tmp_path: Path, candles: pd.DataFrame) -> None:
    stored = candles.drop(columns="open_time")
    stored.insert(0, "timestamp", pd.to_datetime(candles["open_time"], unit="ms"))
    path = tmp_path / "a.parquet"
    stored.to_parquet(path, index=False)
    with pytest.raises(FileFormatError, match="naive"):
        read_candle_file(path)


@pytest.mark.parametrize("naive", ["2026-11-24", "2026-11-24 10:01", "2026-11-24T10:01:00.000"])
def test_every_naive_form_is_rejected(tmp_path: Path, naive: str) -> None:
    path = write_csv(tmp_path / "naive.csv", HEADER + f"{naive},1,2,0.5,1.5,10,\n")
    with pytest.raises(FileFormatError, match="without timezone"):
        read_candle_file(path)


def test_naive_iso_timestamp_is_rejected(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "naive.csv",
        HEADER + "2026-11-24T10:00:00Z,1,2,0.5,1.5,10,\n2026-11-24T10:01:00,1,2,0.5,1.5,10,\n",
    )
    with pytest.raises(FileFormatError, match="without timezone") as info:
        read_candle_file(path)
    message = str(info.value)
    assert "naive.csv" in message
    assert "'timestamp'" in message
    assert "data row 2" in message


@pytest.mark.parametrize("dropped", ["close", "volume"])
def test_missing_column_is_rejected(tmp_path: Path, candles: pd.DataFrame, dropped: str) -> None:
    path = tmp_path / "a.csv"
    candles.rename(columns={"open_time": "timestamp"}).drop(columns=dropped).to_csv(path, index=False)
    with pytest.raises(FileFormatError, match=dropped) as info:
        read_candle_file(path)
    assert "a.csv" in str(info.value)


def test_missing_time_column_is_rejected(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", "time,open,high,low,close,volume\n1,1,1,1,1,1\n")
    with pytest.raises(FileFormatError, match="timestamp"):
        read_candle_file(path)


@pytest.mark.parametrize(
    ("row", "column", "why"),
    [
        (f"{T0},1,2,0.5,abc,10,", "close", "not a number"),
        (f"{T0},1,2,0.5,,10,", "close", "missing value"),
        (f"{T0},1,2,0.5,1.5,10,x", "turnover", "not a number"),
        ("yesterday+01:00,1,2,0.5,1.5,10,", "timestamp", "ISO-8601"),
        (",1,2,0.5,1.5,10,", "timestamp", "missing time"),
        (f"{T0 // 1000},1,2,0.5,1.5,10,", "timestamp", "seconds"),
        (f"{iso_minute(T0)},1,2,0.5,1.5,10,\n{T0 + MINUTE_MS},1,2,0.5,1.5,10,", "timestamp", "mixes"),
    ],
)
def test_unparsable_cells_name_the_column(tmp_path: Path, row: str, column: str, why: str) -> None:
    path = write_csv(tmp_path / "bad.csv", HEADER + row + "\n")
    with pytest.raises(FileFormatError, match=why) as info:
        read_candle_file(path)
    assert f"'{column}'" in str(info.value)
    assert "bad.csv" in str(info.value)


def test_rows_are_returned_as_in_the_file(tmp_path: Path) -> None:
    # Unsorted and duplicated on purpose: validation, not the reader, must reject it.
    times = [T0 + MINUTE_MS, T0, T0, T0 + 2 * MINUTE_MS]
    path = write_csv(tmp_path / "a.csv", HEADER + "".join(f"{t},1,2,0.5,1.5,10,\n" for t in times))
    assert read_candle_file(path)["open_time"].tolist() == times


def test_unsupported_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(FileFormatError, match="unsupported"):
        read_candle_file(write_csv(tmp_path / "a.json", "{}"))
    with pytest.raises(FileFormatError, match="cannot read"):
        read_candle_file(tmp_path / "absent.csv")
    with pytest.raises(FileFormatError, match="cannot read"):
        read_candle_file(write_csv(tmp_path / "junk.parquet", "not parquet"))


def test_file_source_fetches_a_range_per_symbol(tmp_path: Path, candles: pd.DataFrame) -> None:
    renamed = candles.rename(columns={"open_time": "timestamp"})
    renamed.to_csv(tmp_path / "BTCUSDT.csv", index=False)
    renamed.to_parquet(tmp_path / "ETHUSDT.parquet", index=False)
    (tmp_path / "notes.txt").write_text("ignored")
    source = FileCandleSource.from_directory(tmp_path)

    assert isinstance(source, CandleSource)
    assert source.name == "file"
    assert source.list_symbols() == ["BTCUSDT", "ETHUSDT"]
    frame = source.fetch("ETHUSDT", T0 + MINUTE_MS, T0 + 3 * MINUTE_MS)
    pd.testing.assert_frame_equal(frame, candles.iloc[1:3].reset_index(drop=True))
    with pytest.raises(UnknownSymbolError):
        source.fetch("SOLUSDT", T0, T0 + MINUTE_MS)
