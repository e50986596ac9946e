"""The chaos suite (issue 11, item 6): single faults against the real distributed deployment.

Each broker's deployment (tests/chaos/harness.py) runs one campaign: a warm-up minute, then the
fault scenarios one per minute, back to back, each followed by a clean minute, while the background
conditions (two symbols with bad data, slow readers, a durable reader offline for 5 minutes) hold
throughout. The two deployments run in parallel. Every (broker, scenario) pair is one test, judged
on the campaign's counts: no duplicated signal, order or fill; no lost minute unless the fault
outlasts the minute's deadline, and then the minute is recorded (ledger ``missed``/``failed``/
``skipped_late`` with a reason) and announced (heartbeat); every worker alive at the end.

``pytest`` runs the CI subset (marker ``chaos_ci``, Redis deployment, about 10 minutes); ``make
chaos`` runs everything (marker ``chaos``, MLSIG_CHAOS_FULL=1, about 29 minutes). The summary tables
go to var/chaos/summary-<broker>.md and docs/RELIABILITY.md explains them.
"""

from __future__ import annotations

import re
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.chaos.harness import (
    FINISHED,
    RECORDED,
    SUMMARIES,
    VAR,
    Deployment,
    MinuteRow,
    minute_start,
    sleep_until,
    stamp,
)
from worker.queues import Queue

BROKERS = ("redis", "rabbitmq")
CAMPAIGN_TIMEOUT_S = 45 * 60


@dataclass
class Outcome:
    note: str
    problems: list[str] = field(default_factory=list)


Act = Callable[[Deployment, float], Outcome]


@dataclass(frozen=True)
class Scenario:
    name: str
    does: str  # one line for the tables and docs/RELIABILITY.md
    act: Act | None = None  # None: a background condition, judged over the whole campaign
    minutes: int = 1  # minutes the fault touches, from the scenario's minute on
    settle: int = 1  # clean minutes after it
    lead_s: float = 5.0  # the act starts this long before the scenario's minute
    may_lose: bool = False  # the fault outlasts the minute's deadline: its minutes may be lost if recorded


def _never(what: str) -> Outcome:
    return Outcome("trigger not seen", [f"{what} never happened: the fault was not injected"])


def inference_kill(d: Deployment, t: float) -> Outcome:
    if not d.wait_run(t, t + 45, stage="inference"):
        return _never("predict_batch started")
    d.kill_worker(Queue.INFERENCE)
    return Outcome(f"kill -9 at {stamp()} as predict_batch started ({d.progress(t)}); restarted at once")


def pg_terminate(d: Deployment, t: float) -> Outcome:
    if not d.wait_run(t, t + 45, stage="publish"):
        return _never("publish started")
    began = stamp()
    killed = d.terminate_pg(1.5)
    return Outcome(f"{killed} backends terminated in a 1.5 s loop from {began}, as publish started")


def broker_restart(d: Deployment, t: float) -> Outcome:
    if not d.wait_run(t, t + 45):
        return _never("the minute dispatched")
    time.sleep(0.03)  # the chunks are running: 20-40 ms after the dispatch, for about 150 ms
    began = stamp()
    took = d.restart_broker()
    return Outcome(
        f"{d.broker} killed at {began}, up again after {took:.1f} s; the feature chunks were running"
    )


def broker_restart_twice(d: Deployment, t: float) -> Outcome:
    if not d.wait_run(t, t + 45):
        return _never("the minute dispatched")
    time.sleep(0.03)
    first = time.time()
    d.restart_broker()
    sleep_until(first + 5)
    second = time.time()
    d.restart_broker()
    return Outcome(f"{d.broker} killed and restarted at {stamp(first)}, again {second - first:.1f} s later")


