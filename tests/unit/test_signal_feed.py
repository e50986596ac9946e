"""The durable signal feed against the real Redis: nothing lost, nothing twice, nothing stuck."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from pipeline.bus import BusItem, RedisBus
from pipeline.messages import HeartbeatMessage, SignalMessage
from pipeline.signal_feed import DurableFeed, FeedItem, FeedMessage, FeedProblem, FeedUnavailableError
from tests.conftest import REDIS_URL, redis_address
from tests.support.signal_feed import heartbeat, pending, signal, write_minutes, xadd

pytestmark = pytest.mark.integration


def drain(
    feed: DurableFeed,
    until: Callable[[list[FeedItem]], bool],
    count: int | None = None,
    timeout_s: float = 10,
) -> list[FeedItem]:
    """Read (and ack messages) until ``until(everything read)`` holds."""
    got: list[FeedItem] = []
    deadline = time.monotonic() + timeout_s
    while not until(got):
        assert time.monotonic() < deadline, f"gave up after {len(got)} items"
        items = feed.read(count=count, block_ms=50)
        feed.ack(i.entry_id for i in items if isinstance(i, FeedMessage))
        got += items
    return got


def ids_of(items: list[FeedItem]) -> list[str]:
    return [i.entry_id for i in items]


def in_stream_order(ids: list[str]) -> list[str]:
    return sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))


@pytest.fixture
def stream(redis_client: redis.Redis) -> Iterator[str]:
    key = f"test:signal-feed:{uuid.uuid4().hex}"
    yield key
    redis_client.delete(key)


def test_offline_consumer_gets_five_minutes_in_order(redis_client: redis.Redis, stream: str) -> None:
    DurableFeed(redis_client, stream, "g", "c1").ensure_group()  # the group exists, its consumer is offline
    ids = write_minutes(redis_client, stream, 5)
    assert len(ids) == 155

    feed = DurableFeed(redis_client, stream, "g", "c1", batch=40)
    got = drain(feed, lambda got: len(got) >= 155)
    assert feed.read(block_ms=50) == []

    assert ids_of(got) == ids  # 0 lost, 0 duplicated, in order
    assert all(isinstance(i, FeedMessage) for i in got)
    messages = [i.message for i in got if isinstance(i, FeedMessage)]
    assert [m.sequence for m in messages if isinstance(m, SignalMessage)] == list(range(1, 151))
    assert sum(isinstance(m, HeartbeatMessage) for m in messages) == 5
    assert pending(redis_client, stream, "g") == 0


def test_new_group_starts_at_new_entries_or_at_the_start(redis_client: redis.Redis, stream: str) -> None:
    old = write_minutes(redis_client, stream, 1)
    new_only = DurableFeed(redis_client, stream, "new", "c")
    everything = DurableFeed(redis_client, stream, "all", "c", start="all")
    new_only.ensure_group()
    everything.ensure_group()
    fresh = write_minutes(redis_client, stream, 1, first_sequence=31)
    assert ids_of(drain(new_only, lambda got: len(got) >= 31)) == fresh
    assert ids_of(drain(everything, lambda got: len(got) >= 62)) == old + fresh


def test_dead_consumers_entries_are_claimed(redis_client: redis.Redis, stream: str) -> None:
    ids = write_minutes(redis_client, stream, 1)
    dead = DurableFeed(redis_client, stream, "g", "dead", start="all")
    taken = dead.read(count=10)  # read, never acked: then it "dies"
    assert ids_of(taken) == ids[:10]

    alive = DurableFeed(redis_client, stream, "g", "alive", claim_idle_ms=200)
    got = drain(alive, lambda got: set(ids[:10]) <= set(ids_of(got)))
    assert in_stream_order(ids_of(got)) == ids  # the 21 it read itself and the 10 it claimed, once each
    assert len(got) == len(ids)
    assert pending(redis_client, stream, "g") == 0
    consumers = {c["name"]: c["pending"] for c in redis_client.xinfo_consumers(stream, "g")}
    assert consumers == {b"dead": 0, b"alive": 0} or consumers == {"dead": 0, "alive": 0}


def test_restart_rereads_own_pending_entries(redis_client: redis.Redis, stream: str) -> None:
    ids = write_minutes(redis_client, stream, 1)
    first = DurableFeed(redis_client, stream, "g", "worker-1", start="all")
    assert ids_of(first.read(count=7)) == ids[:7]  # crashed before acking
    first.ack(ids[:2])  # … having acked only two

    restarted = DurableFeed(redis_client, stream, "g", "worker-1", claim_idle_ms=3_600_000)
    again = restarted.read(count=100)
    assert ids_of(again) == ids[2:7]  # its own pending entries first, in order
    rest = restarted.read(count=100)
    assert ids_of(rest) == ids[7:]
    restarted.ack(ids_of(again + rest))
    assert pending(redis_client, stream, "g") == 0


def test_malformed_entries_are_reported_and_acked(redis_client: redis.Redis, stream: str) -> None:
    good = xadd(redis_client, stream, signal(1))
    bad_json = redis_client.xadd(stream, {"type": "signal", "sequence": "2", "data": "{not json"}).decode()  # type: ignore[union-attr]
    wrong = signal(3).model_dump_json().replace('"confidence":0.7', '"confidence":2.0')
    bad_schema = redis_client.xadd(stream, {"type": "signal", "sequence": "3", "data": wrong}).decode()  # type: ignore[union-attr]
    no_data = redis_client.xadd(stream, {"type": "signal", "sequence": "4"}).decode()  # type: ignore[union-attr]
    beat = heartbeat().model_dump_json()
    mislabelled = redis_client.xadd(stream, {"type": "signal", "sequence": "5", "data": beat}).decode()  # type: ignore[union-attr]
    wrong_seq = redis_client.xadd(
        stream, {"type": "signal", "sequence": "7", "data": signal(6).model_dump_json()}
    ).decode()  # type: ignore[union-attr]
    last = xadd(redis_client, stream, heartbeat())

    feed = DurableFeed(redis_client, stream, "g", "c", start="all")
    items = feed.read(count=100)
    assert ids_of(items) == [good, bad_json, bad_schema, no_data, mislabelled, wrong_seq, last]
    problems = {i.entry_id: str(i) for i in items if isinstance(i, FeedProblem)}
    assert set(problems) == {bad_json, bad_schema, no_data, mislabelled, wrong_seq}
    assert "Invalid JSON" in problems[bad_json]
    assert "confidence" in problems[bad_schema]
    assert "missing field(s): data" in problems[no_data]
    assert "field type is 'signal' but data is a heartbeat message" in problems[mislabelled]
    assert "sequence" in problems[wrong_seq]
    assert all(text.startswith(f"stream entry {i}: ") for i, text in problems.items())
    assert pending(redis_client, stream, "g") == 2  # only the two good ones wait for the caller
    feed.ack([good, last])
    assert pending(redis_client, stream, "g") == 0
    assert feed.read(block_ms=50) == []  # nothing loops back


def test_trimmed_entries_are_reported_not_crashed_on(redis_client: redis.Redis, stream: str) -> None:
    ids = write_minutes(redis_client, stream, 1)
    DurableFeed(redis_client, stream, "g", "dead", start="all").read(count=5)  # dies holding 5
    mine = DurableFeed(redis_client, stream, "g", "me")
    assert ids_of(mine.read(count=3)) == ids[5:8]  # crashes holding 3
    redis_client.xtrim(stream, minid=ids[10])  # MAXLEN trims the oldest: all 8 pending entries are gone

    restarted = DurableFeed(redis_client, stream, "g", "me", claim_idle_ms=1)
    own = restarted.read(count=100)  # its own pending entries, whose data is gone
    assert ids_of(own) == ids[5:8]
    assert all(isinstance(i, FeedProblem) and "no longer in the stream" in i.reason for i in own)
    claimed = drain(restarted, lambda got: set(ids[:5]) <= set(ids_of(got)))
    gone = [i for i in claimed if i.entry_id in ids[:5]]
    assert all(isinstance(i, FeedProblem) and "trimmed" in i.reason for i in gone)
    drain(restarted, lambda got: bool(got) and got[-1].entry_id == ids[-1])
    assert pending(redis_client, stream, "g") == 0


def test_slow_consumer_loses_nothing(redis_client: redis.Redis, stream: str) -> None:
    feed = DurableFeed(redis_client, stream, "g", "slow", batch=3)
    feed.ensure_group()
    written: list[str] = []
    writer = threading.Thread(target=lambda: written.extend(write_minutes(redis_client, stream, 5)))
    writer.start()
    got: list[FeedItem] = []
    deadline = time.monotonic() + 30
    while writer.is_alive() or len(got) < len(written):
        assert time.monotonic() < deadline
        items = feed.read(block_ms=50)
        assert len(items) <= 3
        time.sleep(0.001)  # slow: it handles each small batch at its leisure
        feed.ack(ids_of(items))
        got += items
    writer.join()
    assert ids_of(got) == written
    assert len(got) == 155
    assert pending(redis_client, stream, "g") == 0


def test_two_consumers_split_entries_without_duplicates(redis_client: redis.Redis, stream: str) -> None:
    ids = write_minutes(redis_client, stream, 2)
    a = DurableFeed(redis_client, stream, "g", "a", start="all")
    b = DurableFeed(redis_client, stream, "g", "b", start="all")
    got: dict[str, list[str]] = {"a": [], "b": []}
    while len(got["a"]) + len(got["b"]) < len(ids):
        for name, feed in (("a", a), ("b", b)):
            items = feed.read(count=7, block_ms=50)
            feed.ack(ids_of(items))
            got[name] += ids_of(items)
    assert got["a"]
    assert got["b"]
    assert not set(got["a"]) & set(got["b"])
    assert in_stream_order(got["a"] + got["b"]) == ids
    assert pending(redis_client, stream, "g") == 0


def test_group_gone_with_the_stream_is_created_again(redis_client: redis.Redis, stream: str) -> None:
    feed = DurableFeed(redis_client, stream, "g", "c")
    feed.ensure_group()
    before = write_minutes(redis_client, stream, 1)
    drain(feed, lambda got: len(got) >= len(before))
    redis_client.delete(stream)  # e.g. a Redis restart without persistence
    assert feed.read(block_ms=50) == []  # NOGROUP: created again, nothing to read, no crash
    redis_client.delete(stream)
    after = write_minutes(redis_client, stream, 1, first_sequence=31)  # the publisher writes on
    assert ids_of(drain(feed, lambda got: len(got) >= len(after))) == after  # none lost
    assert pending(redis_client, stream, "g") == 0


class Proxy:
    """A TCP relay to the real Redis that can be cut and restored, like a Redis restart."""

    def __init__(self, port: int = 0) -> None:
        self.listener = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(redis_address())
            self.sockets += [downstream, upstream]
            for src, dst in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def test_lost_connection_is_retried_with_backoff(redis_client: redis.Redis, stream: str) -> None:
    proxy = Proxy()
    db = REDIS_URL.rsplit("/", 1)[1]
    through = redis.Redis.from_url(f"redis://127.0.0.1:{proxy.port}/{db}", socket_timeout=5)
    ids = write_minutes(redis_client, stream, 1)
    waits: list[float] = []
    restored: list[Proxy] = []

    def sleep(seconds: float) -> None:  # Redis "comes back" during the feed's third wait
        waits.append(seconds)
        if len(waits) == 3:
            restored.append(Proxy(proxy.port))

    feed = DurableFeed(through, stream, "g", "c", start="all", sleep=sleep, backoff_s=0.5)
    first = feed.read(count=10)  # handed over, never acked: the connection goes before the ack
    proxy.cut()
    try:
        got = drain(feed, lambda got: len(got) >= len(ids), count=100)
    finally:
        through.close()
        for p in restored:
            p.cut()
    assert waits[:3] == [0.5, 1.0, 2.0]
    assert ids_of(got) == ids  # its pending 10 again (re-read after reconnecting), then the rest
    assert ids_of(first) == ids[:10]
    assert pending(redis_client, stream, "g") == 0


def test_gives_up_after_max_retries(stream: str) -> None:
    proxy = Proxy()
    db = REDIS_URL.rsplit("/", 1)[1]
    through = redis.Redis.from_url(f"redis://127.0.0.1:{proxy.port}/{db}", socket_timeout=2)
    proxy.cut()
    feed = DurableFeed(through, stream, "g", "c", max_retries=2, sleep=lambda _s: None)
    with pytest.raises(FeedUnavailableError, match="redis unreachable"):
        feed.read()
    through.close()


def test_reads_what_the_publisher_writes(redis_client: redis.Redis, stream: str) -> None:
    feed = DurableFeed(redis_client, stream, "g", "c")
    feed.ensure_group()
    bus = RedisBus(redis_client, stream_key=stream)
    items = [
        BusItem(f"signal:{n}", "signal", str(n), signal(n).model_dump_json(), ("test:nobody",))
        for n in (1, 2, 3)
    ]
    beat = heartbeat()
    items.append(BusItem("hb", "heartbeat", "2026-11-24T10:00Z", beat.model_dump_json(), ("test:nobody",)))
    try:
        assert bus.publish_once(items) == 4
        got = drain(feed, lambda got: len(got) >= 4)
    finally:
        redis_client.delete(*[f"{stream}:sent:{i.dedupe_id}" for i in items])
    assert [i.message for i in got if isinstance(i, FeedMessage)] == [signal(1), signal(2), signal(3), beat]
