"""Bybit v5 public 1-minute klines over ccxt pro's WebSocket client (``CandleFeed``).

ccxt's ``handle_ohlcv`` keeps only start/open/high/low/close/volume and drops Bybit's ``confirm``
flag, and what ``watch_ohlcv_for_symbols`` returns is a per-symbol cache view that can skip a
minute's final update (LIBRARY_FACTS). So the feed reads every kline message itself, in a subclass
of ``ccxt.pro.bybit``, before ccxt's own handler runs; the watch calls only keep the subscriptions
alive. One ``run`` is one connection: it raises ``SourceUnavailableError`` when the connection is
lost, the keep-alive pong is missed twice, or nothing arrives for ``silence_timeout_s``.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ccxt
import ccxt.pro

from core.errors import ConfigError, SourceError, SourceUnavailableError
from core.logging import get_logger
from core.settings import ExchangeSettings, StreamSettings
from core.timegrid import now_ms
from data.sources.exchange import resolve_api_urls
from data.stream.feed import KlineUpdate, UpdateSink

TIMEFRAME = "1m"
_INTERVAL_ID = "1"
_WS_KEY = "ws"
_ALL = "all"  # the ws_urls key that redirects every URL (as in ExchangeSettings.api_urls)
_CATEGORIES: dict[str, str] = {"swap": "linear", "future": "linear", "spot": "spot"}
# ccxt still fills its own per-symbol candle cache (1000 rows by default); the feed never reads it.
_CCXT_OHLCV_CACHE = 3
# Closing a connection whose server went quiet must not hold up the caller's reconnect.
_CLOSE_TIMEOUT_S = 2.0
_MAX_ERROR_CHARS = 300

_log = get_logger(__name__)


def resolve_ws_urls(current: object, overrides: Mapping[str, str], exchange_id: str) -> dict[str, Any]:
    """A copy of ccxt's nested ``urls['api']['ws']`` with ``ExchangeSettings.ws_urls`` applied.

    Keys are dotted paths into the nesting (``public.linear``); a path to a branch (``public``) sets
    every URL under it and ``all`` sets every URL. Broader keys apply first, so ``{"all": a,
    "public.linear": b}`` sends linear to ``b`` and everything else to ``a``. The nesting is kept:
    ccxt picks ``ws.public.<category>`` and breaks if ``ws`` becomes a string.
    """
    if not isinstance(current, Mapping):
        raise ConfigError(f"{exchange_id}: ccxt urls['api']['ws'] has an unexpected shape {type(current)}")
    resolved: dict[str, Any] = copy.deepcopy(dict(current))
    for key in sorted(overrides, key=lambda k: (k != _ALL, k.count("."))):
        url = overrides[key]
        if not url.startswith(("ws://", "wss://")):
            raise ConfigError(f"exchange.ws_urls[{key!r}] = {url!r} is not a ws:// or wss:// URL")
        if key == _ALL:
            _set_leaves(resolved, url)
            continue
        *branch, leaf = key.split(".")
        node: Any = resolved
        for part in branch:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            raise ConfigError(
                f"exchange.ws_urls key {key!r} is not a path into {exchange_id}'s urls['api']['ws']"
            )
        if isinstance(node[leaf], dict):
            _set_leaves(node[leaf], url)
        else:
            node[leaf] = url
    return resolved


def _set_leaves(tree: dict[str, Any], url: str) -> None:
    for key, value in tree.items():
        if isinstance(value, dict):
            _set_leaves(value, url)
        else:
            tree[key] = url


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + "…"


def _ohlcv_hash(symbol: str) -> str:
    # ccxt's message hash for one symbol's candles (bybit watch_ohlcv_for_symbols).
    return f"ohlcv::{symbol}::{TIMEFRAME}"


class _SilenceWatchdog:
    """Calls ``on_silent`` once nothing was ``touch``-ed for ``timeout_s``.

    ``touch`` only records the time: a message costs no timer work. The single timer, when it fires,
    re-arms itself for the newest deadline, so it wakes at most once per ``timeout_s`` while traffic
    flows and exactly at the deadline when it stops.
    """

    def __init__(self, timeout_s: float, on_silent: Callable[[], None]) -> None:
        self._timeout_s = timeout_s
        self._on_silent = on_silent
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._last = self._loop.time()
        self._handle = self._loop.call_at(self._last + self._timeout_s, self._check)

    def touch(self) -> None:
        self._last = self._loop.time()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        deadline = self._last + self._timeout_s
        if self._loop.time() >= deadline:
            self._handle = None
            self._on_silent()
        else:
            self._handle = self._loop.call_at(deadline, self._check)


class _Run:
    """One ``run``: the topics it streams, its sink, and the first reason it has to end."""

    def __init__(
        self,
        topics: dict[str, str],
        sink: UpdateSink,
        clock: Callable[[], int],
        silence_timeout_s: float,
    ) -> None:
        self.topics = topics  # Bybit topic -> unified symbol
        self.sink = sink
        self.clock = clock
        self.refused: set[str] = set()
        self.watchers = 0
        self.ended = asyncio.Event()
        self.error: BaseException | None = None
        self.watchdog = _SilenceWatchdog(silence_timeout_s, self._silent)
        self._silence_timeout_s = silence_timeout_s

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
            self.ended.set()

    def lost(self, reason: str, cause: BaseException | None = None) -> None:
        error = SourceUnavailableError(f"bybit kline stream lost: {reason}")
        error.__cause__ = cause
        self.fail(error)

    def _silent(self) -> None:
        self.fail(SourceUnavailableError(f"bybit kline stream silent for {self._silence_timeout_s:g} s"))

    def on_klines(self, message: dict[str, Any]) -> None:
        symbol = self.topics.get(str(message.get("topic", "")))
        if symbol is None or self.error is not None:
            return
        received_ms = self.clock()
        updates: list[KlineUpdate] = []
        for entry in message.get("data") or []:
            try:
                updates.append(_parse_kline(symbol, entry, received_ms))
            except (KeyError, TypeError, ValueError) as exc:
                _log.warning("bybit_kline_malformed", symbol=symbol, entry=entry, error=_short(exc))
        if not updates:
            return
        try:
            self.sink(updates)
        except Exception as exc:  # noqa: BLE001 - the caller's sink may raise anything; not swallowed:
            # raised inside ccxt's receive callback it would stop the receive loop without a word;
            # ending the run hands it to the caller instead.
            self.fail(exc)


def _parse_kline(symbol: str, entry: Mapping[str, Any], received_ms: int) -> KlineUpdate:
    confirm = entry["confirm"]
    if not isinstance(confirm, bool):
        raise TypeError(f"confirm is {confirm!r}, not a boolean")
    return KlineUpdate(
        symbol=symbol,
        open_ms=int(entry["start"]),
        open=float(entry["open"]),
        high=float(entry["high"]),
        low=float(entry["low"]),
        close=float(entry["close"]),
        volume=float(entry["volume"]),
        turnover=float(entry["turnover"]),
        confirmed=confirm,
        received_ms=received_ms,
    )


class _BybitPro(ccxt.pro.bybit):  # type: ignore[misc]  # ccxt ships no type information
    """ccxt pro's bybit, reporting every message, kline and connection end to the current run."""

    kline_run: _Run | None = None

    def _current(self, client: Any) -> bool:
        # A client closed by an earlier run can still report its end; it must neither end the current
        # run nor (in ccxt's on_close) evict the current run's client registered under the same URL.
        return self.clients.get(client.url) is client

    def handle_message(self, client: Any, message: Any) -> None:
        if self.kline_run is not None and self._current(client):
            self.kline_run.watchdog.touch()
        super().handle_message(client, message)

    def handle_ohlcv(self, client: Any, message: dict[str, Any]) -> None:
        if self.kline_run is not None and self._current(client):
            self.kline_run.on_klines(message)
        super().handle_ohlcv(client, message)

    def on_close(self, client: Any, error: Any) -> None:
        if not self._current(client):
            return
        if self.kline_run is not None:
            self.kline_run.lost(f"connection closed (code {error})")
        super().on_close(client, error)

    def on_error(self, client: Any, error: Any) -> None:
        if not self._current(client):
            return
        if self.kline_run is not None:
            cause = error if isinstance(error, BaseException) else None
            self.kline_run.lost(_short(error) if cause else str(error), cause)
        super().on_error(client, error)


