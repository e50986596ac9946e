"""A local HTTP server that answers like Bybit's v5 REST API, for what ccxt's ``bybit`` calls.

Point ccxt at it with ``ExchangeSettings(api_urls={"all": server.base_url})``. Only 127.0.0.1 on an
ephemeral port is bound, so tests never reach a real exchange.

Routes live in a dispatch table ``{(method, path): handler}``; ``server.route(...)`` adds more (order
endpoints later). Built in:

``GET /v5/market/instruments-info``
    ``category=linear``: one USDT perpetual per configured symbol (``BTCUSDT`` -> ``BTC/USDT:USDT``);
    ``closed_symbols`` are listed with status ``Closed``. The ``status`` parameter filters (ccxt asks
    once plainly and once with ``status=PreLaunch``). Other categories answer an empty list.
``GET /v5/market/kline``
    Candles exist for each minute from ``history_start_ms`` through the *forming* candle, whose open time
    is the current minute of ``clock`` (as on a real exchange; ``include_forming=False`` drops it).
    Prices follow a deterministic formula per symbol unless ``set_candles`` injected rows. Selection
    mirrors Bybit: the candles with ``start <= open_time <= end`` (``end`` defaults to now); with
    ``start`` the oldest ``limit`` of them, otherwise the newest ``limit``; ``limit`` defaults to 200 and
    is capped at 1000. Rows are answered newest first as strings
    ``[startTime, open, high, low, close, volume, turnover]``. A symbol not listed, or listed in
    ``kline_unsupported``, answers retCode 10001 "Not supported symbols", which ccxt raises as
    ``BadSymbol``. Only ``interval=1`` is served.
``GET /v5/market/time``

Private endpoints (trading; signed requests are accepted, signatures are not verified, the API key
header is recorded with each request) act on one simulated unified account (``BybitAccount``):

``POST /v5/order/create``
    Market orders fill at once at the symbol's newest candle close (fee ``taker_fee_bps``); limit
    orders rest as ``New``. ``orderLinkId`` is unique per account as on Bybit: a second create with
    the same id answers retCode 110072 "OrderLinkedID is duplicate" (ccxt: ``InvalidOrder``). A
    ``reduceOnly`` order is cut to the position's size, and refused with retCode 110017 when there is
    no position on the other side to reduce.
``POST /v5/order/cancel``, ``GET /v5/order/realtime`` (open orders), ``GET /v5/order/history``
    (filled, cancelled and rejected orders), each filtered by ``orderId`` / ``orderLinkId`` / ``symbol``.
``GET /v5/position/list``, ``GET /v5/account/wallet-balance``
    One-way (netted) positions per symbol marked at the newest close; the USDT wallet.
``GET /v5/user/query-api``, ``GET /v5/account/info``, ``GET /v5/asset/coin/query-info``
    What ccxt asks before its first private call: a UTA 2.0 account.

Faults: ``server.inject(Fault.rate_limit(), times=2)`` makes the next two requests to a path (kline by
default) answer with the fault instead. ``Fault.lost_reply()`` / ``Fault.slow_reply(s)`` run the handler
first (the order *is* recorded) and then answer 500 or too late: an unknown outcome for the client.
``server.requests(path)`` is the request log, each request with its arrival time (``Request.at``,
``time.monotonic()``).

Load: ``latency_s`` delays every kline answer in its own handler thread, so concurrent requests
overlap as on a real server; ``private_latency_s=(low, high)`` delays every private (account and
order) answer by a uniform draw from that range (seeded: the same draws every run).
``rate_limit=(n, per_seconds)`` is the server's budget, a sliding window over the requests it served
(every path): a request beyond ``n`` in any ``per_seconds`` answers HTTP 429 with Bybit's retCode
10006 (``server.throttled()`` lists them). ``max_in_window`` and ``per_second`` count arrivals;
``peak_in_flight`` is the most requests handled at once.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
import traceback
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from core.timegrid import MINUTE_MS, floor_minute, now_ms

KLINE_PATH = "/v5/market/kline"
INSTRUMENTS_PATH = "/v5/market/instruments-info"
TIME_PATH = "/v5/market/time"
ORDER_CREATE_PATH = "/v5/order/create"
ORDER_CANCEL_PATH = "/v5/order/cancel"
ORDER_REALTIME_PATH = "/v5/order/realtime"
ORDER_HISTORY_PATH = "/v5/order/history"
POSITION_LIST_PATH = "/v5/position/list"
WALLET_BALANCE_PATH = "/v5/account/wallet-balance"
QUERY_API_PATH = "/v5/user/query-api"
ACCOUNT_INFO_PATH = "/v5/account/info"
COIN_INFO_PATH = "/v5/asset/coin/query-info"
PUBLIC_PATHS = frozenset({KLINE_PATH, INSTRUMENTS_PATH, TIME_PATH})
OPEN_STATUSES = frozenset({"New", "PartiallyFilled", "Untriggered"})
DEFAULT_SYMBOLS: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
QUOTE = "USDT"
KLINE_DEFAULT_LIMIT = 200
KLINE_MAX_LIMIT = 1000


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    params: dict[str, str]
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)

    def json(self) -> dict[str, Any]:
        loaded = json.loads(self.body or b"{}")
        return loaded if isinstance(loaded, dict) else {}


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any] | str


# Every route handler takes the request; those that do not read it name it ``_request``.
Handler = Callable[[Request], Reply]


@dataclass(frozen=True)
class Fault:
    """One scripted answer. ``body=None`` means: wait ``delay_s``, then answer normally.

    ``after_handler``: the request is handled first (its effects happen), then the fault replaces the
    answer: the client cannot tell whether its request took effect.
    """

    status: int = 200
    body: dict[str, Any] | str | None = None
    delay_s: float = 0.0
    after_handler: bool = False

    @classmethod
    def rate_limit(cls, http_status: int = 429) -> Fault:
        """Bybit's "Too many visits!" (retCode 10006); real Bybit sends it with HTTP 200 or 429."""
        return cls(status=http_status, body=_envelope({}, ret_code=10006, ret_msg="Too many visits!"))

    @classmethod
    def bybit_error(cls, ret_code: int, ret_msg: str, http_status: int = 200) -> Fault:
        """Any Bybit error envelope; ccxt maps it through bybit's ``exceptions`` table."""
        return cls(status=http_status, body=_envelope({}, ret_code=ret_code, ret_msg=ret_msg))

    @classmethod
    def server_error(cls, status: int = 503) -> Fault:
        return cls(status=status, body=f"<html><body><h1>{status} Service Unavailable</h1></body></html>")

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        return cls(delay_s=seconds)

    @classmethod
    def lost_reply(cls, status: int = 500) -> Fault:
        """The request takes effect, then the server answers an HTTP error (ccxt: a NetworkError)."""
        return cls(
            status=status,
            body=f"<html><body><h1>{status} Internal Server Error</h1></body></html>",
            after_handler=True,
        )

    @classmethod
    def slow_reply(cls, seconds: float) -> Fault:
        """The request takes effect, the answer comes after ``seconds`` (past the client's timeout)."""
        return cls(delay_s=seconds, after_handler=True)


