"""Reading the durable signal feed: the Redis Stream the publisher appends every message to.

Pub/sub forgets what a subscriber misses; the stream (``pipeline.stream_key``) keeps about a day of
messages, and a consumer group remembers what each reader was handed and what it acknowledged.
Each entry has the fields ``type`` (``signal`` or ``heartbeat``), ``sequence`` (a signal's sequence;
a heartbeat's minute) and ``data`` (the same JSON as on pub/sub). Delivery is at least once:
deduplicate signals by ``sequence``. Contract and examples: docs/ML_API.md, "Durable feed".

``DurableFeed.read`` hands back, in this order of priority:

1. this consumer's own entries that were read but never acknowledged (a restart under the same
   consumer name, or a reply lost to a broken connection) — ``XREADGROUP … 0``;
2. entries another consumer read and left unacknowledged for ``claim_idle_ms`` (it died) —
   ``XAUTOCLAIM``, every ``claim_idle_ms / 2`` and after every empty read;
3. new entries — ``XREADGROUP … >`` with ``BLOCK``.

The caller acknowledges with ``ack`` once it has handled a message. Entries that cannot be handled
(bad JSON, wrong schema, a missing field, trimmed away by ``MAXLEN``) come back as ``FeedProblem``
and are acknowledged by the feed itself, so that they never come back. Lost connections are retried
with backoff; a group that vanished (a Redis restart without persistence, the stream deleted) is
created again, reading the stream from its start so that nothing written since is lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import redis
import tenacity

from core.errors import TemporaryError
from core.logging import get_logger
from pipeline.messages import HeartbeatMessage, MalformedMessageError, SignalMessage, parse_message

log = get_logger(__name__)
T = TypeVar("T")
FIELDS = ("type", "sequence", "data")


class FeedUnavailableError(TemporaryError):
    """Redis stayed unreachable for more than the feed's ``max_retries``."""


@dataclass(frozen=True)
class FeedMessage:
    """A valid message; ``data`` is its JSON exactly as published."""

    entry_id: str
    message: SignalMessage | HeartbeatMessage
    data: str


@dataclass(frozen=True)
class FeedProblem:
    """An entry that cannot be handled; already acknowledged by the feed."""

    entry_id: str
    reason: str

    def __str__(self) -> str:
        return f"stream entry {self.entry_id}: {self.reason}"


FeedItem = FeedMessage | FeedProblem


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def parse_entry(entry_id: str, fields: dict[Any, Any] | None) -> FeedItem:
    """One stream entry as a message, or the reason it is not one."""
    if not fields:  # a pending entry whose data is gone comes back without fields
        return FeedProblem(entry_id, "entry no longer in the stream (trimmed by MAXLEN or deleted)")
    values = {_text(k): v for k, v in fields.items()}
    missing = [name for name in FIELDS if name not in values]
    if missing:
        return FeedProblem(entry_id, f"missing field(s): {', '.join(missing)}")
    data = _text(values["data"])
    try:
        message = parse_message(data)
    except MalformedMessageError as exc:
        return FeedProblem(entry_id, str(exc))
    kind = _text(values["type"])
    if kind != message.type:
        return FeedProblem(entry_id, f"field type is {kind!r} but data is a {message.type} message")
    if isinstance(message, SignalMessage) and _text(values["sequence"]) != str(message.sequence):
        return FeedProblem(
            entry_id, f"field sequence is {_text(values['sequence'])!r} but data has {message.sequence}"
        )
    return FeedMessage(entry_id, message, data)


def _is_nogroup(exc: redis.ResponseError) -> bool:
    # NOGROUP: the key or the group is gone; UNBLOCKED: the key was deleted under a blocked read.
    text = str(exc)
    return text.startswith("NOGROUP") or text.startswith("UNBLOCKED")


def _is_nogroup_error(exc: BaseException) -> bool:
    return isinstance(exc, redis.ResponseError) and _is_nogroup(exc)


def _recoverable(exc: BaseException) -> bool:
    """A lost connection or a vanished group is waited out; any other error is the caller's."""
    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError)) or _is_nogroup_error(exc)


def _failure(state: tenacity.RetryCallState) -> BaseException:
    assert state.outcome is not None
    exc = state.outcome.exception()
    assert exc is not None
    return exc


def _problem(exc: BaseException) -> str:
    if _is_nogroup_error(exc):
        return f"consumer group gone ({exc}): creating it again"
    return f"redis unreachable: {exc}"


