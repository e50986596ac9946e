"""The chaos harness: a real distributed deployment, the faults it suffers, and what it is counted by.

One ``Deployment`` per broker (``redis`` or ``rabbitmq``): a private Redis (own port, no
persistence; results, pub/sub, windows, the durable stream, and the broker of the Redis deployment),
a private RabbitMQ for the RabbitMQ deployment, its own PostgreSQL database (``chaos_<broker>``,
created fresh), one real worker process per queue (``--loglevel INFO``), a real ``celery beat``
with its own schedule file, 30 simulator symbols (two of them with bad data on purpose), an untrained
model registered at confidence threshold 0.34 and fake exchange keys in every process's environment.
Faults are timed by polling the ledger's stage and the minute's rows (docs/RELIABILITY.md).

Recorders (threads of the test process) see what a consumer sees: pub/sub subscribers (one keeping
up, one slow) and durable stream readers (one keeping up, one slow, one offline for 5 minutes).
``Deployment.minute_row`` counts one minute: signals expected and written, duplicates (database,
pub/sub and stream sequences, orders, fills), messages received, order intents, orders, fills and
the ledger row. Nothing here asserts; the scenarios (test_chaos.py) judge.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import redis
import torch
from celery import Celery
from kombu import Connection
from sqlalchemy import Engine, create_engine, text

from core.settings import PipelineSettings
from core.timegrid import MINUTE_MS, floor_minute, now_ms
from data import db
from data.ingest import Ingestor
from data.sources.simulator import SimulatedMarket
from data.store import CandleStore
from data.validation import ValidationPolicy
from ml.features import FEATURE_SPEC
from ml.model.config import ModelConfig
from ml.model.network import build_model
from ml.registry import Registry
from ml.scaling import RobustScaler
from pipeline.messages import HeartbeatMessage, MalformedMessageError, SignalMessage, parse_message
from pipeline.signal_feed import DurableFeed, FeedMessage
from tests.support.brokers import PrivateRabbit, PrivateRedis, free_port, free_rabbit_port
from tests.support.workers import ROOT, WorkerFleet, WorkerProcess
from worker.queues import Queue, worker_command

VAR = ROOT / "var" / "chaos"
SUMMARIES: list[Path] = []  # the summary files written in this session (conftest prints them)
PG_ADMIN_URL = os.environ.get("MLSIG_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
N_SYMBOLS = 30
SYMBOLS_PER_TASK = 10
THRESHOLD = "0.34"
HEAD_STD = 0.05  # random output layers of the untrained model (see _register_model)
BROKER_DB, BACKEND_DB, APP_DB = 0, 1, 2
PIPELINE = PipelineSettings()
CHANNEL, HEARTBEAT, STREAM = PIPELINE.channel, PIPELINE.heartbeat_channel, PIPELINE.stream_key
SLOW_S = 1.5  # a slow reader handles one message per 1.5 s: 30 signals take ~45 s of each minute
RECORDED = ("missed", "failed", "skipped_late")
FINISHED = ("done", "partial")


def sleep_until(t: float) -> None:
    while (left := t - time.time()) > 0:
        time.sleep(min(left, 0.5))


def minute_start(t: float) -> float:
    return float(int(t // 60) * 60)


def utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def stamp(t: float | None = None) -> str:
    return utc(time.time() if t is None else t).strftime("%H:%M:%S.%f")[:-3]


# -- recorders -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    kind: str  # signal | heartbeat
    sequence: int  # a signal's sequence (its database id); 0 for a heartbeat
    minute: datetime
    entry: str = ""  # the stream entry id (durable readers)


class Recorder(threading.Thread):
    """Base of the readers: a thread recording every message it handled."""

    durable = False

    def __init__(self, name: str, url: str, *, delay_s: float = 0.0) -> None:
        super().__init__(name=name, daemon=True)
        self.url = url
        self.delay_s = delay_s
        self.since = datetime.max.replace(tzinfo=UTC)  # slow only for minutes of the campaign
        self.seen: list[Seen] = []
        self.reconnects = 0
        self.errors: list[str] = []
        self.secret_hits = 0
        self.needles: tuple[bytes, ...] = ()
        self.last_at = time.monotonic()
        self.stopping = threading.Event()

    def handle(self, raw: bytes | str, entry: str = "") -> None:
        data = raw.encode() if isinstance(raw, str) else raw
        if any(n in data for n in self.needles):
            self.secret_hits += 1
        try:
            message = parse_message(data)
        except MalformedMessageError as exc:
            self.errors.append(str(exc)[:200])
            return
        minute = message.minute
        if isinstance(message, SignalMessage):
            self.seen.append(Seen("signal", message.sequence, minute, entry))
        elif isinstance(message, HeartbeatMessage):
            self.seen.append(Seen("heartbeat", 0, minute, entry))
        self.last_at = time.monotonic()
        if self.delay_s and minute >= self.since:
            time.sleep(self.delay_s)

    def drain(self, quiet_s: float = 3.0, timeout: float = 120.0) -> None:
        """Full speed from now on; return once nothing arrived for ``quiet_s``."""
        self.delay_s = 0.0
        end = time.monotonic() + timeout
        while time.monotonic() < end and time.monotonic() - self.last_at < quiet_s:
            time.sleep(0.2)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)


class PubSubRecorder(Recorder):
    """A pub/sub subscriber of the signal and heartbeat channels that reconnects when Redis goes away."""

    def run(self) -> None:
        while not self.stopping.is_set():
            client = redis.Redis.from_url(self.url, socket_connect_timeout=2)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(CHANNEL, HEARTBEAT)
                while not self.stopping.is_set():
                    item = pubsub.get_message(timeout=0.5)
                    if item is not None and item["type"] == "message":
                        self.handle(item["data"])
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                self.reconnects += 1
                time.sleep(0.2)
            finally:
                pubsub.close()
                client.close()


class StreamRecorder(Recorder):
    """A durable reader of the signal stream (``pipeline.signal_feed.DurableFeed``, its own group).

    ``offline`` is a wall-clock window during which it reads nothing (the subscriber is down).
    """

    durable = True

    def __init__(
        self, name: str, url: str, *, delay_s: float = 0.0, offline: tuple[float, float] | None = None
    ) -> None:
        super().__init__(name, url, delay_s=delay_s)
        self.offline = offline
        self.was_offline = False

    def run(self) -> None:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=10)
        feed = DurableFeed(client, STREAM, f"chaos-{self.name}", "reader-1", start="all", block_ms=500)
        while not self.stopping.is_set():
            if self.offline and self.offline[0] <= time.time() < self.offline[1]:
                self.was_offline = True
                time.sleep(0.2)
                continue
            try:
                items = feed.read(count=1 if self.delay_s else 100)
            except Exception as exc:  # noqa: BLE001 - the feed retries connections itself; anything
                # else is news, recorded for the scenario's verdict (a dead reader thread would hide it)
                self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                time.sleep(0.5)
                continue
            for item in items:
                if isinstance(item, FeedMessage):
                    self.handle(item.data, item.entry_id)
                    feed.ack([item.entry_id])
                else:
                    self.errors.append(str(item)[:200])
        client.close()


# -- the deployment ----------------------------------------------------------------------------------


class ChaosFleet(WorkerFleet):
    """``tests.support.workers.WorkerFleet`` with INFO logs, as in production (README.md), and the
    log files numbered in start order."""

    def start(self, queue: Queue, *extra: str) -> WorkerProcess:
        command = worker_command(queue, loglevel="INFO")
        command[0] = str(Path(sys.executable).with_name("celery"))
        command[command.index("-n") + 1] = f"{queue.value}-{len(self.started)}-{os.getpid()}@%h"
        log = self.tmp / f"worker-{queue.value}-{len(self.started)}.log"
        with log.open("wb") as handle:
            process = subprocess.Popen(
                [*command, *extra], cwd=ROOT, env=self.env, stdout=handle, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        worker = WorkerProcess(queue, process, log)
        self.workers[queue] = worker
        self.started.append(worker)
        return worker


def _worker_extra(queue: Queue) -> tuple[str, ...]:
    return ("--concurrency", "2") if queue is Queue.FEATURES else ()


@dataclass
class MinuteRow:
    """What one minute produced, as counted by the database and by the readers."""

    minute: datetime
    scenario: str
    role: str  # warmup | fault | settle
    expected: int
    written: int = 0
    dup_db: int = 0
    actionable: int = 0
    pubsub: int = 0
    dup_pubsub: int = 0
    stream: int = 0
    dup_stream: int = 0
    heartbeat: bool = False
    intents: int = 0
    undecided: int = 0  # intents still ``received`` when counted: never decided
    orders: int = 0
    dup_orders: int = 0
    fills: int = 0
    dup_fills: int = 0
    status: str = "-"
    note: str = ""
    attempts: int | None = None
    seconds: float | None = None  # the ledger's minute_total: start of run_minute to published
    failures: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        return self.dup_db + self.dup_pubsub + self.dup_stream + self.dup_orders + self.dup_fills

    @property
    def complete(self) -> bool:
        return self.status in FINISHED and self.written >= self.expected

    @property
    def recorded(self) -> bool:
        return self.status in RECORDED and bool(self.note) and self.heartbeat


class Deployment:
    """Everything of one broker's deployment; ``start()`` brings it up, ``stop()`` tears it down."""

    def __init__(self, broker: str, base: Path = VAR) -> None:
        assert broker in ("redis", "rabbitmq")
        self.broker = broker
        self.workdir = base / broker
        self.db_name = f"chaos_{broker}"
        self.db_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{self.db_name}"
        self.api_key = f"CHAOS-KEY-{secrets.token_hex(8)}"
        self.api_secret = f"CHAOS-SECRET-{secrets.token_hex(12)}"
        self.symbols: list[str] = []
        self.bad: dict[str, str] = {}  # symbol -> what was done to its candles
        self.events: list[str] = []  # what the harness did, when
        self.harness_killed: list[WorkerProcess] = []
        self.beats: list[subprocess.Popen[bytes]] = []
        self.beat_logs: list[Path] = []
        self.beat: subprocess.Popen[bytes] | None = None
        self.rabbit: PrivateRabbit | None = None
        self.redis = PrivateRedis(free_port(), self.workdir / "redis", persist=False)
        self.recorders: dict[str, Recorder] = {}
        self.fleet: ChaosFleet | None = None
        self.engine: Engine | None = None
        self.client: Celery | None = None
        self.started_at = time.time()

    # -- lifecycle

    def log(self, what: str) -> None:
        self.events.append(f"{stamp()} {what}")

    def start(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        self.redis.start()
        if self.broker == "rabbitmq":
            port = free_rabbit_port()
            self.rabbit = PrivateRabbit(port, self.workdir / "rabbit", name=f"chaos{port}")
            self.rabbit.start()
        self.broker_url = self.rabbit.url if self.rabbit else self.redis.url(BROKER_DB)
        self._fresh_database()
        self.engine = create_engine(self.db_url, pool_pre_ping=True)
        registry = self._register_model()
        self._backfill()
        self._damage()
        self.env = self._env(registry)
        self.client = Celery(
            f"chaos-{self.broker}", broker=self.broker_url, backend=self.redis.url(BACKEND_DB),
            set_as_current=False,
        )  # fmt: skip
        self.client.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
        app_url = self.redis.url(APP_DB)
        self.recorders = {
            "pubsub": PubSubRecorder("pubsub", app_url),
            "pubsub-slow": PubSubRecorder("pubsub-slow", app_url, delay_s=SLOW_S),
            "stream": StreamRecorder("stream", app_url),
            "stream-slow": StreamRecorder("stream-slow", app_url, delay_s=SLOW_S),
        }
        for recorder in self.recorders.values():
            recorder.needles = self.needles()
            recorder.start()
        self.fleet = ChaosFleet(self.env, self.workdir)
        for queue in Queue:
            self.fleet.start(queue, *_worker_extra(queue))
        self.wait_workers(timeout=240)
        self.start_beat()
        self.log("deployment up")

    def add_offline_reader(self, window: tuple[float, float]) -> None:
        """A durable reader that reads nothing during ``window`` (wall clock): a subscriber down."""
        reader = StreamRecorder("stream-offline", self.redis.url(APP_DB), offline=window)
        reader.needles = self.needles()
        self.recorders[reader.name] = reader
        reader.start()
        self.log(f"stream-offline reader offline from {stamp(window[0])} to {stamp(window[1])}")

    def stop(self) -> None:
        for recorder in self.recorders.values():
            recorder.stop()
        for beat in self.beats:
            _terminate(beat)
        if self.fleet is not None:
            self.fleet.stop()
        if self.client is not None:
            self.client.close()
        if self.rabbit is not None:
            self.rabbit.stop()
        self.redis.stop()
        if self.engine is not None:
            self.engine.dispose()
        db.dispose_engines()

    def _fresh_database(self) -> None:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{self.db_name}"'))
        admin.dispose()
        db.upgrade(self.db_url)

    def _register_model(self) -> Registry:
        registry = Registry(self.workdir / "models")
        torch.manual_seed(0)
        n = FEATURE_SPEC.n_features
        identity = RobustScaler(FEATURE_SPEC.names, FEATURE_SPEC.hash, np.zeros(n), np.ones(n), 10.0, 2)
        model = build_model(ModelConfig())
        # The output layers start at zero (every class exactly 1/3: all NEUTRAL at any threshold above
        # 1/3); small random ones make some signals actionable, so that orders and fills happen.
        with torch.no_grad():
            for head in (model.returns_head, model.direction_head, model.risk_head):
                out: Any = head[-1]
                out.weight.normal_(0.0, HEAD_STD)
        registry.register(model, identity, {"note": "untrained chaos model"}, {})
        return registry

    def _backfill(self) -> None:
        assert self.engine is not None
        market = SimulatedMarket()
        self.symbols = market.list_symbols()[:N_SYMBOLS]
        minutes = FEATURE_SPEC.window * 15 + 120
        report = Ingestor(CandleStore(self.engine), market, ValidationPolicy()).backfill(
            self.symbols, minutes / 1440, end_ms=floor_minute(now_ms())
        )
        assert report.ok, report

    def _damage(self) -> None:
        """Two symbols with bad data: a 4-hour hole in one's candles, a NaN candle in the other's."""
        assert self.engine is not None
        holed, poisoned = self.symbols[-1], self.symbols[-2]
        now = floor_minute(now_ms())
        with self.engine.begin() as conn:
            gone = conn.execute(
                text("DELETE FROM raw_market_data WHERE symbol = :s AND open_time >= :a AND open_time < :b"),
                {"s": holed, "a": now - 8 * 60 * MINUTE_MS, "b": now - 4 * 60 * MINUTE_MS},
            ).rowcount
            nan = conn.execute(
                text(
                    "UPDATE raw_market_data SET open = 'NaN', high = 'NaN', low = 'NaN', close = 'NaN' "
                    "WHERE symbol = :s AND open_time = :t"
                ),
                {"s": poisoned, "t": now - 3 * 60 * MINUTE_MS},
            ).rowcount
        self.bad = {
            holed: f"{gone} candles deleted (8 h to 4 h ago)",
            poisoned: f"{nan} candle with NaN prices (3 h ago)",
        }

    def _env(self, registry: Registry) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith("MLSIG_")} | {
            "MLSIG_DATABASE_URL": self.db_url,
            "MLSIG_REDIS_URL": self.redis.url(APP_DB),
            "MLSIG_CELERY__BROKER_URL": self.broker_url,
            "MLSIG_CELERY__RESULT_BACKEND": self.redis.url(BACKEND_DB),
            "MLSIG_MODEL__REGISTRY_DIR": str(registry.root),
            "MLSIG_MODEL__DEVICE": "cpu",
            "MLSIG_MODEL__TORCH_THREADS": "1",
            "MLSIG_DATA__UNIVERSE_SIZE": str(N_SYMBOLS),
            "MLSIG_PIPELINE__SYMBOLS_PER_TASK": str(SYMBOLS_PER_TASK),
            "MLSIG_ML_INTEGRATION__SIGNALS__CONFIDENCE_THRESHOLD": THRESHOLD,
            # Paper risk limits off (count, cooldown, exposure): every actionable signal becomes an order.
            "MLSIG_TRADING__MAX_OPEN_POSITIONS": "0",
            "MLSIG_TRADING__COOLDOWN_MINUTES": "0",
            "MLSIG_TRADING__MAX_EXPOSURE_TOTAL": "1000000",
            "MLSIG_TRADING__MAX_EXPOSURE_PER_SYMBOL": "1000000",
            "MLSIG_TRADING__DAILY_LOSS_LIMIT": "1.0",
            "MLSIG_ML_INTEGRATION__SIGNALS__MAX_SIGNALS_PER_SYMBOL": "1000",
            "MLSIG_TRADING__API_KEY": self.api_key,
            "MLSIG_TRADING__API_SECRET": self.api_secret,
            "MLSIG_LOG_LEVEL": "INFO",
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
        }

    # -- processes

    def start_beat(self, *, second: bool = False) -> subprocess.Popen[bytes]:
        tag = "beat2" if second else "beat"
        log = self.workdir / f"{tag}-{len(self.beat_logs)}.log"
        schedule, pidfile = self.workdir / f"{tag}-schedule", self.workdir / f"{tag}.pid"
        command = [
            str(Path(sys.executable).with_name("celery")), "-A", "worker", "beat", "--loglevel", "INFO",
            "--schedule", str(schedule), "--pidfile", str(pidfile),
        ]  # fmt: skip
        with log.open("wb") as handle:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=self.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.beats.append(process)
        self.beat_logs.append(log)
        if not second:
            self.beat = process
        self.log(f"{tag} started (pid {process.pid})")
        return process

    def stop_beat(self, process: subprocess.Popen[bytes] | None = None) -> None:
        process = process or self.beat
        assert process is not None
        _terminate(process)
        self.log(f"beat pid {process.pid} stopped")

    def wait_workers(self, timeout: float = 120.0) -> bool:
        """True once every queue has a live worker that answers ping."""
        assert self.client is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                replies = self.client.control.ping(timeout=1.0) or []
            except Exception:  # noqa: BLE001 - the broker may be restarting: a probe, any failure is
                # "not yet" (besides connection errors, kombu raises AttributeError mid-restart)
                replies = []
                time.sleep(0.5)
            names = {name.split("-", 1)[0] for reply in replies for name in reply}
            if names >= {q.value for q in Queue}:
                return True
        return False

    def kill_worker(self, queue: Queue, *, restart: bool = True) -> None:
        """kill -9 of the queue's worker (its pool children too), restarted at once."""
        assert self.fleet is not None
        victim = self.fleet.workers[queue]
        victim.kill()
        self.harness_killed.append(victim)
        self.log(f"kill -9 {queue.value} worker pid {victim.process.pid}")
        if restart:
            self.fleet.start(queue, *_worker_extra(queue))
            self.log(f"{queue.value} worker restarted")

    def dead_workers(self) -> list[str]:
        """Workers (and the main beat) that died without the harness killing them."""
        assert self.fleet is not None
        killed = {id(w) for w in self.harness_killed}
        dead = [
            f"{w.queue.value} worker pid {w.process.pid} exited {w.process.returncode}"
            for w in self.fleet.workers.values()
            if w.process.poll() is not None and id(w) not in killed
        ]
        if self.beat is not None and self.beat.poll() is not None:
            dead.append(f"beat pid {self.beat.pid} exited {self.beat.returncode}")
        return dead

    # Triggers. A minute takes about 0.5 s here (a feature chunk ~0.15 s, inference ~0.05 s, publish
    # ~0.1 s), so they poll the database every few ms. Not the worker logs: once ready, the workers
    # write no log lines at all. Not Celery's task events: workers buffer them, they arrive 0.3-2 s late.

    def wait_run(self, t: float, until: float, stage: str | None = None) -> bool:
        """Wait until the minute ``t`` has its ledger row (and, given ``stage``, reached that stage:
        the inference and publish tasks record it as they start)."""
        assert self.engine is not None
        query = text("SELECT stage FROM pipeline_runs WHERE minute = :m")
        with self.engine.connect() as conn:
            while time.time() < until:
                found = conn.execute(query, {"m": utc(t)}).first()
                conn.rollback()
                if found is not None and (stage is None or found.stage == stage):
                    return True
                time.sleep(0.003)
        return False

    def wait_rows(self, table: str, t: float, until: float) -> bool:
        """Wait until ``table`` has a row for the minute ``t`` (its ``minute`` column)."""
        assert self.engine is not None
        query = text(f"SELECT EXISTS (SELECT 1 FROM {table} WHERE minute = :m)")
        with self.engine.connect() as conn:
            while time.time() < until:
                found = conn.execute(query, {"m": utc(t)}).scalar_one()
                conn.rollback()
                if found:
                    return True
                time.sleep(0.003)
        return False

    def progress(self, t: float) -> str:
        """How far the minute ``t`` got: its stage, signals stored and published, intents stored."""
        assert self.engine is not None
        with self.engine.connect() as conn:
            stage = conn.execute(
                text("SELECT stage FROM pipeline_runs WHERE minute = :m"), {"m": utc(t)}
            ).first()
            signals = conn.execute(
                text("SELECT count(*), count(published_at) FROM signals WHERE minute = :m"), {"m": utc(t)}
            ).one()
            intents = conn.execute(
                text("SELECT count(*) FROM order_intents WHERE minute = :m"), {"m": utc(t)}
            ).scalar_one()
        return (
            f"stage {stage.stage if stage else '-'}, {signals[0]} signals stored, {signals[1]} published, "
            f"{intents} intents"
        )

    # -- faults

    def restart_broker(self) -> float:
        """The broker killed (SIGKILL: a graceful RabbitMQ stop takes longer than the whole minute)
        and started again at once; the Redis deployment's Redis holds no data across it."""
        began = time.monotonic()
        if self.rabbit is not None:
            self.rabbit.restart(hard=True)
        else:
            self.redis.restart(hard=True)
        took = time.monotonic() - began
        self.log(f"{self.broker} broker killed and restarted in {took:.1f} s")
        return took

    def terminate_pg(self, seconds: float) -> int:
        """pg_terminate_backend on every connection to the chaos database, in a loop, for ``seconds``."""
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        killed = 0
        with admin.connect() as conn:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                killed += int(
                    conn.execute(
                        text(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE datname = :d AND pid <> pg_backend_pid()"
                        ),
                        {"d": self.db_name},
                    ).scalar_one()
                )
                time.sleep(0.02)
        admin.dispose()
        self.log(f"terminated {killed} PostgreSQL backends in {seconds} s")
        return killed

    def send_pickles(self) -> Path:
        """A pickle-serialised task message to every queue; unpickling it would create the marker."""
        marker = self.workdir / "PICKLE-EXECUTED"
        marker.unlink(missing_ok=True)
        with Connection(self.broker_url) as conn:
            producer = conn.Producer()
            for queue in Queue:
                task_id = str(uuid.uuid4())
                producer.publish(
                    ((_Bomb(str(marker)),), {}, {"callbacks": None, "errbacks": None, "chain": None}),
                    exchange="",
                    routing_key=queue.value,
                    serializer="pickle",
                    headers={"lang": "py", "task": "tasks.data.sync", "id": task_id, "root_id": task_id,
                             "parent_id": None, "group": None, "argsrepr": "()", "kwargsrepr": "{}"},
                )  # fmt: skip
        self.log("pickle messages sent to every queue")
        return marker

    # -- observations

    def needles(self) -> tuple[bytes, ...]:
        return (self.api_key.encode(), self.api_secret.encode())

    def minute_row(self, t: float, scenario: str, role: str) -> MinuteRow:
        assert self.engine is not None
        minute = utc(t)
        row = MinuteRow(minute, scenario, role, expected=len(self.symbols) - len(self.bad))
        params = {"m": minute}
        with self.engine.connect() as conn:
            per_symbol = conn.execute(
                text(
                    "SELECT symbol, count(*) AS n, bool_or(direction <> 'NEUTRAL') AS act "
                    "FROM signals WHERE minute = :m GROUP BY symbol"
                ),
                params,
            ).all()
            row.written = len(per_symbol)
            row.dup_db = sum(r.n - 1 for r in per_symbol)
            row.actionable = sum(1 for r in per_symbol if r.act)
            row.intents, row.undecided = conn.execute(
                text(
                    "SELECT count(*), count(*) FILTER (WHERE status = 'received') "
                    "FROM order_intents WHERE minute = :m"
                ),
                params,
            ).one()
            # Entry orders of the minute's intents and their fills; exits (stop-loss, take-profit,
            # opposite signal) count only towards duplicates: at most one exit order per position.
            row.orders, row.dup_orders = conn.execute(
                text(
                    "SELECT count(*) FILTER (WHERE purpose = 'entry'), count(*) - count(DISTINCT "
                    "CASE WHEN purpose = 'entry' THEN 'i' || coalesce(intent_id, -id) "
                    "ELSE 'p' || coalesce(position_id, -id) END) FROM trading_orders WHERE signal_minute = :m"
                ),
                params,
            ).one()
            fills = conn.execute(
                text(
                    "SELECT f.order_id, count(*) AS n FROM trading_fills f JOIN trading_orders o "
                    "ON o.id = f.order_id WHERE o.signal_minute = :m AND o.purpose = 'entry' "
                    "GROUP BY f.order_id"
                ),
                params,
            ).all()
            row.fills = sum(r.n for r in fills)
            row.dup_fills = sum(r.n - 1 for r in fills)
            run = (
                conn.execute(text("SELECT * FROM pipeline_runs WHERE minute = :m"), params).mappings().first()
            )
        if run is not None:
            row.status = str(run["status"])
            row.note = str(run["note"] or "")
            row.attempts = run.get("attempts")
            row.failures = dict(run["failures"] or {})
            total = (run["timings"] or {}).get("minute_total")
            row.seconds = None if total is None else float(total)
        fast, stream = self.recorders["pubsub"], self.recorders["stream"]
        signals = [s for s in fast.seen if s.kind == "signal" and s.minute == minute]
        row.pubsub = len(signals)
        row.dup_pubsub = len(signals) - len({s.sequence for s in signals})
        entries = {s.entry: s for s in stream.seen if s.minute == minute}  # a redelivered entry counts once
        stream_signals = [s for s in entries.values() if s.kind == "signal"]
        row.stream = len(stream_signals)
        row.dup_stream = len(stream_signals) - len({s.sequence for s in stream_signals})
        row.heartbeat = any(
            s.kind == "heartbeat" and s.minute == minute for s in [*fast.seen, *entries.values()]
        )
        return row

    def signal_ids(self, first: float, last: float) -> set[int]:
        """Every signal stored for the minutes ``first`` to ``last`` (inclusive)."""
        assert self.engine is not None
        with self.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT id FROM signals WHERE minute >= :a AND minute <= :b"),
                {"a": utc(first), "b": utc(last)},
            ).all()
        return {int(r.id) for r in rows}

    def reader_report(self, name: str, first: float, last: float) -> dict[str, Any]:
        """A reader's received, lost and duplicated signals over the campaign's minutes."""
        recorder = self.recorders[name]
        lo, hi = utc(first), utc(last)
        mine = [s for s in recorder.seen if s.kind == "signal" and lo <= s.minute <= hi]
        if recorder.durable:
            mine = list({s.entry: s for s in mine}.values())
        counts = Counter(s.sequence for s in mine)
        stored = self.signal_ids(first, last)
        return {
            "reader": name,
            "durable": recorder.durable,
            "received": len(counts),
            "stored": len(stored),
            "lost": len(stored - set(counts)),
            "duplicates": sum(n - 1 for n in counts.values()),
            "reconnects": recorder.reconnects,
            "errors": recorder.errors[:3],
            "was_offline": getattr(recorder, "was_offline", False),
        }

    def scan_secrets(self) -> list[str]:
        """Where the fake exchange keys appear: logs, every key and value of the private Redis, the
        RabbitMQ node's files, the messages the readers saw and a few database tables."""
        needles = self.needles()
        hits: list[str] = []
        assert self.fleet is not None
        assert self.engine is not None
        for path in [w.log for w in self.fleet.started] + self.beat_logs:
            data = path.read_bytes()
            hits += [f"{path.name}: {n.decode()[:14]}…" for n in needles if n in data]
        hits += self._scan_redis(needles)
        if self.rabbit is not None:
            for path in self.rabbit.workdir.rglob("*"):
                if path.is_file() and path.name != ".erlang.cookie":
                    data = path.read_bytes()
                    hits += [f"rabbitmq {path.name}" for n in needles if n in data]
        hits += [
            f"reader {r.name}: {r.secret_hits} messages" for r in self.recorders.values() if r.secret_hits
        ]
        with self.engine.connect() as conn:
            for table in ("pipeline_runs", "order_intents", "trading_orders", "signals"):
                for n in needles:
                    found = conn.execute(
                        text(f"SELECT count(*) FROM {table} t WHERE row_to_json(t)::text LIKE :n"),
                        {"n": f"%{n.decode()}%"},
                    ).scalar_one()
                    if found:
                        hits.append(f"database {table}: {found} rows")
        return hits

    def _scan_redis(self, needles: tuple[bytes, ...]) -> list[str]:
        hits: list[str] = []
        info = self.redis.client().info("keyspace")
        for name in info:
            client = self.redis.client(int(str(name).removeprefix("db")))
            for key in client.scan_iter(count=500):
                blob = key + b"".join(_dump_value(client, key))
                hits += [f"redis {name} key {key[:60]!r}" for n in needles if n in blob]
            client.close()
        return hits

    def signal_count_hint(self) -> str:
        return f"{len(self.symbols)} symbols, {len(self.bad)} with bad data ({', '.join(self.bad)})"


def _dump_value(redis_client: redis.Redis, key: bytes) -> list[bytes]:
    client: Any = redis_client  # redis-py's reply types are unions of everything
    kind = client.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    value: Any
    if kind == "string":
        value = [client.get(key) or b""]
    elif kind == "hash":
        value = [k + v for k, v in client.hgetall(key).items()]
    elif kind == "list":
        value = client.lrange(key, 0, -1)
    elif kind == "set":
        value = list(client.smembers(key))
    elif kind == "zset":
        value = [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
    elif kind == "stream":
        value = [k + v for _, fields in client.xrange(key) for k, v in fields.items()]
    else:
        value = []
    return [v if isinstance(v, bytes) else str(v).encode() for v in value]


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


class _Bomb:
    """Unpickling this creates the marker file (``open(marker, "w")``): proof that pickle ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.marker, "w"))
