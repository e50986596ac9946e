"""Issue 14's end-to-end test: the real exporter, Prometheus and AlertManager around a real minute.

A distributed minute runs on real Redis, PostgreSQL and one worker process per queue. The exporter
runs as users start it (``mlsignals metrics serve``); a real Prometheus scrapes it and evaluates the
committed alert rules; a real AlertManager, with the committed configuration and Telegram
template, delivers to a local server speaking the Telegram Bot API (the only fake: Telegram itself
cannot be reached from here). The test then

* reads the minute's metrics back from Prometheus's HTTP API and compares them with the ledger;
* sends every dashboard panel's PromQL to Prometheus (it must parse) and checks that panels and
  rules name only series the exporter serves;
* stops the inference worker: the next minute cannot publish, the stalled-pipeline and
  inference-worker alerts fire in Prometheus, and the Telegram message arrives with its text.

Only timings differ from production: scrape and evaluation every second, the stall threshold
60 s instead of 180 s, no ``for:`` on the inference worker's alert, and AlertManager's group_wait 1 s.
"""

from __future__ import annotations

import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from celery import Celery
from sqlalchemy import Engine

from core.settings import Settings
from core.timegrid import MINUTE_MS, floor_minute, iso_minute, now_ms
from data import db
from pipeline.clock import minute_dt
from pipeline.ledger import RunLedger
from tests.support.catalogue import CATALOGUE_SERIES
from tests.support.dashboards import dashboard_files, load_dashboard, metric_names, panel_queries, promql
from tests.support.exporter import serving_exporter
from tests.support.models import untrained_registry
from tests.support.prometheus import (
    ALERTMANAGER_TEMPLATE,
    RULES_FILE,
    TELEGRAM_TEMPLATE,
    FakeTelegram,
    RunningPrometheus,
    render_alertmanager_config,
    run_alertmanager,
    run_prometheus,
)
from tests.support.workers import (
    WorkerFleet,
    backfill_live_history,
    celery_client,
    deployment_env,
    running_fleet,
    wait_for_workers,
)
from trading.accounts import ensure_account
from worker.queues import Queue

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_SYMBOLS = 10
STALL_SECONDS = 60
BOT_TOKEN = "4242:test-token"
CHAT_ID = -1001234


@dataclass
class Deployment:
    env: dict[str, str]
    client: Celery
    engine: Engine
    tmp: Path


@pytest.fixture
def deployment(pg_url: str, tmp_path: Path) -> Iterator[Deployment]:
    registry = untrained_registry(tmp_path / "models")
    env = deployment_env(
        pg_url,
        registry.root,
        MLSIG_DATA__UNIVERSE_SIZE=str(N_SYMBOLS),
        MLSIG_PIPELINE__CHANNEL=f"signals-{uuid.uuid4().hex[:8]}",
        MLSIG_PIPELINE__CANDLE_WAIT_SECONDS="0",
        MLSIG_PIPELINE__SYMBOLS_PER_TASK="5",
        MLSIG_ML_INTEGRATION__MONITORING__WORKER_HEARTBEAT_SECONDS="1",
    )
    backfill_live_history(pg_url, N_SYMBOLS, end_lag_minutes=5)
    engine = db.get_engine(pg_url)
    # The paper account exists from the first intent on; created here so that its series exist.
    ensure_account(engine, Settings(database_url=pg_url), "paper", datetime.now(UTC))
    client = celery_client(env, "e2e")
    yield Deployment(env, client, engine, tmp_path)
    client.close()


@pytest.fixture
def exporter_url(deployment: Deployment) -> Iterator[str]:
    """``mlsignals metrics serve`` in its own process, refreshing every half second."""
    with serving_exporter(deployment.env, "--refresh-seconds", "0.5") as address:
        yield address


