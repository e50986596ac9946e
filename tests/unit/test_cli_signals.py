"""``mlsignals signals subscribe --durable``: prints what the stream holds, acks what it printed."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest
import redis
from typer.testing import CliRunner

from cli.main import app
from cli.signals_cmds import describe
from core.settings import get_settings, reset_settings_cache
from tests.conftest import REDIS_URL
from tests.support.signal_feed import T0, heartbeat, pending, signal, write_minutes, xadd

if TYPE_CHECKING:
    from pipeline.messages import HeartbeatMessage, SignalMessage

runner = CliRunner(env={"COLUMNS": "200"})


@pytest.fixture
def stream(redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("MLSIG_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("MLSIG_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("MLSIG_PIPELINE__STREAM_KEY", f"test:cli-feed:{uuid.uuid4().hex}")
    reset_settings_cache()
    key = get_settings().pipeline.stream_key  # the key the command will read
    yield key
    redis_client.delete(key)


def subscribe(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["signals", "subscribe", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.integration
def test_durable_subscribe_prints_and_acks(redis_client: redis.Redis, stream: str) -> None:
    redis_client.xgroup_create(stream, "g", id="$", mkstream=True)  # the group exists; nobody reads it now
    messages: list[SignalMessage | HeartbeatMessage] = [
        signal(1, "BTC/USDT:USDT"),
        signal(2, "ETH/USDT:USDT"),
        heartbeat(signals=2),
    ]
    for m in messages:
        xadd(redis_client, stream, m)
    redis_client.xadd(stream, {"type": "signal", "sequence": "3", "data": "{oops"})
    xadd(redis_client, stream, signal(4, "SOL/USDT:USDT"))

    code, out, err = subscribe("--durable", "--group", "g", "--count", "4")
    assert code == 0, err
    assert out.splitlines() == [describe(m) for m in [*messages, signal(4, "SOL/USDT:USDT")]]
    assert "skipped:" in err
    assert "Invalid JSON" in err
    assert pending(redis_client, stream, "g") == 0


@pytest.mark.integration
def test_durable_subscribe_json_symbol_and_resume(redis_client: redis.Redis, stream: str) -> None:
    write_minutes(redis_client, stream, 2)  # before the group exists: --from-start reads them
    symbol = "S03/USDT:USDT"
    args = ["--durable", "--group", "one", "--from-start", "--json", "--symbol", symbol, "--count", "3"]
    code, out, err = subscribe(*args)
    assert code == 0, err
    expected = [signal(4, symbol, T0), heartbeat(T0), signal(34, symbol, T0 + timedelta(minutes=1))]
    assert out.splitlines() == [m.model_dump_json() for m in expected]  # the JSON as published
    assert pending(redis_client, stream, "one") == 0  # printed ones acked, the filtered ones too

    # The same group goes on where it stopped.
    code, out, err = subscribe("--durable", "--group", "one", "--no-heartbeat", "--count", "1")
    assert code == 0, err
    assert out.splitlines() == [describe(signal(35, "S04/USDT:USDT", T0 + timedelta(minutes=1)))]
    assert pending(redis_client, stream, "one") == 0


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--group", "g"], "--group"),
        (["--consumer", "me"], "--consumer"),
        (["--from-start"], "--from-start"),
        (["--durable"], "--group"),
    ],
)
def test_durable_options_go_together(args: list[str], complaint: str) -> None:
    code, _out, err = subscribe(*args)
    assert code == 2
    assert complaint in err
    assert "durable" in err


def test_durable_subscribe_without_redis_is_a_clean_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLSIG_REDIS_URL", f"redis://127.0.0.1:{port}/0")
    monkeypatch.setenv("MLSIG_LOG_LEVEL", "ERROR")
    code, _out, err = subscribe("--durable", "--group", "g")
    assert code == 2
    assert "redis unreachable" in err
    assert "Traceback" not in err


@pytest.mark.integration
def test_pubsub_subscribe_is_unchanged(redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    channel = f"test:cli-signals:{uuid.uuid4().hex}"
    monkeypatch.setenv("MLSIG_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("MLSIG_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("MLSIG_PIPELINE__CHANNEL", channel)
    monkeypatch.setenv("MLSIG_PIPELINE__HEARTBEAT_CHANNEL", f"{channel}:heartbeat")
    results: list[tuple[int, str, str]] = []
    reader = threading.Thread(target=lambda: results.append(subscribe("--count", "2")))
    reader.start()
    beat = heartbeat()
    deadline = time.monotonic() + 20
    while reader.is_alive():  # publish until the subscriber, once subscribed, has seen two
        assert time.monotonic() < deadline
        redis_client.publish(channel, "{not json")
        redis_client.publish(f"{channel}:heartbeat", beat.model_dump_json())
        reader.join(timeout=0.05)
    code, out, err = results[0]
    assert code == 0, err
    assert out.splitlines() == [describe(beat)] * 2
    assert "skipped:" in err