def max_in_window(times: list[float], window_s: float) -> int:
    """The most of ``times`` (seconds) that lie within any ``window_s``."""
    times = sorted(times)
    most, lo = 0, 0
    for hi, at in enumerate(times):
        while at - times[lo] >= window_s:
            lo += 1
        most = max(most, hi - lo + 1)
    return most


def _envelope(result: dict[str, Any], ret_code: int = 0, ret_msg: str = "OK") -> dict[str, Any]:
    return {"retCode": ret_code, "retMsg": ret_msg, "result": result, "retExtInfo": {}, "time": now_ms()}


def formula_candle(symbol: str, open_ms: int) -> list[str]:
    """The deterministic candle a symbol has at ``open_ms`` when no rows were injected (Bybit strings)."""
    base = 20.0 + zlib.crc32(symbol.encode()) % 5000
    i = open_ms // MINUTE_MS

    def price(k: int) -> float:
        return base * (1.0 + 0.02 * math.sin(k / 47.0) + 0.005 * math.sin(k / 5.3))

    o, c = price(i - 1), price(i)
    volume = 1.0 + (i * 7919) % 1000 / 10.0
    return [
        str(open_ms),
        f"{o:.4f}",
        f"{max(o, c) * 1.001:.4f}",
        f"{min(o, c) * 0.999:.4f}",
        f"{c:.4f}",
        f"{volume:.3f}",
        f"{volume * c:.4f}",
    ]


