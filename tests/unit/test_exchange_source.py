"""ExchangeCandleSource against the local Bybit look-alike (tests/fakes/exchange_server.py); no network."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest

from core.errors import ConfigError, SourceError, SourceUnavailableError, UnknownSymbolError
from core.settings import ExchangeSettings
from core.timegrid import MINUTE_MS, parse_minute
from data.candles import CANDLE_COLUMNS
from data.sources.base import CandleSource
from data.sources.exchange import ExchangeCandleSource, build_exchange, resolve_api_urls
from tests.fakes.exchange_server import (
    DEFAULT_SYMBOLS,
    INSTRUMENTS_PATH,
    KLINE_PATH,
    FakeExchangeServer,
    Fault,
    running_exchange_server,
)

# Pinned mid-minute so that neither side can race the minute boundary.
FORMING = parse_minute("2026-11-24T10:31:00Z")
NOW_MS = FORMING + 25_000
BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"
# Listed by instruments-info but refused by kline, as after a delisting.
XRP = "XRP/USDT:USDT"
MAX_RETRIES = 3
BASE_DELAY_S = 0.5

SourceFactory = Callable[..., ExchangeCandleSource]


@pytest.fixture
def server() -> Iterator[FakeExchangeServer]:
    with running_exchange_server(
        symbols=(*DEFAULT_SYMBOLS, "XRPUSDT"),
        closed_symbols=("LUNAUSDT",),
        kline_unsupported=("XRPUSDT",),
        clock=lambda: NOW_MS,
    ) as srv:
        yield srv
        assert srv.errors == []


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_source(server: FakeExchangeServer, sleeps: list[float]) -> Iterator[SourceFactory]:
    created: list[ExchangeCandleSource] = []

    def make(**overrides: Any) -> ExchangeCandleSource:
        fields: dict[str, Any] = {
            "api_urls": {"all": server.base_url},
            "page_limit": 200,
            "max_retries": MAX_RETRIES,
            "retry_base_delay_s": BASE_DELAY_S,
            "timeout_ms": 5_000,
            # ccxt's limiter spaces bybit public calls 100 ms apart; it is on in production.
            "enable_rate_limit": False,
        }
        fields.update(overrides)
        source = ExchangeCandleSource(ExchangeSettings(**fields), sleep=sleeps.append, clock=lambda: NOW_MS)
        created.append(source)
        return source

    yield make
    for source in created:
        source.close()


def kline_requests(server: FakeExchangeServer) -> int:
    return len(server.requests(KLINE_PATH))


def assert_backoff(sleeps: list[float], retries: int) -> None:
    """The n-th retry waits between half and all of base * 2**(n-1): exponential, with jitter."""
    assert len(sleeps) == retries
    for n, delay in enumerate(sleeps):
        assert BASE_DELAY_S * 2**n / 2 <= delay <= BASE_DELAY_S * 2**n


def assert_matches_server(
    frame: pd.DataFrame, server: FakeExchangeServer, symbol_id: str, start: int, end: int
) -> None:
    expected = np.asarray(server.candles(symbol_id, start, end))
    assert list(frame.columns) == list(CANDLE_COLUMNS)
    assert frame["open_time"].dtype == np.int64
    np.testing.assert_array_equal(frame["open_time"].to_numpy(), expected[:, 0].astype(np.int64))
    got = frame[["open", "high", "low", "close", "volume"]].to_numpy()
    np.testing.assert_array_equal(got, expected[:, 1:6])
    # ccxt's bybit parse_ohlcv keeps six fields, so turnover is unknown.
    assert frame["turnover"].isna().all()


def test_is_a_candle_source_named_after_the_exchange(make_source: SourceFactory) -> None:
    source = make_source()
    assert isinstance(source, CandleSource)
    assert source.name == "bybit"


def test_list_symbols_gives_active_linear_usdt_perpetuals_and_caches(
    make_source: SourceFactory, server: FakeExchangeServer
) -> None:
    source = make_source()
    assert source.list_symbols() == [BTC, ETH, "SOL/USDT:USDT", XRP]
    assert source.list_symbols() == [BTC, ETH, "SOL/USDT:USDT", XRP]
    # Only the linear category is loaded (plainly and for PreLaunch, concurrently), once.
    calls = server.requests()
    assert {r.path for r in calls} == {INSTRUMENTS_PATH}
    assert sorted(r.params.get("status") or "plain" for r in calls) == ["PreLaunch", "plain"]
    assert {r.params["category"] for r in calls} == {"linear"}


def test_fetch_pages_forward_and_returns_every_candle_once(
    make_source: SourceFactory, server: FakeExchangeServer
) -> None:
    start, end = FORMING - 1000 * MINUTE_MS, FORMING
    frame = make_source(page_limit=200).fetch(BTC, start, end)

    assert len(frame) == 1000
    assert frame["open_time"].is_monotonic_increasing
    assert frame["open_time"].is_unique
    assert frame["open_time"].iloc[0] == start
    assert frame["open_time"].iloc[-1] == end - MINUTE_MS
    assert_matches_server(frame, server, "BTCUSDT", start, end)
    calls = server.requests(KLINE_PATH)
    assert [int(r.params["start"]) for r in calls] == [start + k * 200 * MINUTE_MS for k in range(5)]
    assert {r.params["limit"] for r in calls} == {"200"}


def test_forming_candle_is_dropped(make_source: SourceFactory, server: FakeExchangeServer) -> None:
    start = FORMING - 150 * MINUTE_MS
    # The exchange's page does contain the forming candle...
    assert server.candles("BTCUSDT", start, FORMING + MINUTE_MS)[-1][0] == FORMING

    frame = make_source().fetch(BTC, start, FORMING)

    # ...and the source never returns it.
    assert len(frame) == 150
    assert frame["open_time"].max() == FORMING - MINUTE_MS
    assert_matches_server(frame, server, "BTCUSDT", start, FORMING)


def test_end_after_now_is_capped_at_the_forming_candle(make_source: SourceFactory) -> None:
    start = FORMING - 150 * MINUTE_MS
    frame = make_source().fetch(BTC, start, FORMING + 10 * MINUTE_MS)
    assert frame["open_time"].max() == FORMING - MINUTE_MS
    assert len(frame) == 150


def test_empty_range_asks_nothing(make_source: SourceFactory, server: FakeExchangeServer) -> None:
    frame = make_source().fetch(BTC, FORMING, FORMING)
    assert frame.empty
    assert list(frame.columns) == list(CANDLE_COLUMNS)
    assert server.requests() == []


def test_gaps_and_end_of_data_terminate(make_source: SourceFactory, server: FakeExchangeServer) -> None:
    # Data only in [-500, -300) minutes with a hole; the walk must skip the hole and stop at the end.
    kept = [m for m in range(500, 300, -1) if not 420 <= m < 440]
    server.set_candles("ETHUSDT", [[FORMING - m * MINUTE_MS, 10.0, 11.0, 9.0, 10.5, 2.0] for m in kept])
    start, end = FORMING - 600 * MINUTE_MS, FORMING

    frame = make_source(page_limit=100).fetch(ETH, start, end)

    assert len(frame) == len(kept)
    assert_matches_server(frame, server, "ETHUSDT", start, end)
    # 180 candles in pages of 100, then one empty page.
    assert kline_requests(server) == 3


@pytest.mark.parametrize("http_status", [200, 429])
def test_rate_limit_is_retried_with_backoff(
    make_source: SourceFactory, server: FakeExchangeServer, sleeps: list[float], http_status: int
) -> None:
    server.inject(Fault.rate_limit(http_status=http_status), times=2)
    start = FORMING - 100 * MINUTE_MS

    frame = make_source().fetch(BTC, start, FORMING)

    assert_matches_server(frame, server, "BTCUSDT", start, FORMING)
    assert kline_requests(server) == 3
    assert_backoff(sleeps, 2)


def test_timeout_is_retried(make_source: SourceFactory, server: FakeExchangeServer) -> None:
    server.inject(Fault.delay(2.0))
    frame = make_source(timeout_ms=200).fetch(BTC, FORMING - 10 * MINUTE_MS, FORMING)
    assert len(frame) == 10
    assert kline_requests(server) == 2


def test_persistent_5xx_ends_as_source_unavailable(
    make_source: SourceFactory, server: FakeExchangeServer, sleeps: list[float]
) -> None:
    server.inject(Fault.server_error(502), times=50)

    with pytest.raises(SourceUnavailableError, match=f"after {MAX_RETRIES} retries"):
        make_source().fetch(BTC, FORMING - 10 * MINUTE_MS, FORMING)

    assert kline_requests(server) == MAX_RETRIES + 1
    assert_backoff(sleeps, MAX_RETRIES)


def test_market_loading_is_retried(make_source: SourceFactory, server: FakeExchangeServer) -> None:
    server.inject(Fault.server_error(503), path=INSTRUMENTS_PATH)
    assert BTC in make_source().list_symbols()


def test_bad_symbol_from_the_exchange_is_not_retried(
    make_source: SourceFactory, server: FakeExchangeServer, sleeps: list[float]
) -> None:
    with pytest.raises(UnknownSymbolError) as info:
        make_source().fetch(XRP, FORMING - 10 * MINUTE_MS, FORMING)

    assert info.value.symbol == XRP
    assert info.value.source == "bybit"
    assert kline_requests(server) == 1
    assert sleeps == []


def test_symbol_missing_from_markets_asks_no_candles(
    make_source: SourceFactory, server: FakeExchangeServer
) -> None:
    with pytest.raises(UnknownSymbolError):
        make_source().fetch("DOGE/USDT:USDT", FORMING - 10 * MINUTE_MS, FORMING)
    assert kline_requests(server) == 0


def test_other_exchange_errors_are_permanent(
    make_source: SourceFactory, server: FakeExchangeServer, sleeps: list[float]
) -> None:
    server.inject(Fault.bybit_error(10001, "params error: limit invalid"))
    with pytest.raises(SourceError):
        make_source().fetch(BTC, FORMING - 10 * MINUTE_MS, FORMING)
    assert kline_requests(server) == 1
    assert sleeps == []


def test_build_exchange_applies_settings() -> None:
    exchange = build_exchange(ExchangeSettings(timeout_ms=1234, api_urls={"all": "http://127.0.0.1:9"}))
    assert exchange.id == "bybit"
    assert exchange.enableRateLimit is True
    assert exchange.timeout == 1234
    assert exchange.options["defaultType"] == "swap"
    assert exchange.options["fetchMarkets"]["types"] == ["linear"]
    assert set(exchange.urls["api"].values()) == {"http://127.0.0.1:9"}
    exchange.close()


def test_unknown_exchange_id_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        ExchangeCandleSource(ExchangeSettings(id="nosuchexchange"))


BYBIT_GROUPS = {g: f"https://api.bybit.com/{g}" for g in ("spot", "futures", "v2", "public", "private")}


@pytest.mark.parametrize("overrides", [{"all": "http://x"}, {"public": "http://x"}, {"public": "http://x/"}])
def test_api_urls_redirect_every_group(overrides: dict[str, str]) -> None:
    assert resolve_api_urls(BYBIT_GROUPS, overrides, "bybit") == dict.fromkeys(BYBIT_GROUPS, "http://x")


def test_api_urls_named_group_beats_all() -> None:
    resolved = resolve_api_urls(BYBIT_GROUPS, {"all": "http://a", "private": "http://p"}, "bybit")
    assert resolved == {**dict.fromkeys(BYBIT_GROUPS, "http://a"), "private": "http://p"}


@pytest.mark.parametrize(
    "overrides",
    [
        {"public": "http://a", "private": "http://p"},  # spot, futures, v2 would stay on bybit.com
        {"rest": "http://a"},
    ],
)
def test_api_urls_that_leave_groups_unmapped_are_rejected(overrides: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        resolve_api_urls(BYBIT_GROUPS, overrides, "bybit")
