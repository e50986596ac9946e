"""``mlsignals data stream`` and ``data stream-status`` as an operator runs them (real Redis)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.conftest import REDIS_URL

pytestmark = pytest.mark.integration


def mlsignals(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("mlsignals")), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.fixture
def env(sqlite_url: str) -> dict[str, str]:
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter("candles:simulator:*"):
        client.delete(key)
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLSIG_")}
    return base | {
        "MLSIG_DATABASE_URL": sqlite_url,
        "MLSIG_REDIS_URL": REDIS_URL,
        "MLSIG_DATA__UNIVERSE_SIZE": "5",
        "MLSIG_DATA__SYNC_INITIAL_MINUTES": "60",
        "MLSIG_LOG_LEVEL": "WARNING",
    }


def test_stream_runs_reports_alive_and_stops_cleanly_on_sigterm(env: dict[str, str]) -> None:
    down = mlsignals("data", "stream-status", env=env)
    assert down.returncode == 1
    assert "NOT RUNNING" in down.stdout

    client = redis.Redis.from_url(REDIS_URL)
    moved = client.pubsub(ignore_subscribe_messages=True)
    moved.subscribe("candles:simulator:wm")  # before the start, so the first advance is not missed
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlsignals")), "data", "stream"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        message = moved.get_message(timeout=90)
        while message is None and process.poll() is None:
            message = moved.get_message(timeout=90)
        assert message is not None, process.stderr.read() if process.stderr else ""
        assert len(json.loads(message["data"])) == 5
        status = mlsignals("data", "stream-status", "--json", env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        record = json.loads(status.stdout)
        assert record["alive"] is True
        assert record["symbols"] == 5
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
        moved.close()
    assert process.returncode == 0, err
    assert "streaming 5 symbols from simulator" in out
    assert "stream stopped" in out
    assert "Traceback" not in err


def test_stream_refuses_an_exchange_it_has_no_feed_for(env: dict[str, str]) -> None:
    result = mlsignals(
        "data", "stream", env=env | {"MLSIG_DATA__SOURCE": "exchange", "MLSIG_EXCHANGE__ID": "kraken"}
    )
    assert result.returncode == 2
    assert "no WebSocket candle feed for exchange 'kraken'" in result.stderr
    assert "Traceback" not in result.stderr