def _instrument(symbol: str, status: str) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "contractType": "LinearPerpetual",
        "status": status,
        "baseCoin": symbol.removesuffix(QUOTE),
        "quoteCoin": QUOTE,
        "settleCoin": QUOTE,
        "launchTime": "1585526400000",
        "deliveryTime": "0",
        "deliveryFeeRate": "",
        "priceScale": "2",
        "leverageFilter": {"minLeverage": "1", "maxLeverage": "100.00", "leverageStep": "0.01"},
        "priceFilter": {"minPrice": "0.10", "maxPrice": "1999999.80", "tickSize": "0.10"},
        "lotSizeFilter": {
            "maxOrderQty": "1190.000",
            "minOrderQty": "0.001",
            "qtyStep": "0.001",
            "postOnlyMaxOrderQty": "1190.000",
            "maxMktOrderQty": "500.000",
            "minNotionalValue": "5",
        },
        "unifiedMarginTrade": True,
        "fundingInterval": 480,
        "settlementCoin": QUOTE,
        "copyTrading": "both",
        "upperFundingRate": "0.005",
        "lowerFundingRate": "-0.005",
    }


def _num(value: float) -> str:
    return f"{value:.10g}"


@dataclass
class FakeOrder:
    """One order as Bybit's order endpoints describe it (``to_bybit``)."""

    order_id: str
    link_id: str
    symbol: str
    side: str  # "Buy" / "Sell"
    order_type: str  # "Market" / "Limit"
    qty: float
    price: float
    status: str
    created_ms: int
    reduce_only: bool = False
    stop_loss: str = ""
    take_profit: str = ""
    avg_price: float = 0.0
    filled: float = 0.0
    fee: float = 0.0
    reject_reason: str = "EC_NoError"

    def to_bybit(self) -> dict[str, Any]:
        return {
            "orderId": self.order_id,
            "orderLinkId": self.link_id,
            "blockTradeId": "",
            "symbol": self.symbol,
            "price": _num(self.price) if self.order_type == "Limit" else "0",
            "qty": _num(self.qty),
            "side": self.side,
            "isLeverage": "",
            "positionIdx": 0,
            "orderStatus": self.status,
            "cancelType": "UNKNOWN",
            "rejectReason": self.reject_reason,
            "avgPrice": _num(self.avg_price) if self.filled else "",
            "leavesQty": _num(self.qty - self.filled) if self.status in OPEN_STATUSES else "0",
            "leavesValue": "0",
            "cumExecQty": _num(self.filled),
            "cumExecValue": _num(self.filled * self.avg_price),
            "cumExecFee": _num(self.fee),
            "cumFeeDetail": {QUOTE: _num(self.fee)} if self.fee else {},
            "timeInForce": "IOC" if self.order_type == "Market" else "GTC",
            "orderType": self.order_type,
            "stopOrderType": "",
            "orderIv": "",
            "triggerPrice": "",
            "takeProfit": self.take_profit,
            "stopLoss": self.stop_loss,
            "tpslMode": "Full" if (self.take_profit or self.stop_loss) else "",
            "tpLimitPrice": "",
            "slLimitPrice": "",
            "tpTriggerBy": "",
            "slTriggerBy": "",
            "triggerDirection": 0,
            "triggerBy": "",
            "lastPriceOnCreated": "",
            "reduceOnly": self.reduce_only,
            "closeOnTrigger": False,
            "smpType": "None",
            "smpGroup": 0,
            "smpOrderId": "",
            "createdTime": str(self.created_ms),
            "updatedTime": str(self.created_ms),
        }


@dataclass
class FakePosition:
    size: float = 0.0  # signed: > 0 long, < 0 short
    avg_price: float = 0.0
    stop_loss: str = ""
    take_profit: str = ""


