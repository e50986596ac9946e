"""The shadow challenger on real Celery workers (one process per queue, Redis broker and results,
PostgreSQL): the inference worker loads champion and challenger at its start and scores both in one
task; the challenger's signals are stored under its version, published on the shadow channel only
(never the champion's channels, never the durable stream) and never become order intents."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
import redis
from celery import Celery
from sqlalchemy import Engine, select

from core.timegrid import MINUTE_MS, floor_minute, iso_minute, now_ms
from data import db
from data.models import OrderIntent
from ml.registry import Registry
from pipeline.clock import minute_dt
from pipeline.ledger import RunLedger
from pipeline.messages import HeartbeatMessage, SignalMessage, parse_message
from pipeline.signal_store import SignalStore
from tests.support.models import biased_model, identity_scaler, register_challenger
from tests.support.workers import (
    backfill_live_history,
    celery_client,
    deployment_env,
    running_fleet,
    wait_for_workers,
)
from worker.queues import Queue

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_SYMBOLS = 8


@dataclass
class Deployment:
    env: dict[str, str]
    client: Celery
    engine: Engine
    tmp: Path
    champion: str
    challenger: str


@pytest.fixture
def deployment(pg_url: str, tmp_path: Path) -> Iterator[Deployment]:
    registry = Registry(tmp_path / "models")
    champion, _ = registry.register(biased_model(0, "SHORT"), identity_scaler(), {"note": "champion"}, {})
    challenger = register_challenger(registry, seed=1, direction="LONG")  # a scaler of its own
    tag = uuid.uuid4().hex[:8]
    env = deployment_env(
        pg_url,
        registry.root,
        MLSIG_PIPELINE__CHANNEL=f"signals-{tag}",
        MLSIG_PIPELINE__HEARTBEAT_CHANNEL=f"signals-{tag}:heartbeat",
        MLSIG_PIPELINE__SHADOW_CHANNEL=f"signals-{tag}:shadow",
        MLSIG_PIPELINE__STREAM_KEY=f"signals-{tag}:stream",
        MLSIG_PIPELINE__CANDLE_WAIT_SECONDS="0",
        MLSIG_PIPELINE__SYMBOLS_PER_TASK="4",
        MLSIG_DATA__UNIVERSE_SIZE=str(N_SYMBOLS),
        MLSIG_TRADING__COOLDOWN_MINUTES="0",
    )
    backfill_live_history(pg_url, N_SYMBOLS, end_lag_minutes=10)
    engine = db.get_engine(pg_url)
    client = celery_client(env, "shadow-test-client")
    yield Deployment(env, client, engine, tmp_path, champion, challenger)
    client.close()


class Subscriber:
    """Every message on the champion's channel, the shadow channel and the heartbeat channel, until
    the heartbeat and ``shadow_expected`` shadow signals have arrived."""

    def __init__(self, d: Deployment, shadow_expected: int) -> None:
        names = ("channel", "shadow_channel", "heartbeat_channel")
        self.channels = {name: d.env[f"MLSIG_PIPELINE__{name.upper()}"] for name in names}
        self.pubsub = redis.Redis.from_url(d.env["MLSIG_REDIS_URL"]).pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(*self.channels.values())
        self.shadow_expected = shadow_expected
        self.messages: list[tuple[str, SignalMessage | HeartbeatMessage]] = []
        self.done = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        for item in self.pubsub.listen():
            channel = item["channel"].decode()
            self.messages.append((channel, parse_message(item["data"])))
            beats = sum(isinstance(m, HeartbeatMessage) for _, m in self.messages)
            shadows = sum(c == self.channels["shadow_channel"] for c, _ in self.messages)
            if beats and shadows >= self.shadow_expected:
                self.done.set()
                return

    def on(self, name: str) -> list[SignalMessage | HeartbeatMessage]:
        return [m for c, m in self.messages if c == self.channels[name]]


def test_the_shadow_challenger_on_real_workers_is_published_apart_and_never_traded(
    deployment: Deployment,
) -> None:
    d = deployment
    minute = iso_minute(floor_minute(now_ms()) - 10 * MINUTE_MS)
    with running_fleet(d.env, d.tmp) as fleet:
        wait_for_workers(d.client, fleet)
        subscriber = Subscriber(d, shadow_expected=N_SYMBOLS)
        task, control = "tasks.pipeline.run_minute", Queue.CONTROL.value
        start = d.client.send_task(task, args=[minute, True], queue=control)
        outcome = start.get(timeout=60)
        assert outcome["status"] == "running", outcome
        published = d.client.AsyncResult(str(outcome["result_id"])).get(timeout=120)
        for task_id in published["order_tasks"]:
            d.client.AsyncResult(task_id).get(timeout=30)
        assert subscriber.done.wait(timeout=30), fleet.logs()
        subscriber.pubsub.close()

    when = minute_dt(minute)
    store = SignalStore(d.engine)
    mine, shadow = store.for_minute(when, d.champion), store.for_minute(when, d.challenger)
    assert [r.direction for r in mine] == ["SHORT"] * N_SYMBOLS
    assert [r.direction for r in shadow] == ["LONG"] * N_SYMBOLS
    assert published["shadow"] == {"version": d.challenger, "signals": N_SYMBOLS, "published": N_SYMBOLS}

    # Orders: the champion's only.
    assert len(published["order_tasks"]) == N_SYMBOLS
    with d.engine.connect() as conn:
        intents = conn.execute(select(OrderIntent.model_version)).scalars().all()
    assert intents == [d.champion] * N_SYMBOLS

    # Pub/sub: the challenger's on the shadow channel alone; the champion's channel has the champion's.
    on_shadow = subscriber.on("shadow_channel")
    assert sorted(cast(SignalMessage, m).sequence for m in on_shadow) == [r.id for r in shadow]
    assert {m.model_version for m in subscriber.on("channel")} == {d.champion}
    [beat] = subscriber.on("heartbeat_channel")
    assert isinstance(beat, HeartbeatMessage)
    assert (beat.model_version, beat.signals, beat.actionable) == (d.champion, N_SYMBOLS, N_SYMBOLS)

    # The durable stream, which consumers act on, carries the champion's signals and the heartbeat.
    app_redis = redis.Redis.from_url(d.env["MLSIG_REDIS_URL"])
    stream = app_redis.xrange(d.env["MLSIG_PIPELINE__STREAM_KEY"])
    entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", stream)
    versions = [json.loads(e[1][b"data"])["model_version"] for e in entries]
    assert versions == [d.champion] * (N_SYMBOLS + 1)

    run = RunLedger(d.engine).get(when)
    assert run is not None
    assert (run.status, run.signals_made, run.note) == ("done", N_SYMBOLS, None)
    assert run.timings["inference_shadow_forward"] > 0