def beat_down(minutes: int) -> Act:
    def act(d: Deployment, t: float) -> Outcome:
        sleep_until(t - 20)
        d.stop_beat()
        down = time.time()
        sleep_until(t + minutes * 60 - 20)
        d.start_beat()
        return Outcome(f"beat stopped {stamp(down)}, started again {stamp()} (same schedule file)")

    return act


def signals_kill(d: Deployment, t: float) -> Outcome:
    if not (d.wait_run(t, t + 45, stage="publish") and d.wait_rows("signals", t, t + 45)):
        return _never("signals stored by publish")
    d.kill_worker(Queue.SIGNALS)
    return Outcome(f"kill -9 at {stamp()} once publish had stored the signals ({d.progress(t)}); restarted")


def orders_kill(d: Deployment, t: float) -> Outcome:
    if not d.wait_rows("order_intents", t, t + 45):
        return _never("an order intent stored")
    d.kill_worker(Queue.ORDERS)
    return Outcome(f"kill -9 at {stamp()} once the first intent was stored ({d.progress(t)}); restarted")


def pg_terminate_orders(d: Deployment, t: float) -> Outcome:
    if not d.wait_rows("order_intents", t, t + 45):
        return _never("an order intent stored")
    began = stamp()
    killed = d.terminate_pg(1.5)
    return Outcome(
        f"{killed} backends terminated in a 1.5 s loop from {began}, as the first intent was stored"
    )


def two_beats(d: Deployment, t: float) -> Outcome:
    sleep_until(t - 20)
    second = d.start_beat(second=True)
    sleep_until(t + 3 * 60 - 20)
    d.stop_beat(second)
    sent = len(re.findall(rb"Sending due task run-minute", d.beat_logs[-1].read_bytes()))
    problems = [] if sent >= 3 else [f"the second beat sent run_minute {sent} times (wanted 3)"]
    return Outcome(
        f"second beat (own schedule file) {stamp(t - 20)} to {stamp()}: {sent} run_minute sent", problems
    )


def pickle_messages(d: Deployment, t: float) -> Outcome:
    sleep_until(t + 20)
    marker = d.send_pickles()
    time.sleep(10)
    problems = []
    if marker.exists():
        problems.append("a pickle payload was deserialised: the marker file exists")
    if not d.wait_workers(timeout=20):
        problems.append("not every queue's worker answers ping after the pickle messages")
    return Outcome(f"pickle task messages to all {len(Queue)} queues at {stamp(t + 20)}", problems)


SCENARIOS: list[Scenario] = [
    Scenario(
        "inference_kill",
        "kill -9 of the inference worker right after predict_batch was received",
        inference_kill,
    ),
    Scenario(
        "pg_terminate",
        "every PostgreSQL connection to the chaos database terminated for 1.5 s while publish runs",
        pg_terminate,
    ),
    Scenario("broker_restart", "the broker restarted while a feature chunk runs", broker_restart),
    Scenario("beat_down_2", "beat down for 2 minutes", beat_down(2), minutes=2, lead_s=25, may_lose=True),
    Scenario("beat_down_3", "beat down for 3 minutes", beat_down(3), minutes=3, lead_s=25, may_lose=True),
    Scenario(
        "signals_kill",
        "kill -9 of the signals worker mid-publish (signals stored, not yet all published)",
        signals_kill,
    ),
    Scenario("orders_kill", "kill -9 of the orders worker mid-execution (first intent stored)", orders_kill),
    Scenario(
        "pg_terminate_orders",
        "every PostgreSQL connection terminated for 1.5 s once the first order intent is stored",
        pg_terminate_orders,
    ),
    Scenario("two_beats", "two beats for 3 minutes", two_beats, minutes=3, lead_s=25),
    Scenario(
        "broker_restart_twice",
        "the broker restarted twice within 10 s (during a feature chunk)",
        broker_restart_twice,
    ),
    Scenario(
        "pickle",
        "raw pickle-serialised task messages sent to every queue",
        pickle_messages,
        settle=0,
        lead_s=0,
    ),
    # Background conditions and end-of-run checks, judged over the whole campaign.
    Scenario("bad_data", "a 4-hour hole in one symbol's candles, a NaN candle in another's (whole run)"),
    Scenario(
        "slow_subscriber",
        "readers handling one message per 1.5 s (whole run): durable 0 lost; pub/sub reported",
    ),
    Scenario("offline_subscriber", "a durable reader offline for 5 minutes (during the beat scenarios)"),
    Scenario(
        "no_secrets",
        "the fake exchange keys searched in logs, every private-Redis key and value, results, messages",
    ),
]
BY_NAME = {s.name: s for s in SCENARIOS}
CI = {"inference_kill", "pg_terminate", "broker_restart", "pickle", "no_secrets"}