@dataclass
class BybitAccount:
    """The simulated unified trading account behind the private endpoints."""

    wallet: float = 100_000.0
    taker_fee_bps: float = 5.5
    orders: dict[str, FakeOrder] = field(default_factory=dict)
    by_link: dict[str, str] = field(default_factory=dict)
    positions: dict[str, FakePosition] = field(default_factory=dict)
    realised: float = 0.0
    next_id: int = 1

    def apply_fill(self, symbol: str, side: str, qty: float, price: float) -> None:
        signed = qty if side == "Buy" else -qty
        pos = self.positions.setdefault(symbol, FakePosition())
        if pos.size == 0 or (pos.size > 0) == (signed > 0):
            total = abs(pos.size) + qty
            pos.avg_price = (pos.avg_price * abs(pos.size) + price * qty) / total
            pos.size += signed
            return
        closing = min(qty, abs(pos.size))
        pnl = (price - pos.avg_price) * closing * (1 if pos.size > 0 else -1)
        self.realised += pnl
        self.wallet += pnl
        pos.size += signed
        if abs(pos.size) < 1e-12:
            self.positions.pop(symbol, None)
        elif (pos.size > 0) == (signed > 0):  # flipped through zero: the rest opens at this price
            pos.avg_price = price


@dataclass
class _State:
    faults: dict[str, deque[Fault]] = field(default_factory=dict)
    log: list[Request] = field(default_factory=list)
    throttled: list[Request] = field(default_factory=list)
    served_at: deque[float] = field(default_factory=deque)
    in_flight: int = 0
    peak_in_flight: int = 0
    errors: list[str] = field(default_factory=list)
    injected: dict[str, dict[int, list[str]]] = field(default_factory=dict)
    account: BybitAccount = field(default_factory=BybitAccount)


