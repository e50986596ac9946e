"""A local WebSocket server that speaks Bybit's v5 *public* stream protocol, for ccxt pro's ``bybit``.

Point ccxt at it with ``ExchangeSettings(ws_urls={"all": server.url})``. It binds 127.0.0.1 on an
ephemeral port and runs on its own event loop in a background thread (``running_ws_server``), so a
test's own event loop (running the client) and the server never block each other.

Protocol (https://bybit-exchange.github.io/docs/v5/ws/connect):

``{"op": "subscribe", "args": ["kline.1.BTCUSDT", ...], "req_id": ...}``
    answered ``{"success": true, "ret_msg": "", "conn_id": ..., "req_id": ..., "op": "subscribe"}``.
    More than ``max_args`` topics (Bybit spot: 10) answers ``success: false, ret_msg: "args size >10"``
    and subscribes none of them; so does a request naming a topic passed to ``reject`` (as Bybit does
    for an unknown or delisted symbol). ``unsubscribe`` is answered the same way.
``{"op": "ping", "req_id": ...}``
    answered ``{"success": true, "ret_msg": "pong", "conn_id": ..., "req_id": ..., "op": "ping"}``
    (spot / linear / inverse), or with ``pong_style="option"``
    ``{"req_id": ..., "op": "pong", "args": ["<ms>"], "conn_id": ...}``.
Pushes
    ``{"topic": "kline.1.BTCUSDT", "data": [{"start", "end", "interval", "open", "close", "high", "low",
    "volume", "turnover", "confirm", "timestamp"}], "ts": ..., "type": "snapshot"}``, sent only to the
    connections subscribed to the topic.

Controls (thread-safe, called from test code; none waits for the client):
``push(symbol, row, confirm)`` / ``push_minute(open_ms, symbols=None, confirm=True)`` (the REST fake's
``formula_candle``, so WS and REST candles agree) queue messages in call order: duplicates and
out-of-order minutes are just more pushes. ``stop_pushing`` / ``resume_pushing`` silence single
symbols (delisted); ``pause`` makes the whole server silent (no pushes, pings unanswered) until
``resume``. ``drop_connections`` aborts every TCP connection without a close handshake.
``subscriptions()``, ``subscribe_requests()`` and ``stats()`` observe the server; ``when(predicate)`` /
``when_subscribed(n)`` return ``concurrent.futures.Future``s completed by the server's own state
changes (no polling): ``await asyncio.wrap_future(...)`` them on the client's event loop, or block on
``wait_until`` / ``wait_subscribed`` from a plain thread.
"""

from __future__ import annotations

import asyncio
import json
import threading
import traceback
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from core.timegrid import MINUTE_MS, now_ms
from tests.fakes.exchange_server import formula_candle

T = TypeVar("T")

KLINE_PREFIX = "kline.1."
DEFAULT_PATH = "/v5/public/linear"
_CONTROL_TIMEOUT_S = 5.0


def kline_topic(symbol: str) -> str:
    """The 1-minute kline topic of a Bybit symbol id (``BTCUSDT`` -> ``kline.1.BTCUSDT``)."""
    return KLINE_PREFIX + symbol


def kline_message(symbol: str, row: Sequence[Any], confirm: bool, ts: int) -> dict[str, Any]:
    """A kline push for ``row`` = ``[start, open, high, low, close, volume]`` (+ ``turnover``)."""
    start = int(row[0])
    turnover = row[6] if len(row) > 6 else float(row[5]) * float(row[4])
    entry = {
        "start": start,
        "end": start + MINUTE_MS - 1,
        "interval": "1",
        "open": str(row[1]),
        "close": str(row[4]),
        "high": str(row[2]),
        "low": str(row[3]),
        "volume": str(row[5]),
        "turnover": str(turnover),
        "confirm": confirm,
        "timestamp": ts,
    }
    return {"topic": kline_topic(symbol), "data": [entry], "ts": ts, "type": "snapshot"}


@dataclass(frozen=True)
class WsStats:
    connections: int = 0  # accepted since start
    live: int = 0  # open now
    pings: int = 0
    pongs: int = 0
    subscribe_requests: int = 0
    rejected_requests: int = 0
    pushed: int = 0  # kline messages queued for sending


@dataclass
class _Conn:
    conn_id: str
    ws: ServerConnection
    outbox: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    topics: set[str] = field(default_factory=set)