def shortened_rules(tmp_path: Path) -> Path:
    """The committed rules with the stall threshold and the inference worker's wait shortened."""
    doc = yaml.safe_load(RULES_FILE.read_text())
    changed = 0
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "MLSignalsPipelineStalled":
                rule["expr"] = rule["expr"].replace("> 180", f"> {STALL_SECONDS}")
                changed += 1
            if rule.get("alert") == "MLSignalsWorkersDown" and rule["labels"]["severity"] == "critical":
                rule.pop("for", None)
                changed += 1
    assert changed == 2, "the rules this test shortens were renamed: update the test"
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def prometheus_config(tmp_path: Path, exporter: str, alertmanager: str) -> Path:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(shortened_rules(tmp_path))],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": [{"job_name": "mlsignals", "static_configs": [{"targets": [exporter]}]}],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll an HTTP API until ``check`` returns something truthy (Prometheus has no push channel)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def value(prom: RunningPrometheus, query: str) -> float | None:
    result = prom.query(query)
    return float(result[0]["value"][1]) if result else None


def firing(prom: RunningPrometheus, name: str, **labels: str) -> bool:
    return any(
        a["labels"].get("alertname") == name
        and a["state"] == "firing"
        and all(a["labels"].get(k) == v for k, v in labels.items())
        for a in prom.alerts()
    )


def run_minute(d: Deployment, minute_ms: int) -> dict[str, Any]:
    started = d.client.send_task(
        "tasks.pipeline.run_minute", args=[iso_minute(minute_ms), True], queue=Queue.CONTROL.value
    )
    outcome: dict[str, Any] = started.get(timeout=60)
    return outcome