class FakeExchangeServer:
    """Bybit v5 look-alike on 127.0.0.1; use ``running_exchange_server`` to start and stop it."""

    def __init__(
        self,
        symbols: Sequence[str] = DEFAULT_SYMBOLS,
        *,
        closed_symbols: Sequence[str] = (),
        kline_unsupported: Sequence[str] = (),
        history_start_ms: int = 0,
        include_forming: bool = True,
        clock: Callable[[], int] = now_ms,
        latency_s: float = 0.0,
        private_latency_s: tuple[float, float] | None = None,
        rate_limit: tuple[int, float] | None = None,
    ) -> None:
        self.symbols = tuple(symbols)
        self.latency_s = latency_s
        self.private_latency_s = private_latency_s
        self._latency_draws = random.Random(17)
        self.rate_limit = rate_limit
        self.closed_symbols = tuple(closed_symbols)
        self.kline_unsupported = frozenset(kline_unsupported)
        self.history_start_ms = history_start_ms
        self.include_forming = include_forming
        self.clock = clock
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._state = _State()
        self._routes: dict[tuple[str, str], Handler] = {
            ("GET", INSTRUMENTS_PATH): self._instruments,
            ("GET", KLINE_PATH): self._kline,
            ("GET", TIME_PATH): self._time,
            ("POST", ORDER_CREATE_PATH): self._order_create,
            ("POST", ORDER_CANCEL_PATH): self._order_cancel,
            ("GET", ORDER_REALTIME_PATH): self._order_realtime,
            ("GET", ORDER_HISTORY_PATH): self._order_history,
            ("GET", POSITION_LIST_PATH): self._position_list,
            ("GET", WALLET_BALANCE_PATH): self._wallet_balance,
            ("GET", QUERY_API_PATH): self._query_api,
            ("GET", ACCOUNT_INFO_PATH): self._account_info,
            ("GET", COIN_INFO_PATH): self._coin_info,
        }
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._httpd = _HTTPServer(("127.0.0.1", 0), _RequestHandler)
        self._httpd.app = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-exchange",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # -- scripting ---------------------------------------------------------------------------------

    def route(self, method: str, path: str, handler: Handler) -> None:
        self._routes[(method.upper(), path)] = handler

    def inject(self, fault: Fault, times: int = 1, path: str = KLINE_PATH) -> None:
        with self._lock:
            self._state.faults.setdefault(path, deque()).extend([fault] * times)

    def set_candles(self, symbol: str, rows: Iterable[Sequence[float]]) -> None:
        """Serve exactly these ``[open_time, o, h, l, c, v]`` or ``[..., turnover]`` rows for ``symbol``."""
        table: dict[int, list[str]] = {}
        for row in rows:
            values = [repr(float(x)) for x in row[1:]]
            if len(values) == 5:
                values.append(repr(float(row[4]) * float(row[5])))
            table[int(row[0])] = [str(int(row[0])), *values]
        with self._lock:
            self._state.injected[symbol] = table

    @property
    def account(self) -> BybitAccount:
        """The simulated trading account (read it under no lock only when the server is idle)."""
        return self._state.account

    def set_wallet(self, usdt: float) -> None:
        with self._lock:
            self._state.account.wallet = usdt

    def exchange_orders(self) -> list[FakeOrder]:
        with self._lock:
            return list(self._state.account.orders.values())

    def last_price(self, symbol: str) -> float:
        """The newest candle's close: what a market order of ``symbol`` (Bybit id) fills at now."""
        newest = self._newest_ms()
        return float(self._row(symbol, newest)[4])

    def requests(self, path: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self._state.log if path is None or r.path == path]

    def throttled(self, path: str | None = None) -> list[Request]:
        """The requests answered 429 because they went beyond ``rate_limit``."""
        with self._lock:
            return [r for r in self._state.throttled if path is None or r.path == path]

    def max_in_window(self, window_s: float = 1.0, path: str | None = None) -> int:
        """The most requests that arrived within any ``window_s`` (a sliding window, not buckets)."""
        return max_in_window([r.at for r in self.requests(path)], window_s)

    def per_second(self, path: str | None = None) -> list[int]:
        """Arrivals per second, counted from the first request."""
        times = [r.at for r in self.requests(path)]
        if not times:
            return []
        first = min(times)
        counts = [0] * (int(max(times) - first) + 1)
        for at in times:
            counts[int(at - first)] += 1
        return counts

    @property
    def peak_in_flight(self) -> int:
        with self._lock:
            return self._state.peak_in_flight

    def clear_requests(self) -> None:
        with self._lock:
            self._state.log.clear()
            self._state.throttled.clear()
            self._state.peak_in_flight = self._state.in_flight

    @property
    def errors(self) -> list[str]:
        """Tracebacks of handler bugs (answered as HTTP 500); a test should expect none."""
        with self._lock:
            return list(self._state.errors)

    def forming_open_ms(self) -> int:
        return floor_minute(self.clock())

    def candles(self, symbol: str, start_ms: int, end_ms: int) -> list[list[float]]:
        """The server's candles with ``start_ms <= open_time < end_ms`` as floats, oldest first."""
        ts_list = self._available(symbol, start_ms, end_ms - 1)
        return [[float(x) for x in self._row(symbol, ts)] for ts in ts_list]

    # -- data --------------------------------------------------------------------------------------

    def _newest_ms(self) -> int:
        forming = self.forming_open_ms()
        return forming if self.include_forming else forming - MINUTE_MS

    def _available(
        self, symbol: str, lo: int, hi: int, limit: int | None = None, oldest: bool = True
    ) -> list[int]:
        """Open times in ``[lo, hi]`` that exist, ascending, cut to ``limit`` from the chosen end."""
        hi = min(hi, self._newest_ms())
        with self._lock:
            injected = self._state.injected.get(symbol)
            if injected is not None:
                times = sorted(ts for ts in injected if lo <= ts <= hi)
                if limit is not None:
                    times = times[:limit] if oldest else times[-limit:]
                return times
        first = max(lo, self.history_start_ms)
        first += -first % MINUTE_MS
        last = floor_minute(hi)
        if first > last:
            return []
        count = (last - first) // MINUTE_MS + 1
        if limit is not None and count > limit:
            if oldest:
                last = first + (limit - 1) * MINUTE_MS
            else:
                first = last - (limit - 1) * MINUTE_MS
        return list(range(first, last + 1, MINUTE_MS))

    def _row(self, symbol: str, ts: int) -> list[str]:
        with self._lock:
            injected = self._state.injected.get(symbol)
            if injected is not None:
                return injected[ts]
        return formula_candle(symbol, ts)

    # -- routes ------------------------------------------------------------------------------------

    def _instruments(self, request: Request) -> Reply:
        category = request.params.get("category", "")
        rows: list[dict[str, Any]] = []
        if category == "linear":
            rows = [_instrument(s, "Trading") for s in self.symbols]
            rows += [_instrument(s, "Closed") for s in self.closed_symbols]
            status = request.params.get("status")
            rows = [r for r in rows if r["status"] == status] if status else rows
        return Reply(200, _envelope({"category": category, "list": rows, "nextPageCursor": ""}))

    def _kline(self, request: Request) -> Reply:
        params = request.params
        symbol = params.get("symbol", "")
        if (
            params.get("category") != "linear"
            or symbol not in (*self.symbols, *self.closed_symbols)
            or symbol in self.kline_unsupported
        ):
            return Reply(200, _envelope({}, ret_code=10001, ret_msg="Not supported symbols"))
        if params.get("interval") != "1":
            return Reply(200, _envelope({}, ret_code=10001, ret_msg="Invalid period!"))
        limit = min(max(int(params.get("limit", KLINE_DEFAULT_LIMIT)), 1), KLINE_MAX_LIMIT)
        start = int(params["start"]) if "start" in params else None
        end = int(params["end"]) if "end" in params else self.clock()
        times = self._available(symbol, start or 0, end, limit=limit, oldest=start is not None)
        rows = [self._row(symbol, ts) for ts in reversed(times)]
        return Reply(200, _envelope({"category": "linear", "symbol": symbol, "list": rows}))

    def _time(self, _request: Request) -> Reply:
        now = self.clock()
        return Reply(200, _envelope({"timeSecond": str(now // 1000), "timeNano": str(now * 1_000_000)}))

    # -- private routes (trading) ------------------------------------------------------------------

    def _order_create(self, request: Request) -> Reply:
        body = request.json()
        symbol = str(body.get("symbol", ""))
        if body.get("category") != "linear" or symbol not in self.symbols:
            return Reply(200, _envelope({}, ret_code=10001, ret_msg="params error: symbol invalid"))
        link = str(body.get("orderLinkId", ""))
        order_type = str(body.get("orderType", "Market"))
        qty = float(body.get("qty", 0) or 0)
        if qty <= 0:
            return Reply(200, _envelope({}, ret_code=10001, ret_msg="params error: qty invalid"))
        price = self.last_price(symbol)
        side = str(body.get("side", "Buy"))
        reduce_only = bool(body.get("reduceOnly", False))
        with self._lock:
            acct = self._state.account
            if link and link in acct.by_link:
                return Reply(200, _envelope({}, ret_code=110072, ret_msg="OrderLinkedID is duplicate"))
            if reduce_only:
                # As Bybit: a reduce-only order never opens or grows a position; it is cut to the size held.
                held = acct.positions.get(symbol)
                reduces = held is not None and (held.size > 0) == (side == "Sell")
                if not reduces:
                    return Reply(
                        200,
                        _envelope(
                            {},
                            ret_code=110017,
                            ret_msg="current position is zero, cannot fix reduce-only order qty",
                        ),
                    )
                assert held is not None
                qty = min(qty, abs(held.size))
            order = FakeOrder(
                order_id=f"{acct.next_id:019d}",
                link_id=link,
                symbol=symbol,
                side=side,
                order_type=order_type,
                qty=qty,
                price=float(body.get("price") or 0.0),
                status="New",
                created_ms=self.clock(),
                reduce_only=reduce_only,
                stop_loss=str(body.get("stopLoss", "") or ""),
                take_profit=str(body.get("takeProfit", "") or ""),
            )
            acct.next_id += 1
            if order_type == "Market":
                order.status, order.avg_price, order.filled = "Filled", price, qty
                order.fee = price * qty * acct.taker_fee_bps / 10_000
                acct.wallet -= order.fee
                acct.apply_fill(symbol, order.side, qty, price)
                if not order.reduce_only and symbol in acct.positions:
                    acct.positions[symbol].stop_loss = order.stop_loss
                    acct.positions[symbol].take_profit = order.take_profit
            acct.orders[order.order_id] = order
            if link:
                acct.by_link[link] = order.order_id
        return Reply(200, _envelope({"orderId": order.order_id, "orderLinkId": link}))

    def _order_cancel(self, request: Request) -> Reply:
        body = request.json()
        with self._lock:
            acct = self._state.account
            order_id = str(body.get("orderId") or acct.by_link.get(str(body.get("orderLinkId", "")), ""))
            order = acct.orders.get(order_id)
            if order is None or order.status not in OPEN_STATUSES:
                return Reply(
                    200, _envelope({}, ret_code=110001, ret_msg="order not exists or too late to cancel")
                )
            order.status = "Cancelled"
        return Reply(200, _envelope({"orderId": order.order_id, "orderLinkId": order.link_id}))

    def _matching(self, params: dict[str, str], statuses: Callable[[str], bool]) -> list[dict[str, Any]]:
        with self._lock:
            orders = list(self._state.account.orders.values())
        wanted_status = params.get("orderStatus")
        out = []
        for order in sorted(orders, key=lambda o: o.order_id, reverse=True):
            if not statuses(order.status):
                continue
            if params.get("symbol") and order.symbol != params["symbol"]:
                continue
            if params.get("orderId") and order.order_id != params["orderId"]:
                continue
            if params.get("orderLinkId") and order.link_id != params["orderLinkId"]:
                continue
            if wanted_status and order.status != wanted_status:
                continue
            out.append(order.to_bybit())
        return out[: int(params.get("limit", 50))]

    def _order_realtime(self, request: Request) -> Reply:
        rows = self._matching(request.params, lambda status: status in OPEN_STATUSES)
        return Reply(200, _envelope({"category": "linear", "list": rows, "nextPageCursor": ""}))

    def _order_history(self, request: Request) -> Reply:
        rows = self._matching(request.params, lambda status: status not in OPEN_STATUSES)
        return Reply(200, _envelope({"category": "linear", "list": rows, "nextPageCursor": ""}))

    def _position_list(self, request: Request) -> Reply:
        with self._lock:
            held = dict(self._state.account.positions)
        rows = []
        for symbol, pos in sorted(held.items()):
            if request.params.get("symbol") and symbol != request.params["symbol"]:
                continue
            mark = self.last_price(symbol)
            size = abs(pos.size)
            rows.append(
                {
                    "positionIdx": 0,
                    "riskId": 1,
                    "riskLimitValue": "2000000",
                    "symbol": symbol,
                    "side": "Buy" if pos.size > 0 else "Sell",
                    "size": _num(size),
                    "avgPrice": _num(pos.avg_price),
                    "positionValue": _num(size * pos.avg_price),
                    "tradeMode": 0,
                    "autoAddMargin": 0,
                    "positionStatus": "Normal",
                    "leverage": "10",
                    "markPrice": _num(mark),
                    "liqPrice": "",
                    "bustPrice": "",
                    "positionIM": _num(size * pos.avg_price / 10),
                    "positionMM": "0",
                    "positionBalance": "0",
                    "takeProfit": pos.take_profit,
                    "stopLoss": pos.stop_loss,
                    "trailingStop": "0",
                    "unrealisedPnl": _num((mark - pos.avg_price) * pos.size),
                    "curRealisedPnl": "0",
                    "cumRealisedPnl": "0",
                    "adlRankIndicator": 2,
                    "isReduceOnly": False,
                    "createdTime": str(self.clock()),
                    "updatedTime": str(self.clock()),
                    "seq": 1,
                }
            )
        return Reply(200, _envelope({"category": "linear", "list": rows, "nextPageCursor": ""}))

    def _wallet_balance(self, _request: Request) -> Reply:
        with self._lock:
            acct = self._state.account
            wallet = acct.wallet
            held = dict(acct.positions)
        unrealised = sum((self.last_price(s) - p.avg_price) * p.size for s, p in held.items())
        equity = wallet + unrealised
        coin = {
            "coin": QUOTE,
            "equity": _num(equity),
            "usdValue": _num(equity),
            "walletBalance": _num(wallet),
            "locked": "0",
            "totalPositionIM": "0",
            "totalOrderIM": "0",
            "unrealisedPnl": _num(unrealised),
            "cumRealisedPnl": _num(acct.realised),
            "borrowAmount": "",
            "accruedInterest": "",
        }
        row = {
            "accountType": "UNIFIED",
            "totalEquity": _num(equity),
            "totalWalletBalance": _num(wallet),
            "totalAvailableBalance": _num(wallet),
            "totalMarginBalance": _num(equity),
            "coin": [coin],
        }
        return Reply(200, _envelope({"list": [row]}))

    def _query_api(self, _request: Request) -> Reply:
        return Reply(200, _envelope({"id": "1", "readOnly": 0, "unified": 0, "uta": 1, "isMaster": True}))

    def _account_info(self, _request: Request) -> Reply:
        return Reply(200, _envelope({"marginMode": "REGULAR_MARGIN", "unifiedMarginStatus": 6}))

    def _coin_info(self, _request: Request) -> Reply:
        row = {"name": QUOTE, "coin": QUOTE, "remainAmount": "1000000", "chains": []}
        return Reply(200, _envelope({"rows": [row]}))

    # -- HTTP plumbing -----------------------------------------------------------------------------

    def _answer(self, request: Request) -> Reply:
        with self._lock:
            self._state.in_flight += 1
            self._state.peak_in_flight = max(self._state.peak_in_flight, self._state.in_flight)
        try:
            return self._answer_counted(request)
        finally:
            with self._lock:
                self._state.in_flight -= 1

    def _over_budget(self, request: Request) -> bool:
        """Counts ``request`` against ``rate_limit`` unless the window is full (then it is refused)."""
        if self.rate_limit is None:
            return False
        limit, per_s = self.rate_limit
        served = self._state.served_at
        while served and request.at - served[0] >= per_s:
            served.popleft()
        if len(served) >= limit:
            self._state.throttled.append(request)
            return True
        served.append(request.at)
        return False

    def _answer_counted(self, request: Request) -> Reply:
        with self._lock:
            self._state.log.append(request)
            if self._over_budget(request):
                limited = Fault.rate_limit(http_status=429)
                return Reply(limited.status, limited.body or {})
            queue = self._state.faults.get(request.path)
            fault = queue.popleft() if queue else None
        if self.latency_s and request.path == KLINE_PATH:
            self._stopping.wait(self.latency_s)
        if self.private_latency_s is not None and request.path not in PUBLIC_PATHS:
            with self._lock:
                delay = self._latency_draws.uniform(*self.private_latency_s)
            self._stopping.wait(delay)
        if fault is not None and not fault.after_handler:
            if fault.delay_s:
                self._stopping.wait(fault.delay_s)
            if fault.body is not None:
                return Reply(fault.status, fault.body)
        reply = self._handle(request)
        if fault is not None and fault.after_handler:
            if fault.delay_s:
                self._stopping.wait(fault.delay_s)
            if fault.body is not None:
                return Reply(fault.status, fault.body)
        return reply

    def _handle(self, request: Request) -> Reply:
        handler = self._routes.get((request.method, request.path))
        if handler is None:
            return Reply(404, "Not Found")
        try:
            return handler(request)
        except Exception as exc:  # noqa: BLE001 - a bug in the fake must fail the test, not hang it
            with self._lock:
                self._state.errors.append(traceback.format_exc())
            return Reply(500, f"fake exchange bug: {exc!r}")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 would make the 6th concurrent client wait for a SYN retry.
    request_queue_size = 128
    app: FakeExchangeServer


class _RequestHandler(BaseHTTPRequestHandler):
    server: _HTTPServer

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(
            self.command,
            parts.path,
            dict(parse_qsl(parts.query, keep_blank_values=True)),
            body,
            {k: v for k, v in self.headers.items()},
        )
        reply = self.server.app._answer(request)
        if isinstance(reply.body, str):
            payload, content_type = reply.body.encode(), "text/html"
        else:
            payload, content_type = json.dumps(reply.body).encode(), "application/json"
        # The client may have timed out and gone (delay faults); nothing is left to tell it.
        with suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(reply.status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _serve  # noqa: N815 (http.server naming)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def running_exchange_server(**options: Any) -> Iterator[FakeExchangeServer]:
    """Start a ``FakeExchangeServer(**options)`` for the ``with`` block, yielding it."""
    server = FakeExchangeServer(**options)
    server.start()
    try:
        yield server
    finally:
        server.stop()