def _params() -> list[Any]:
    out = []
    for broker in BROKERS:
        for scenario in SCENARIOS:
            ci = broker == "redis" and scenario.name in CI
            marks = [pytest.mark.chaos, pytest.mark.chaos_ci if ci else pytest.mark.chaos_full]
            out.append(pytest.param(broker, scenario.name, marks=marks, id=f"{broker}-{scenario.name}"))
    return out


@dataclass
class Result:
    name: str
    passed: bool = False
    note: str = ""
    problems: list[str] = field(default_factory=list)
    rows: list[MinuteRow] = field(default_factory=list)


class Campaign:
    """One deployment's timeline: warm-up minute, the selected scenarios, then the judgement."""

    def __init__(self, broker: str, names: set[str]) -> None:
        self.broker = broker
        self.scenarios = [s for s in SCENARIOS if s.name in names and s.act is not None]
        self.names = names
        self.results: dict[str, Result] = {n: Result(n) for n in names}
        self.error: str | None = None
        self.summary = ""
        self.wall_s = 0.0

    def run(self) -> None:
        began = time.time()
        d = Deployment(self.broker)
        try:
            d.start()
            self._timeline(d)
        except Exception:  # noqa: BLE001 - the campaign thread's boundary: the traceback is
            # reported by the test in the main thread (and the deployment still stopped)
            self.error = traceback.format_exc()
        finally:
            try:
                d.stop()
            finally:
                self.wall_s = time.time() - began
                if self.summary:
                    path = VAR / f"summary-{self.broker}.md"
                    path.write_text(
                        self.summary + f"\nWall clock of the campaign: {self.wall_s / 60:.1f} min.\n"
                    )
                    SUMMARIES.append(path)

    def _timeline(self, d: Deployment) -> None:
        warmup = minute_start(time.time()) + 60
        starts: dict[str, float] = {}
        t = warmup + 60
        for scenario in self.scenarios:
            starts[scenario.name] = t
            t += (scenario.minutes + scenario.settle) * 60
        end = t  # the first minute after the campaign
        if "offline_subscriber" in self.names:
            begin = starts.get("beat_down_2", warmup + 60) - 30
            d.add_offline_reader((begin, begin + 300))
        for recorder in d.recorders.values():
            recorder.since = datetime.fromtimestamp(warmup, UTC)
        outcomes: dict[str, Outcome] = {}
        for scenario in self.scenarios:
            at = starts[scenario.name]
            sleep_until(at - scenario.lead_s)
            assert scenario.act is not None
            try:
                outcome = scenario.act(d, at)
            except Exception as exc:  # noqa: BLE001 - a failed act is a finding of its scenario,
                # and the campaign goes on to the next one
                outcome = Outcome("the act failed", [f"{type(exc).__name__}: {exc}"])
            d.log(f"{scenario.name}: {outcome.note}")
            sleep_until(at + scenario.minutes * 60 + 20)
            dead = d.dead_workers()
            outcome.problems += [f"died: {w}" for w in dead]
            if not d.wait_workers(timeout=10):
                outcome.problems.append("not every queue's worker answers ping")
            outcomes[scenario.name] = outcome
        sleep_until(end + 5)  # the last minute's fills come with the next minute's tick
        for name in ("pubsub-slow", "stream-slow", "stream-offline", "pubsub", "stream"):
            if name in d.recorders:
                d.recorders[name].drain()
        rows = self._rows(d, warmup, starts)
        self._judge(d, rows, starts, outcomes, warmup, end - 60)
        self.summary = _render(d, self, rows, warmup, end - 60)

    def _rows(self, d: Deployment, warmup: float, starts: dict[str, float]) -> list[MinuteRow]:
        rows = [d.minute_row(warmup, "warm-up", "warmup")]
        for scenario in self.scenarios:
            at = starts[scenario.name]
            for i in range(scenario.minutes + scenario.settle):
                role = "fault" if i < scenario.minutes else "settle"
                rows.append(d.minute_row(at + 60 * i, scenario.name, role))
        for row in rows:
            owner = BY_NAME.get(row.scenario)
            row.problems = _minute_problems(row, bool(owner and owner.may_lose and row.role == "fault"))
        return rows

    def _judge(
        self,
        d: Deployment,
        rows: list[MinuteRow],
        starts: dict[str, float],
        outcomes: dict[str, Outcome],
        first: float,
        last: float,
    ) -> None:
        for scenario in self.scenarios:
            result = self.results[scenario.name]
            outcome = outcomes[scenario.name]
            result.note = outcome.note
            result.rows = [r for r in rows if r.scenario == scenario.name]
            result.problems = outcome.problems + [
                f"{r.minute:%H:%M} {p}" for r in result.rows for p in r.problems
            ]
        for name in self.names - set(starts):
            result = self.results[name]
            if name == "bad_data":
                result.note, result.problems = _bad_data(d, rows)
            elif name in ("slow_subscriber", "offline_subscriber"):
                reader = "stream-slow" if name == "slow_subscriber" else "stream-offline"
                durable = d.reader_report(reader, first, last)
                result.problems = [
                    f"{reader}: {durable[key]} {what}"
                    for key, what in (("lost", "signals lost"), ("duplicates", "duplicates"))
                    if durable[key]
                ]
                if name == "offline_subscriber" and not durable["was_offline"]:
                    result.problems.append("the reader was never offline")
                pubsub = d.reader_report("pubsub-slow", first, last)
                result.note = (
                    f"durable: {durable['received']}/{durable['stored']} received, {durable['lost']} lost"
                    + (f"; slow pub/sub lost {pubsub['lost']}" if name == "slow_subscriber" else "")
                )
            elif name == "no_secrets":
                hits = d.scan_secrets()
                result.note = f"{len(hits)} hits"
                result.problems = hits[:20]
        for result in self.results.values():
            result.passed = not result.problems