class DurableFeed:
    """One consumer of a consumer group on the signal stream (module docstring); one per thread."""

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        group: str,
        consumer: str,
        *,
        start: Literal["new", "all"] = "new",
        claim_idle_ms: int = 30_000,
        batch: int = 100,
        block_ms: int = 1_000,
        max_retries: int | None = None,
        backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if claim_idle_ms < 1 or batch < 1 or block_ms < 0:
            raise ValueError("claim_idle_ms and batch must be positive, block_ms not negative")
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.claim_idle_ms = claim_idle_ms
        self.batch = batch
        self.block_ms = block_ms
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep
        # A new group starts at the end ("new") or at the start ("all") of the stream; a group
        # created again after it vanished always starts at the start.
        self._create_at = "$" if start == "new" else "0"
        self._group_ready = False
        self._own_cursor: str | None = "0"  # re-read this consumer's pending entries first
        self._claim_cursor = "0-0"
        self._last_claim = float("-inf")

    # -- public

    def ensure_group(self) -> None:
        self._retrying(self._ensure_group)

    def read(self, count: int | None = None, block_ms: int | None = None) -> list[FeedItem]:
        """The next entries for this consumer (at most ``count``); ``[]`` after ``block_ms`` idle."""
        n = count or self.batch
        block = self.block_ms if block_ms is None else block_ms
        items = self._retrying(lambda: self._read(n, block))
        # The caller reports problems; acknowledged here so that they never come back.
        self.ack(item.entry_id for item in items if isinstance(item, FeedProblem))
        return items

    def ack(self, ids: Iterable[str]) -> int:
        """Acknowledge handled entries; returns how many were still pending."""
        wanted = list(ids)
        if not wanted:
            return 0

        def op() -> int:
            try:
                return int(self.client.xack(self.stream, self.group, *wanted))
            except redis.ResponseError as exc:
                if not _is_nogroup(exc):
                    raise
                self._group_ready = False  # nothing is pending in a group that is gone
                return 0

        return self._retrying(op)

    # -- steps

    def _ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, self.group, id=self._create_at, mkstream=True)
            log.info("consumer group created", stream=self.stream, group=self.group, at=self._create_at)
        except redis.ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise
        self._group_ready = True
        self._create_at = "0"

    def _read(self, count: int, block_ms: int) -> list[FeedItem]:
        if not self._group_ready:
            self._ensure_group()
        if self._own_cursor is not None:
            entries = self._xreadgroup(self._own_cursor, count, None)
            if entries:
                self._own_cursor = entries[-1][0]
                return [parse_entry(i, f) for i, f in entries]
            self._own_cursor = None
        if self._claim_cursor != "0-0" or time.monotonic() - self._last_claim >= self.claim_idle_ms / 2000:
            claimed = self._claim(count)
            if claimed:
                return claimed
        entries = self._xreadgroup(">", count, block_ms or None)
        if entries:
            return [parse_entry(i, f) for i, f in entries]
        return self._claim(count)  # nothing new: a good moment to look for abandoned entries

    def _xreadgroup(self, cursor: str, count: int, block_ms: int | None) -> list[tuple[str, Any]]:
        reply: Any = self.client.xreadgroup(
            self.group, self.consumer, {self.stream: cursor}, count=count, block=block_ms
        )
        if isinstance(reply, dict):  # RESP3: {stream: [entries]}
            batches = [value[0] if value else [] for value in reply.values()]
        else:  # RESP2: [[stream, entries]]
            batches = [entries for _name, entries in reply or []]
        return [(_text(entry_id), fields) for entries in batches for entry_id, fields in entries]

    def _claim(self, count: int) -> list[FeedItem]:
        reply: Any = self.client.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms, self._claim_cursor, count=count
        )
        self._claim_cursor = _text(reply[0])
        if self._claim_cursor == "0-0":  # a full pass over the group's pending entries is done
            self._last_claim = time.monotonic()
        items = [parse_entry(_text(i), f) for i, f in reply[1]]
        if items:
            log.info("claimed abandoned entries", stream=self.stream, group=self.group, entries=len(items))
        deleted = reply[2] if len(reply) > 2 else []  # redis >= 7: pending ids whose entry is gone
        items += [
            FeedProblem(_text(i), "claimed entry no longer in the stream (trimmed by MAXLEN or deleted)")
            for i in deleted
        ]
        return items

    def _retrying(self, op: Callable[[], T]) -> T:
        """Run ``op`` until it succeeds: a lost connection waits longer each time (tenacity's
        exponential wait, capped); a vanished group is created again at once."""
        stop: tenacity.stop.stop_base = (
            tenacity.stop_never
            if self.max_retries is None
            else tenacity.stop_after_attempt(self.max_retries + 1)
        )
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_recoverable),
            wait=self._wait,
            stop=stop,
            sleep=self._pause,
            before_sleep=self._before_retry,
            retry_error_callback=self._give_up,
        )
        return retrying(op)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        if state.attempt_number == 1 and _is_nogroup_error(_failure(state)):
            return 0.0
        backoff = tenacity.wait_exponential(multiplier=self.backoff_s, exp_base=2, max=self.max_backoff_s)
        return float(backoff(state))

    def _pause(self, seconds: float) -> None:
        if seconds:
            self._sleep(seconds)

    def _before_retry(self, state: tenacity.RetryCallState) -> None:
        exc = _failure(state)
        if _is_nogroup_error(exc):
            self._claim_cursor = "0-0"
        # Whatever happened, check the group again; a read whose reply was lost is pending on us.
        self._group_ready = False
        self._own_cursor = "0"
        delay = state.upcoming_sleep
        log.warning("durable feed retrying", stream=self.stream, problem=_problem(exc), retry_in_s=delay)

    def _give_up(self, state: tenacity.RetryCallState) -> Any:
        exc = _failure(state)
        raise FeedUnavailableError(f"durable feed {self.stream}: {_problem(exc)}") from exc