def served_names(exporter: str) -> set[str]:
    """Every series name the exporter's exposition holds, and gauges and counters declared with no
    sample yet (e.g. no symbol in quarantine)."""
    with urllib.request.urlopen(f"http://{exporter}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    names = {line.split("{")[0].split(" ")[0] for line in samples}
    declared = re.finditer(r"^# TYPE (\S+) (gauge|counter)$", text, re.MULTILINE)
    return names | {found[1] for found in declared}


def test_minute_metrics_dashboards_and_the_stall_alert_end_to_end(
    deployment: Deployment, exporter_url: str, tmp_path: Path
) -> None:
    d = deployment
    with FakeTelegram(token=BOT_TOKEN) as telegram, running_fleet(d.env, d.tmp) as fleet:
        am_config = tmp_path / "alertmanager.yml"
        am_config.write_text(
            render_alertmanager_config(
                ALERTMANAGER_TEMPLATE.read_text(),
                CHAT_ID,
                bot_token=BOT_TOKEN,
                api_url=telegram.url,
                telegram_template=TELEGRAM_TEMPLATE,
                timings={"group_wait": "1s", "group_interval": "1s"},
            )
        )
        with run_alertmanager(am_config, tmp_path / "am") as am:
            config = prometheus_config(tmp_path, exporter_url, am.url.removeprefix("http://"))
            with run_prometheus(config, tmp_path / "prom") as prom:
                wait_for_workers(d.client, fleet)
                minute_ms = check_the_minute(d, prom)
                check_dashboards_and_rules(prom, exporter_url)
                check_the_stall_alert(d, prom, fleet, telegram, minute_ms)


def check_the_minute(d: Deployment, prom: RunningPrometheus) -> int:
    # A minute that started a few seconds ago: its age stays under the stall threshold for a while.
    if time.time() % 60 > 30:
        time.sleep(61 - time.time() % 60)  # the next minute's first second; nothing to await instead
    minute_ms = floor_minute(now_ms())
    outcome = run_minute(d, minute_ms)
    assert outcome["status"] == "running", outcome
    d.client.AsyncResult(str(outcome["result_id"])).get(timeout=90)
    run = RunLedger(d.engine).get(minute_dt(iso_minute(minute_ms)))
    assert run is not None
    assert run.status in ("done", "partial"), run.note

    done = wait_until(
        lambda: value(prom, f'mlsignals_minutes_total{{status="{run.status}"}}') == 1,
        30,
        "the finished minute in Prometheus",
    )
    assert done
    assert value(prom, "mlsignals_symbols_asked_total") == run.symbols_asked == N_SYMBOLS
    assert value(prom, "mlsignals_symbols_ok_total") == run.signals_made
    assert value(prom, "mlsignals_minute_duration_seconds_count") == 1
    assert value(prom, "mlsignals_minute_duration_seconds_sum") == pytest.approx(run.timings["minute_total"])
    forward = value(prom, 'mlsignals_minute_stage_duration_seconds_sum{stage="inference_forward"}')
    assert forward == pytest.approx(run.timings["inference_forward"])
    assert value(prom, "mlsignals_last_success_minute_timestamp_seconds") == minute_ms / 1000
    assert value(prom, "mlsignals_newest_minute_coverage_ratio") == pytest.approx(
        run.signals_made / N_SYMBOLS
    )
    assert value(prom, "sum(mlsignals_signals_total)") == run.signals_made
    assert value(prom, "mlsignals_champion_present") == 1
    for queue in Queue:
        assert value(prom, f'mlsignals_workers_up{{queue="{queue.value}"}}') == 1, queue
    assert value(prom, "mlsignals_exporter_collector_up == 0") is None
    # A fresh deployment is stalled until its first minute succeeds; that minute resolves the alert.
    wait_until(lambda: not firing(prom, "MLSignalsPipelineStalled"), 30, "the stall alert to resolve")
    return minute_ms


def check_dashboards_and_rules(prom: RunningPrometheus, exporter: str) -> None:
    served = served_names(exporter)
    missing = CATALOGUE_SERIES - served
    assert not missing, f"the catalogue names series the exporter does not serve: {sorted(missing)}"
    extra = {name for name in served if name.startswith("mlsignals_")} - CATALOGUE_SERIES
    assert not extra, f"the exporter serves series the catalogue (and docs) lack: {sorted(extra)}"
    rules = yaml.safe_load(RULES_FILE.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            unknown = {n for n in metric_names(rule["expr"]) if n.startswith("mlsignals_")} - served
            assert not unknown, f"{rule.get('alert')}: the exporter serves no {sorted(unknown)}"
    queries = 0
    for path in dashboard_files():
        for title, expr in panel_queries(load_dashboard(path)):
            prom.query(promql(expr))  # raises unless Prometheus parsed and ran it
            unknown = metric_names(expr) - served
            assert not unknown, f"{path.name} / {title}: the exporter serves no {sorted(unknown)}"
            queries += 1
    assert queries >= 30


def check_the_stall_alert(
    d: Deployment, prom: RunningPrometheus, fleet: WorkerFleet, telegram: FakeTelegram, minute_ms: int
) -> None:
    seen = len(telegram.messages)  # messages about the fresh deployment's stall came before
    inference = fleet.workers[Queue.INFERENCE]
    inference.process.terminate()  # a clean shutdown: its heartbeat leaves at once
    inference.process.wait(timeout=30)
    wait_until(
        lambda: value(prom, 'mlsignals_workers_up{queue="inference"}') == 0,
        30,
        "the inference worker's absence",
    )
    wait_until(
        lambda: firing(prom, "MLSignalsWorkersDown", queue="inference", severity="critical"),
        30,
        "workers down",
    )
    # The next minute, once its candles closed, cannot publish without an inference worker.
    next_minute = minute_ms + MINUTE_MS
    time.sleep(max(0.0, next_minute / 1000 - time.time()))  # wall-clock time is what is awaited
    outcome = run_minute(d, next_minute)
    assert outcome["status"] == "running", outcome
    wait_until(lambda: firing(prom, "MLSignalsPipelineStalled"), STALL_SECONDS + 30, "the stall alert")
    run = RunLedger(d.engine).get(minute_dt(iso_minute(next_minute)))
    assert run is not None
    assert run.status == "running"  # its inference task waits for a worker
    assert value(prom, "mlsignals_last_success_minute_timestamp_seconds") == minute_ms / 1000

    message = telegram.wait_for(
        lambda m: (
            any(m is new for new in telegram.messages[seen:])
            and "MLSignalsPipelineStalled" in m["text"]
            and "FIRING" in m["text"]
        ),
        timeout=60,
    )
    assert message["chat_id"] == CHAT_ID
    assert message["parse_mode"] == "HTML"
    assert "No minute of the pipeline has succeeded" in message["text"]
    assert "docs/MONITORING.md#mlsignalspipelinestalled" in message["text"]