def _minute_problems(row: MinuteRow, may_lose: bool) -> list[str]:
    problems = [f"{row.duplicates} duplicates"] if row.duplicates else []
    if row.status in FINISHED:
        if row.written < row.expected:
            problems.append(f"{row.expected - row.written} signals lost")
        if not row.heartbeat:
            problems.append("no heartbeat")
        if row.stream < row.written:
            problems.append(f"{row.written - row.stream} signals missing from the stream")
        if row.intents < row.actionable:
            problems.append(f"{row.actionable - row.intents} order intents missing")
    elif row.status in RECORDED:
        if not may_lose:
            problems.append(f"minute lost ({row.status})")
        if not row.note:
            problems.append("no reason recorded")
        if not row.heartbeat:
            problems.append("not announced (no heartbeat)")
    else:
        problems.append(f"minute lost, ledger status {row.status!r}")
    if row.undecided:
        problems.append(f"{row.undecided} order intents never decided (still received)")
    return problems


def _bad_data(d: Deployment, rows: list[MinuteRow]) -> tuple[str, list[str]]:
    bad = set(d.bad)
    problems: list[str] = []
    finished = [r for r in rows if r.status in FINISHED]
    for r in finished:
        failed = set(r.failures)
        if failed - bad:
            problems.append(f"{r.minute:%H:%M} good symbols failed: {sorted(failed - bad)}")
        if bad - failed:
            problems.append(f"{r.minute:%H:%M} bad symbols not failed: {sorted(bad - failed)}")
        if r.status != "partial":
            problems.append(f"{r.minute:%H:%M} status {r.status}, expected partial")
    reasons = sorted({f"{s}: {why}" for r in finished for s, why in r.failures.items() if s in bad})
    return f"{len(finished)} finished minutes; reasons: {'; '.join(reasons[:4])}", problems