class FakeBybitWsServer:
    """Bybit v5 public WebSocket look-alike; use ``running_ws_server`` to start and stop it."""

    def __init__(
        self,
        *,
        path: str = DEFAULT_PATH,
        max_args: int | None = 10,
        rejected_topics: Iterable[str] = (),
        pong_style: Literal["linear", "option"] = "linear",
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.path = path
        self.max_args = max_args
        self.pong_style = pong_style
        self.clock = clock
        # Guards everything a test thread reads; the server loop is the only writer of the state.
        self._lock = threading.Lock()
        self._stats = WsStats()
        self._rejected = set(rejected_topics)
        self._stopped: set[str] = set()
        self._paused = False
        self._conns: dict[str, _Conn] = {}
        self._sub_log: list[list[str]] = []
        self._errors: list[str] = []
        self._watches: list[tuple[Callable[[], bool], Future[None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop

        # ping_interval=None: Bybit keeps connections alive with the client's JSON pings, not with
        # protocol-level ones; close_timeout keeps stop() short when a client is unresponsive.
        async def listen() -> Server:
            return await serve(self._handle, "127.0.0.1", 0, ping_interval=None, close_timeout=1)

        self._server = loop.run_until_complete(listen())
        self._thread = threading.Thread(target=loop.run_forever, name="fake-bybit-ws", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def shutdown() -> None:
            server.close()
            await server.wait_closed()

        with suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(_CONTROL_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        with self._lock:
            for _, future in self._watches:
                future.cancel()
            self._watches.clear()
        if self._thread is not None:
            self._thread.join(timeout=_CONTROL_TIMEOUT_S)
        loop.close()
        self._loop = self._server = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("server not started")
        return int(next(iter(self._server.sockets)).getsockname()[1])

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.path}"

    # -- controls (test thread) --------------------------------------------------------------------

    def push(self, symbol: str, row: Sequence[Any], confirm: bool) -> int:
        """Queue one kline push of Bybit symbol ``symbol``; returns how many connections get it."""
        return self._on_loop(self._push_many([(symbol, row, confirm)]))

    def push_minute(self, open_ms: int, symbols: Iterable[str] | None = None, confirm: bool = True) -> int:
        """Push every symbol's ``formula_candle`` at ``open_ms`` (default: every subscribed symbol)."""
        chosen = sorted(self.subscribed_symbols()) if symbols is None else list(symbols)
        return self._on_loop(self._push_many([(s, formula_candle(s, open_ms), confirm) for s in chosen]))

    def stop_pushing(self, symbols: Iterable[str]) -> None:
        with self._lock:
            self._stopped.update(symbols)

    def resume_pushing(self, symbols: Iterable[str]) -> None:
        with self._lock:
            self._stopped.difference_update(symbols)

    def pause(self) -> None:
        """Go silent: pushes are dropped and pings are counted but not answered."""
        with self._lock:
            self._paused = True

    def resume(self) -> None:
        with self._lock:
            self._paused = False

    def reject(self, topics: Iterable[str]) -> None:
        """Answer ``success: false`` to any later subscribe request that names one of ``topics``."""
        with self._lock:
            self._rejected.update(topics)

    def drop_connections(self) -> int:
        """Abort every connection's TCP transport (no close frame); returns how many were open."""
        return self._on_loop(self._drop())

    # -- observation (test thread) -----------------------------------------------------------------

    def stats(self) -> WsStats:
        with self._lock:
            return self._snapshot()

    def subscriptions(self) -> dict[str, frozenset[str]]:
        """Topics subscribed on each open connection, by connection id."""
        with self._lock:
            return {cid: frozenset(c.topics) for cid, c in self._conns.items()}

    def subscribed_symbols(self) -> set[str]:
        with self._lock:
            return {t.removeprefix(KLINE_PREFIX) for c in self._conns.values() for t in c.topics}

    def subscribe_requests(self) -> list[list[str]]:
        """The ``args`` of every subscribe request received, accepted or not, in arrival order."""
        with self._lock:
            return [list(args) for args in self._sub_log]

    @property
    def errors(self) -> list[str]:
        """Tracebacks of bugs in the fake's handler; a test should expect none."""
        with self._lock:
            return list(self._errors)

    def when(self, predicate: Callable[[WsStats], bool]) -> Future[None]:
        """A future that completes once ``predicate(stats())`` holds.

        From a test's event loop: ``await asyncio.wait_for(asyncio.wrap_future(server.when(p)), t)``;
        cancelling it (the timeout) withdraws the watch.
        """
        return self._watch(lambda: predicate(self._snapshot()))

    def when_subscribed(self, n_topics: int) -> Future[None]:
        """A future that completes once ``n_topics`` distinct topics are subscribed over open connections."""
        return self._watch(lambda: len({t for c in self._conns.values() for t in c.topics}) >= n_topics)

    def wait_until(self, predicate: Callable[[WsStats], bool], timeout: float = 10.0) -> bool:
        """Block until ``predicate(stats())`` holds; False on timeout. Not for the client's event loop."""
        return self._wait(self.when(predicate), timeout)

    def wait_subscribed(self, n_topics: int, timeout: float = 10.0) -> bool:
        """Block until ``n_topics`` topics are subscribed; False on timeout. Not for the client's loop."""
        return self._wait(self.when_subscribed(n_topics), timeout)

    @staticmethod
    def _wait(future: Future[None], timeout: float) -> bool:
        try:
            future.result(timeout)
        except FutureTimeout:
            future.cancel()
            return False
        return True

    def _watch(self, condition: Callable[[], bool]) -> Future[None]:
        future: Future[None] = Future()
        with self._lock:
            if condition():
                future.set_result(None)
            else:
                self._watches.append((condition, future))
        return future

    def _changed(self) -> None:
        """Wake the watches whose condition now holds (called with ``_lock`` held)."""
        pending = []
        for condition, future in self._watches:
            if future.cancelled():
                continue
            if not condition():
                pending.append((condition, future))
                continue
            with suppress(InvalidStateError):  # cancelled by the waiter meanwhile
                future.set_result(None)
        self._watches = pending

    def _snapshot(self) -> WsStats:
        return replace(self._stats, live=len(self._conns))

    # -- server loop -------------------------------------------------------------------------------

    def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("server not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_CONTROL_TIMEOUT_S)

    def _bump(self, **deltas: int) -> None:
        with self._lock:
            values = {k: getattr(self._stats, k) + v for k, v in deltas.items()}
            self._stats = replace(self._stats, **values)
            self._changed()

    async def _push_many(self, items: Sequence[tuple[str, Sequence[Any], bool]]) -> int:
        sent = 0
        with self._lock:
            if self._paused:
                return 0
            for symbol, row, confirm in items:
                if symbol in self._stopped:
                    continue
                message = kline_message(symbol, row, confirm, self.clock())
                for conn in self._conns.values():
                    if message["topic"] in conn.topics:
                        conn.outbox.put_nowait(message)
                        sent += 1
        self._bump(pushed=sent)
        return sent

    async def _drop(self) -> int:
        with self._lock:
            conns = list(self._conns.values())
        for conn in conns:
            conn.ws.transport.abort()
        return len(conns)

    async def _handle(self, ws: ServerConnection) -> None:
        conn = _Conn(conn_id=uuid.uuid4().hex, ws=ws)
        with self._lock:
            self._conns[conn.conn_id] = conn
        self._bump(connections=1)
        writer = asyncio.create_task(self._write(conn))
        try:
            async for raw in ws:
                self._answer(conn, raw)
        except ConnectionClosed:
            pass
        except Exception:  # noqa: BLE001 - a bug in the fake must fail the test, not hang it
            with self._lock:
                self._errors.append(traceback.format_exc())
        finally:
            writer.cancel()
            with suppress(asyncio.CancelledError):
                await writer
            with self._lock:
                self._conns.pop(conn.conn_id, None)
                self._changed()

    async def _write(self, conn: _Conn) -> None:
        # One writer per connection keeps replies and pushes in the order they were queued.
        with suppress(ConnectionClosed):
            while True:
                message = await conn.outbox.get()
                await conn.ws.send(json.dumps(message))

    def _answer(self, conn: _Conn, raw: str | bytes) -> None:
        try:
            request = json.loads(raw)
        except ValueError:
            request = None
        if not isinstance(request, dict):
            conn.outbox.put_nowait(self._reply(conn, {}, success=False, ret_msg="error:invalid json"))
            return
        op = request.get("op")
        if op == "ping":
            self._ping(conn, request)
        elif op in ("subscribe", "unsubscribe"):
            self._subscribe(conn, request, subscribe=op == "subscribe")
        else:
            conn.outbox.put_nowait(self._reply(conn, request, success=False, ret_msg="error:invalid op"))

    def _ping(self, conn: _Conn, request: dict[str, Any]) -> None:
        self._bump(pings=1)
        with self._lock:
            if self._paused:
                return
        if self.pong_style == "option":
            pong = {
                "req_id": str(request.get("req_id", "")),
                "op": "pong",
                "args": [str(self.clock())],
                "conn_id": conn.conn_id,
            }
        else:
            pong = self._reply(conn, request, success=True, ret_msg="pong")
        conn.outbox.put_nowait(pong)
        self._bump(pongs=1)

    def _subscribe(self, conn: _Conn, request: dict[str, Any], *, subscribe: bool) -> None:
        args = [str(a) for a in request.get("args") or []]
        error = ""
        with self._lock:
            if subscribe:
                self._sub_log.append(args)
                refused = [t for t in args if t in self._rejected]
                if self.max_args is not None and len(args) > self.max_args:
                    error = f"args size >{self.max_args}"
                elif refused:
                    error = f"error:handler not found,topic:{refused[0]}"
                else:
                    conn.topics.update(args)
            else:
                conn.topics.difference_update(args)
            self._changed()
        self._bump(subscribe_requests=int(subscribe), rejected_requests=int(bool(error)))
        conn.outbox.put_nowait(self._reply(conn, request, success=not error, ret_msg=error))

    @staticmethod
    def _reply(conn: _Conn, request: dict[str, Any], *, success: bool, ret_msg: str) -> dict[str, Any]:
        return {
            "success": success,
            "ret_msg": ret_msg,
            "conn_id": conn.conn_id,
            "req_id": request.get("req_id", ""),
            "op": request.get("op", ""),
        }


@contextmanager
def running_ws_server(**options: Any) -> Iterator[FakeBybitWsServer]:
    """Start a ``FakeBybitWsServer(**options)`` for the ``with`` block, yielding it."""
    server = FakeBybitWsServer(**options)
    server.start()
    try:
        yield server
    finally:
        server.stop()
