"""The candle stream service (``mlsignals data stream``): closed candles from the WebSocket into the store.

One per deployment. It keeps a feed connected (reconnecting with backoff and jitter), and every
``stream.flush_interval_s`` it writes the confirmed candles that arrived, validated, in one
transaction, then moves each symbol's watermark (``data.stream.watermark``). Rules:

* Unconfirmed updates (the forming candle) are dropped; so are duplicates and anything at or below
  a symbol's watermark. Out-of-order candles wait in a per-symbol buffer until the ones before
  them arrive.
* A hole (a candle newer than watermark + 1 minute) waits ``stream.hole_grace_s`` for the missing
  candle, then the range is repaired over REST (through the exchange gateway) before the
  watermark moves. Minutes the exchange has no candle for even over REST are filled, flagged and
  recorded as a gap (``data.validation``): never invented as if traded.
* On every (re)connect, every symbol is first brought up to date over REST; once a minute,
  symbols the stream has left behind (a symbol that stopped, a lost final update) are too.
* A database or REST failure keeps the candles buffered for the next flush: nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tenacity import RetryCallState, wait_random_exponential

from core.errors import DataValidationError, PermanentError
from core.logging import get_logger
from core.settings import Settings
from core.timegrid import MINUTE_MS, floor_minute, iso_minute, now_ms
from data.candles import CANDLE_COLUMNS, candles_from_rows
from data.ingest import Ingestor
from data.sources.base import CandleSource
from data.store import CandleStore
from data.stream.feed import CandleFeed, KlineUpdate
from data.stream.watermark import WatermarkStore
from data.validation import ValidatedBatch, ValidationPolicy, failing_rows, validate_batch

log = get_logger(__name__)

# A symbol this far behind the newest closed minute is left out of "minute complete" announcements
# (it is being repaired, or the exchange stopped it) so that one symbol cannot hold up the rest.
LAGGING_MS = 2 * MINUTE_MS
# A connection that stayed up this long was healthy: the next reconnect starts the backoff afresh.
HEALTHY_SESSION_S = 60.0


@dataclass
class StreamStats:
    received: int = 0
    unconfirmed: int = 0
    duplicates: int = 0
    written: int = 0
    rejected: int = 0
    repairs: int = 0
    reconnects: int = 0
    flush_errors: int = 0
    # Per completed minute (open ms): seconds from the minute's close until every symbol was stored.
    minute_latency_s: dict[int, float] = field(default_factory=dict)


class CandleStreamService:
    def __init__(
        self,
        *,
        feed: CandleFeed,
        store: CandleStore,
        source: CandleSource,
        watermarks: WatermarkStore,
        settings: Settings,
        symbols: Sequence[str],
        clock: Callable[[], int] = now_ms,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.feed = feed
        self.store = store
        self.source = source
        self.watermarks = watermarks
        self.settings = settings
        self.symbols = list(symbols)
        self.exchange = source.name
        self.clock = clock
        self.monotonic = monotonic
        self.policy = ValidationPolicy.from_settings(settings)
        self.ingestor = Ingestor(
            store, source, self.policy, max_workers=settings.ml_integration.max_parallel, clock=clock
        )
        self.stats = StreamStats()
        self._wanted = set(self.symbols)
        self._inbox: list[KlineUpdate] = []
        self._pending: dict[str, dict[int, KlineUpdate]] = defaultdict(dict)
        self._marks: dict[str, int] = {}
        self._closes: dict[str, float] = {}
        self._hole_seen: dict[str, float] = {}
        self._announced = 0
        self._laggards_checked_for = 0
        # Flushes and repairs run in worker threads; one at a time.
        self._lock = threading.Lock()
        self._backoff = wait_random_exponential(
            multiplier=settings.stream.reconnect_base_delay_s, max=settings.stream.reconnect_max_delay_s
        )

    # -- the loop ---------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Stream until ``stop`` is set: connect, repair, consume, reconnect on any loss."""
        # The flusher stops on its own event, after its current flush: cancelling it could drop a
        # batch it had taken from the inbox but not yet handed to its thread.
        halt = asyncio.Event()
        flusher = asyncio.create_task(self._flush_loop(halt))
        attempt = 0
        try:
            while not stop.is_set():
                await self._catch_up()
                began = time.monotonic()
                ended = await self._session(stop)
                if ended is None:
                    break
                attempt = 0 if time.monotonic() - began > HEALTHY_SESSION_S else attempt + 1
                self.stats.reconnects += 1
                self._count_reconnect()
                delay = self.backoff_s(attempt)
                log.warning("stream reconnecting", reason=ended, attempt=attempt, delay_s=round(delay, 2))
                await _wait(stop, delay)
        finally:
            halt.set()
            await asyncio.gather(flusher, return_exceptions=True)
            await self.feed.close()
            # What arrived since the last flush is written too: a clean stop loses nothing.
            leftover, self._inbox = self._inbox, []
            await asyncio.to_thread(self.flush, leftover)

    async def _catch_up(self) -> None:
        """Bring every symbol up to date over REST before streaming. An exchange or database that is
        down now must not stop the stream: the once-a-minute repair of lagging symbols retries."""
        try:
            await asyncio.to_thread(self.repair, self.symbols, None)
        except Exception:
            self.stats.flush_errors += 1
            log.exception("stream start-up repair failed; streaming anyway, lagging symbols are retried")

    async def _session(self, stop: asyncio.Event) -> str | None:
        """Run the feed until it ends (returns why) or ``stop`` is set (returns None)."""
        feed = asyncio.create_task(self.feed.run(self.symbols, self._sink))
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({feed, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if stopped in done:
            feed.cancel()
            await asyncio.gather(feed, return_exceptions=True)
            return None
        stopped.cancel()
        error = feed.exception()
        if isinstance(error, PermanentError):
            raise error  # a wrong setting or an unknown universe: reconnecting cannot help
        return "feed ended" if error is None else f"{type(error).__name__}: {error}"

    def backoff_s(self, attempt: int) -> float:
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = max(1, attempt)
        return float(self._backoff(state))

    def _sink(self, updates: list[KlineUpdate]) -> None:
        # Called on the event loop's thread, as is the swap in ``_flush_loop``: no lock needed.
        self._inbox.extend(updates)
        self.stats.received += len(updates)

    async def _flush_loop(self, halt: asyncio.Event) -> None:
        interval = self.settings.stream.flush_interval_s
        while True:
            await _wait(halt, interval)
            if halt.is_set():
                return  # the final flush in ``run`` takes what is left
            batch, self._inbox = self._inbox, []
            try:
                await asyncio.to_thread(self.flush, batch)
            except Exception:
                # The database or the exchange failed: the candles stay buffered for the next flush.
                self.stats.flush_errors += 1
                log.exception("stream flush failed; candles kept for the next flush")

    def _count_reconnect(self) -> None:
        """The durable count the metrics exporter serves; losing one to a Redis hiccup is harmless."""
        try:
            self.watermarks.count_reconnect(self.exchange)
        except Exception as exc:  # noqa: BLE001  (a metric must never stop the stream)
            log.warning("stream reconnect not counted", error=f"{type(exc).__name__}: {exc}")

    # -- flush ------------------------------------------------------------------------------------
    def flush(self, updates: Sequence[KlineUpdate] = ()) -> int:
        """Take ``updates`` in, repair holes whose grace passed, write what is contiguous."""
        with self._lock:
            self._accept(updates)
            now = self.monotonic()
            holes = self._hole_symbols(now)
            repaired: set[str] = set()
            if holes:
                repaired = self._repair_locked(holes, until={s: min(self._pending[s]) for s in holes})
            written = self._write(repaired)
            self._repair_laggards()
            self._announce()
            self.watermarks.mark_alive(self.exchange, self.settings.stream.alive_ttl_s)
            return written

    def _accept(self, updates: Sequence[KlineUpdate]) -> None:
        for u in updates:
            if not u.confirmed:
                self.stats.unconfirmed += 1
                continue
            if u.symbol not in self._wanted:
                continue
            mark = self._marks.get(u.symbol)
            pending = self._pending[u.symbol]
            if (mark is not None and u.open_ms <= mark) or u.open_ms in pending:
                self.stats.duplicates += 1
                if u.open_ms in pending:
                    pending[u.open_ms] = u  # the later push of a closed candle is the exchange's last word
                continue
            pending[u.open_ms] = u

    def _hole_symbols(self, now: float) -> list[str]:
        out = []
        for symbol, pending in self._pending.items():
            mark = self._marks.get(symbol)
            if not pending or (mark is not None and min(pending) == mark + MINUTE_MS):
                self._hole_seen.pop(symbol, None)
                continue
            if now - self._hole_seen.setdefault(symbol, now) >= self.settings.stream.hole_grace_s:
                out.append(symbol)
        return out

    def _write(self, repaired: set[str]) -> int:
        """Write what can be written: the common case (a symbol's next minutes, no hole) for every
        symbol at once, checked and encoded as one table; repaired or suspect symbols one by one."""
        plain: dict[str, list[KlineUpdate]] = {}
        slow: dict[str, list[KlineUpdate]] = {}
        for symbol, pending in self._pending.items():
            if not pending:
                continue
            mark = self._marks.get(symbol)
            if mark is not None:
                for stale in [k for k in pending if k <= mark]:
                    del pending[stale]  # stored meanwhile by a repair
            keys = sorted(pending)
            if symbol not in repaired:
                if mark is None:
                    continue  # nothing stored yet: only a repair may start this symbol's history
                keys = _contiguous(keys, mark + MINUTE_MS)
            if keys:
                target = slow if symbol in repaired else plain
                target[symbol] = [pending[k] for k in keys]
        rows, suspects = self._checked_rows(plain)
        slow |= {s: plain[s] for s in suspects}
        batches: list[ValidatedBatch] = []
        for symbol, updates in slow.items():
            batch = self._validate(symbol, updates, self._marks.get(symbol))
            if batch is None:
                for u in updates:
                    self._pending[symbol].pop(u.open_ms, None)
            else:
                batches.append(batch)
        written = self.store.write_rows(self.exchange, rows) + self.store.write(self.exchange, batches)
        self.stats.written += written
        newest = {s: (int(t), float(c)) for s, t, c in _last_per_symbol(rows)}
        newest |= {b.symbol: (int(b.newest_open_ms or 0), float(b.frame["close"].iloc[-1])) for b in batches}
        moved: dict[str, int] = {}
        for symbol, (open_ms, close) in newest.items():
            pending = self._pending[symbol]
            for k in [k for k in pending if k <= open_ms]:
                del pending[k]
            self._marks[symbol] = open_ms
            self._closes[symbol] = close
            moved[symbol] = open_ms
        self.watermarks.advance(self.exchange, moved)
        if repaired:
            self.store.release(self.exchange, sorted(repaired & set(moved)))
        return written

    def _checked_rows(self, plain: dict[str, list[KlineUpdate]]) -> tuple[pd.DataFrame, set[str]]:
        """One table of every plain symbol's candles that pass the rules, and the symbols that did
        not (validated again one by one, for the exact rule and quarantine)."""
        names = list(plain)
        updates = [u for s in names for u in plain[s]]
        if not updates:
            return pd.DataFrame(columns=["symbol", *CANDLE_COLUMNS, "is_filled"]), set()
        counts = np.array([len(plain[s]) for s in names])
        sym = np.repeat(np.arange(len(names)), counts)
        ts = np.array([u.open_ms for u in updates], dtype=np.int64)
        values = np.array(
            [(u.open, u.high, u.low, u.close, u.volume, u.turnover) for u in updates], dtype=np.float64
        )
        prev = np.array([self._closes.get(s, np.nan) for s in names])[sym]
        follows = np.r_[False, sym[1:] == sym[:-1]]
        prev[follows] = values[:-1, 3][follows[1:]]
        bad = failing_rows(ts, values, prev, self.policy)
        suspects = {names[i] for i in np.unique(sym[bad])}
        keep = ~np.isin(sym, [names.index(s) for s in suspects])
        rows = pd.DataFrame(
            {
                "symbol": np.array(names, dtype=object)[sym[keep]],
                "open_time": ts[keep],
                **{c: values[keep, j] for j, c in enumerate(CANDLE_COLUMNS[1:])},
                "is_filled": np.zeros(int(keep.sum()), dtype=bool),
            }
        )
        return rows, suspects

    def _validate(self, symbol: str, updates: list[KlineUpdate], mark: int | None) -> ValidatedBatch | None:
        frame = candles_from_rows(
            [[u.open_ms, u.open, u.high, u.low, u.close, u.volume, u.turnover] for u in updates]
        )
        # The exchange confirmed these candles closed: a local clock a little behind must not say no.
        now = max(self.clock(), updates[-1].open_ms + MINUTE_MS)
        try:
            return validate_batch(
                frame,
                symbol,
                now_ms=now,
                policy=self.policy,
                expected_start_ms=None if mark is None else mark + MINUTE_MS,
                prev_close=self._closes.get(symbol),
            )
        except DataValidationError as exc:
            self.stats.rejected += len(updates)
            self.store.quarantine(self.exchange, {symbol: (exc.rule, str(exc))})
            log.warning("stream candles rejected", symbol=symbol, rule=exc.rule, detail=str(exc))
            return None

    # -- repair -----------------------------------------------------------------------------------
    def repair(self, symbols: Sequence[str], until: dict[str, int] | None) -> set[str]:
        """Bring ``symbols`` up to date over REST (up to ``until[symbol]``, default: now)."""
        with self._lock:
            done = self._repair_locked(list(symbols), until)
            self._announce()
            return done

    def _repair_locked(self, symbols: list[str], until: dict[str, int] | None) -> set[str]:
        ends: dict[int, list[str]] = defaultdict(list)
        default_end = floor_minute(self.clock())
        for s in symbols:
            ends[(until or {}).get(s, default_end)].append(s)
        done: set[str] = set()
        for end, group in sorted(ends.items()):
            report = self.ingestor.sync(
                group, initial_minutes=self.settings.data.sync_initial_minutes, end_ms=end
            )
            self.stats.repairs += 1
            failed = {s for s, o in report.failed.items() if o.rule != "stale"}
            newest = self.store.newest(self.exchange, group)
            moved = {}
            for s in group:
                if s in newest and newest[s].open_time > self._marks.get(s, -1):
                    self._marks[s] = newest[s].open_time
                    self._closes[s] = newest[s].close
                    moved[s] = newest[s].open_time
            self.watermarks.advance(self.exchange, moved)
            for s in group:
                if s in failed:
                    self._hole_seen[s] = self.monotonic()  # try again after another grace period
                else:
                    self._hole_seen.pop(s, None)
                    done.add(s)
            if failed:
                log.warning("stream repair incomplete", symbols=sorted(failed)[:20], failed=len(failed))
        return done

    def _repair_laggards(self) -> None:
        """Once a minute, after the grace: symbols the stream left behind are fetched over REST."""
        now = self.clock()
        minute = floor_minute(now)
        if minute <= self._laggards_checked_for or now - minute < self.settings.stream.hole_grace_s * 1000:
            return
        self._laggards_checked_for = minute
        newest_closed = minute - MINUTE_MS
        # Without history a symbol's streamed candles cannot be written: repair it whatever is pending.
        behind = [
            s
            for s in self.symbols
            if s not in self._marks or (self._marks[s] < newest_closed and not self._pending.get(s))
        ]
        if behind:
            log.info("stream repairing symbols left behind", symbols=len(behind), minute=iso_minute(minute))
            self._repair_locked(behind, None)

    def _announce(self) -> None:
        newest_closed = floor_minute(self.clock()) - MINUTE_MS
        current = {s: m for s, m in self._marks.items() if m >= newest_closed - LAGGING_MS}
        if not current:
            return
        complete = min(current.values())
        if complete <= self._announced:
            return
        # The first minute completes by the start-up repair, long after its close: not a latency.
        streamed = self._announced != 0
        self._announced = complete
        lagging = sorted(s for s in self.symbols if s not in current)
        if not lagging and streamed:
            self.stats.minute_latency_s[complete] = (self.clock() - complete - MINUTE_MS) / 1000
        self.watermarks.announce_minute(self.exchange, complete, len(current), lagging)
        log.info(
            "stream minute stored",
            minute=iso_minute(complete),
            symbols=len(current),
            lagging=len(lagging),
            latency_s=self.stats.minute_latency_s.get(complete),
        )


def _last_per_symbol(rows: pd.DataFrame) -> list[tuple[str, int, float]]:
    if rows.empty:
        return []
    last = rows.groupby("symbol", sort=False).tail(1)
    return list(zip(last["symbol"], last["open_time"], last["close"], strict=True))


def _contiguous(keys: list[int], start: int) -> list[int]:
    out: list[int] = []
    expected = start
    for k in keys:
        if k != expected:
            break
        out.append(k)
        expected += MINUTE_MS
    return out


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


class StreamThread:
    """Runs a service on its own event loop in a background thread (the embedded run, tests)."""

    def __init__(self, service: CandleStreamService) -> None:
        self.service = service
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._main, name="candle-stream", daemon=True)
        self.error: BaseException | None = None

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.service.run(self._stop))
        except BaseException as exc:  # reported to whoever stops the thread
            self.error = exc
            log.exception("candle stream stopped with an error")
        finally:
            self._loop.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> StreamThread:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)

    def __enter__(self) -> StreamThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