def _render(d: Deployment, c: Campaign, rows: list[MinuteRow], first: float, last: float) -> str:
    out = [
        f"## {c.broker} deployment",
        "",
        f"{d.signal_count_hint()}; minutes {stamp(first)[:5]} to {stamp(last)[:5]} UTC; "
        f"broker {d.broker}, results and pub/sub on the private Redis.",
        "",
        "| scenario | result | what the harness did / measured | problems |",
        "|---|---|---|---|",
    ]
    for name, result in c.results.items():
        verdict = "PASS" if result.passed else "FAIL"
        problems = "; ".join(result.problems[:6]) + (" …" if len(result.problems) > 6 else "")
        out.append(f"| {name} | {verdict} | {_cell(result.note)} | {_cell(problems)} |")
    out += [
        "",
        "| minute | scenario | role | exp | written | dup | pub/sub | stream | hb | actionable | intents "
        "| orders | fills | ledger | att | s | note / problems |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        remark = "; ".join([*(f"**{p}**" for p in r.problems), *([r.note] if r.note else [])])
        out.append(
            f"| {r.minute:%H:%M} | {r.scenario} | {r.role} | {r.expected} | {r.written} | {r.duplicates} "
            f"| {r.pubsub} | {r.stream} | {'yes' if r.heartbeat else 'no'} | {r.actionable} | {r.intents} "
            f"| {r.orders} | {r.fills} | {r.status} | {'-' if r.attempts is None else r.attempts} "
            f"| {'-' if r.seconds is None else f'{r.seconds:.1f}'} | {_cell(remark)} |"
        )
    out += [
        "",
        "| reader | durable | received | stored | lost | dup | reconnects |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in d.recorders:
        rep = d.reader_report(name, first, last)
        out.append(
            f"| {name} | {'yes' if rep['durable'] else 'no'} | {rep['received']} | {rep['stored']} "
            f"| {rep['lost']} | {rep['duplicates']} | {rep['reconnects']} |"
        )
    out += ["", "Harness log:", "", *[f"    {e}" for e in d.events], ""]
    return "\n".join(out)


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")[:300]


@pytest.fixture(scope="module")
def campaigns(request: pytest.FixtureRequest) -> dict[str, Campaign]:
    """Runs the campaign of every broker that a selected, not skipped test needs, in parallel."""
    wanted: dict[str, set[str]] = {}
    for item in request.session.items:
        spec = getattr(item, "callspec", None)
        if spec is None or item.get_closest_marker("skip") or "chaos" not in item.keywords:
            continue
        wanted.setdefault(spec.params["broker"], set()).add(spec.params["name"])
    runs = {broker: Campaign(broker, names) for broker, names in wanted.items()}
    threads = [threading.Thread(target=c.run, name=f"campaign-{b}") for b, c in runs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return runs


@pytest.mark.timeout(CAMPAIGN_TIMEOUT_S)
@pytest.mark.parametrize(("broker", "name"), _params())
def test_chaos(campaigns: dict[str, Campaign], broker: str, name: str) -> None:
    campaign = campaigns[broker]
    assert campaign.error is None, campaign.error
    result = campaign.results[name]
    assert result.passed, f"{name} on {broker} ({result.note}): " + "; ".join(result.problems)