class BybitKlineFeed:
    """``CandleFeed`` for Bybit's public ``kline.1.<symbol>`` topics (``settings.market_type``).

    ``markets``: ccxt markets from an earlier feed (``feed.markets``) so a reconnect does not load
    them again over REST; otherwise they are loaded once, through ``settings.api_urls``.
    ``keepalive_ms``: ccxt's ping interval (Bybit's own is 18 s; two missed pongs end the run).
    ``clock``: ms since the epoch, stamped on each update as ``received_ms``.
    """

    name = "bybit"

    def __init__(
        self,
        settings: ExchangeSettings,
        *,
        silence_timeout_s: float = StreamSettings.model_fields["silence_timeout_s"].default,
        subscribe_chunk: int = StreamSettings.model_fields["subscribe_chunk"].default,
        markets: Mapping[str, Any] | None = None,
        keepalive_ms: int | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        if settings.id != "bybit":
            raise ConfigError(f"the Bybit kline feed needs exchange.id 'bybit', not {settings.id!r}")
        if silence_timeout_s <= 0 or subscribe_chunk < 1:
            raise ConfigError("silence_timeout_s must be > 0 and subscribe_chunk >= 1")
        self._settings = settings
        self._silence_timeout_s = silence_timeout_s
        self._chunk = subscribe_chunk
        self._clock = clock
        self._exchange = self._build(settings, keepalive_ms)
        self._state: _Run | None = None
        if markets:
            self._exchange.set_markets(dict(markets))

    @classmethod
    def from_settings(
        cls, exchange: ExchangeSettings, stream: StreamSettings, **options: Any
    ) -> BybitKlineFeed:
        return cls(
            exchange,
            silence_timeout_s=stream.silence_timeout_s,
            subscribe_chunk=stream.subscribe_chunk,
            **options,
        )

    @staticmethod
    def _build(settings: ExchangeSettings, keepalive_ms: int | None) -> _BybitPro:
        category = _CATEGORIES[settings.market_type]
        options: dict[str, Any] = {
            "defaultType": settings.market_type,
            "fetchMarkets": {"types": [category]},
            "OHLCVLimit": _CCXT_OHLCV_CACHE,
        }
        if keepalive_ms is not None:
            # ccxt copies options['ws'] onto each new WebSocket client (Client.keepAlive).
            options["ws"] = {"keepAlive": keepalive_ms}
        exchange = _BybitPro(
            {
                "enableRateLimit": settings.enable_rate_limit,
                "timeout": settings.timeout_ms,
                "options": options,
            }
        )
        api = dict(exchange.urls["api"])
        ws = api.pop(_WS_KEY)
        if settings.api_urls:
            rest = resolve_api_urls(api, settings.api_urls, settings.id)
            api = dict(rest) if isinstance(rest, Mapping) else api
        if settings.ws_urls:
            ws = resolve_ws_urls(ws, settings.ws_urls, settings.id)
        exchange.urls["api"] = {**api, _WS_KEY: ws}
        return exchange

    @property
    def markets(self) -> dict[str, Any] | None:
        """ccxt's markets once loaded (pass them to the next feed), else None."""
        markets: dict[str, Any] | None = self._exchange.markets
        return markets

    @property
    def refused_symbols(self) -> frozenset[str]:
        """Symbols whose subscription the server refused during the current (or last) run."""
        return frozenset(self._state.refused) if self._state else frozenset()

    async def load_markets(self) -> dict[str, Any]:
        if self._exchange.markets:
            return self.markets or {}
        try:
            markets: dict[str, Any] = await self._exchange.load_markets()
        except ccxt.NetworkError as exc:
            raise SourceUnavailableError(f"bybit load_markets failed: {_short(exc)}") from exc
        except ccxt.BaseError as exc:
            raise SourceError(f"bybit load_markets refused: {_short(exc)}") from exc
        _log.info("bybit_markets_loaded", markets=len(markets))
        return markets

    async def run(self, symbols: Sequence[str], sink: UpdateSink) -> None:
        if self._exchange.kline_run is not None:
            raise RuntimeError("BybitKlineFeed.run is already running; use one feed per stream")
        await self.load_markets()
        topics = self._topics(symbols)
        state = _Run(topics, sink, self._clock, self._silence_timeout_s)
        self._state = state
        self._exchange.kline_run = state
        tasks: set[asyncio.Task[None]] = set()

        def spawn(chunk: list[str]) -> None:
            state.watchers += 1
            task = asyncio.create_task(self._watch(state, chunk, spawn), name=f"bybit-klines-{chunk[0]}")
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        ordered = list(topics.values())
        state.watchdog.start()
        try:
            for i in range(0, len(ordered), self._chunk):
                spawn(ordered[i : i + self._chunk])
            _log.info("bybit_stream_subscribing", symbols=len(ordered), chunks=len(tasks))
            await state.ended.wait()
            assert state.error is not None
            raise state.error
        finally:
            state.watchdog.stop()
            self._exchange.kline_run = None
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._close_connections()

    async def close(self) -> None:
        current = self._exchange.kline_run
        if current is not None:
            # Ends a run in progress with a clear reason instead of a wall of cancelled watches.
            current.lost("the feed was closed")
        await self._exchange.close()

    def _topics(self, symbols: Sequence[str]) -> dict[str, str]:
        if not symbols:
            raise ConfigError("the Bybit kline feed was given no symbols")
        topics: dict[str, str] = {}
        unknown: list[str] = []
        for symbol in dict.fromkeys(symbols):
            market = self._exchange.markets.get(symbol)
            if market is None:
                unknown.append(symbol)
                continue
            topics[f"kline.{_INTERVAL_ID}.{market['id']}"] = market["symbol"]
        if unknown:
            # A delisted symbol must not keep the rest of the universe off the stream.
            _log.warning("bybit_stream_unknown_symbols", symbols=unknown[:20], count=len(unknown))
        if not topics:
            raise SourceError(
                f"none of the {len(unknown)} symbols is a bybit {self._settings.market_type} market"
            )
        return topics

    async def _watch(self, state: _Run, chunk: list[str], spawn: Callable[[list[str]], None]) -> None:
        """Keep one subscribe request's future consumed until the run ends or the server refuses it."""
        pairs = [[symbol, TIMEFRAME] for symbol in chunk]
        try:
            while not state.ended.is_set():
                try:
                    await self._exchange.watch_ohlcv_for_symbols(pairs)
                except ccxt.NetworkError as exc:
                    state.lost(_short(exc), exc)
                except ccxt.ExchangeClosedByUser as exc:
                    state.lost("the feed was closed", exc)
                except ccxt.ExchangeError as exc:
                    if self._still_subscribed(chunk):
                        # An error ccxt could not attribute to a request reaches every watcher; the
                        # subscription itself stands.
                        _log.warning("bybit_stream_error", symbols=chunk[:3], error=_short(exc))
                        continue
                    self._refused(state, chunk, exc, spawn)
                    return
        except Exception as exc:  # noqa: BLE001 - a watcher task's boundary: whatever ends it ends the
            # run with that error (raised to the caller), instead of dying unseen in a background task.
            state.fail(exc)
        finally:
            state.watchers -= 1
            if state.watchers == 0 and not state.ended.is_set():
                state.lost(f"the server refused every subscription ({len(state.refused)} symbols)")

    def _still_subscribed(self, chunk: list[str]) -> bool:
        hashes = [_ohlcv_hash(symbol) for symbol in chunk]
        return any(h in client.subscriptions for client in self._exchange.clients.values() for h in hashes)

    def _refused(
        self, state: _Run, chunk: list[str], exc: BaseException, spawn: Callable[[list[str]], None]
    ) -> None:
        # ccxt rejected the request's futures and forgot its topics. Bybit refuses a whole request for
        # one bad topic (or too many args), so its other symbols are asked for one by one.
        if len(chunk) > 1:
            _log.warning("bybit_subscribe_refused", symbols=chunk, error=_short(exc), retry="one by one")
            for symbol in chunk:
                spawn([symbol])
        else:
            _log.warning("bybit_symbol_refused", symbol=chunk[0], error=_short(exc))
            state.refused.add(chunk[0])

    async def _close_connections(self) -> None:
        # The next run must start on a fresh connection with every topic subscribed again.
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await self._exchange.close_ws_clients()
        except TimeoutError:
            _log.warning("bybit_stream_close_timeout", timeout_s=_CLOSE_TIMEOUT_S)
        self._exchange.clients.clear()
