"""The Prometheus rules and the AlertManager configuration of deploy/, checked with the real tools.

promtool validates the Prometheus config and the rules and runs the rules' unit tests
(deploy/prometheus/tests); the rules are checked against the project's conventions and the metric
catalogue; a real AlertManager 0.25 loads the rendered configuration, applies the inhibitions and
delivers a Telegram message (rendered by deploy/alertmanager/telegram.tmpl) to a fake Bot API.
The binaries come from scripts/ensure-services.sh: without them these tests fail, they never skip.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.catalogue import CATALOGUE_SERIES
from tests.support.prometheus import (
    ALERTMANAGER_TEMPLATE,
    PROMETHEUS_CONFIG,
    RULE_TESTS_DIR,
    RULES_FILE,
    TELEGRAM_TEMPLATE,
    FakeTelegram,
    RunningAlertmanager,
    poll,
    render_alertmanager_config,
    run_alertmanager,
    run_prometheus,
    run_tool,
)

RUNBOOK_PREFIX = "https://github.com/mlsignals/mlsignals/blob/main/docs/MONITORING.md#"
SEVERITIES = {"critical", "warning"}
SUBSYSTEMS = {"pipeline", "data", "model", "trading", "queues"}
REQUIRED_ANNOTATIONS = {"summary", "description", "action", "runbook_url"}
# The alerts a stalled pipeline causes by itself (AlertManager inhibits them while it fires).
STALL_CHILDREN = {
    "MLSignalsMinutesFailing",
    "MLSignalsCoverageLow",
    "MLSignalsMinuteOverBudget",
    "MLSignalsQueueBackingUp",
}
SERIES_NAME = re.compile(r"\bmlsignals_[a-z_]+")
TOKEN = "123:abc"
CHAT_ID = -100123


@dataclass(frozen=True)
class AlertRule:
    group: str
    alert: str
    expr: str
    labels: dict[str, str]
    annotations: dict[str, str]


def _alert_rules() -> list[AlertRule]:
    document = yaml.safe_load(RULES_FILE.read_text())
    return [
        AlertRule(
            group["name"],
            rule["alert"],
            rule["expr"],
            rule.get("labels") or {},
            rule.get("annotations") or {},
        )
        for group in document["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def _rule_test_files() -> list[Path]:
    return sorted(RULE_TESTS_DIR.glob("*.yml"))


def _rule_test_cases() -> Iterator[dict[str, Any]]:
    """Every alert_rule_test case of every unit test file."""
    for path in _rule_test_files():
        for test in yaml.safe_load(path.read_text())["tests"]:
            yield from test.get("alert_rule_test") or []


ALERT_RULES = _alert_rules()
ALERT_NAMES = sorted({rule.alert for rule in ALERT_RULES})


def _assert_tool_ok(tool: str, *args: str | Path) -> str:
    result = run_tool(tool, *args)
    assert result.returncode == 0, f"{tool} {' '.join(map(str, args))} failed:\n{result.stdout}"
    return result.stdout


# --- Prometheus: promtool -------------------------------------------------------------------------


def test_promtool_is_the_expected_version() -> None:
    # Debian bookworm ships 2.42; any 2.x reads these files (compose runs 2.53).
    assert "version 2." in _assert_tool_ok("promtool", "--version")


def test_prometheus_config_and_its_rule_files_are_valid() -> None:
    output = _assert_tool_ok("promtool", "check", "config", PROMETHEUS_CONFIG)
    # The rules file is named relative to the config: check config found and checked it.
    assert "1 rule files found" in output, output
    rules = sum(len(group["rules"]) for group in yaml.safe_load(RULES_FILE.read_text())["groups"])
    assert f"{rules} rules found" in output, output


def test_prometheus_config_scrapes_the_exporters_and_sends_to_alertmanager() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["global"]["scrape_interval"] == "15s"
    assert config["global"]["evaluation_interval"] == "15s"
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert targets == {"mlsignals": ["metrics:9500"], "celery": ["celery-exporter:9808"]}
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    assert (PROMETHEUS_CONFIG.parent / config["rule_files"][0]).resolve() == RULES_FILE.resolve()


def test_rules_are_valid() -> None:
    _assert_tool_ok("promtool", "check", "rules", RULES_FILE)


def test_rule_unit_tests_pass() -> None:
    files = _rule_test_files()
    assert files, f"no unit tests in {RULE_TESTS_DIR}"
    _assert_tool_ok("promtool", "test", "rules", *files)


def test_prometheus_loads_the_config_and_rules(tmp_path: Path) -> None:
    # The server's own loader, as deployed: the rules file is found relative to the config.
    with run_prometheus(PROMETHEUS_CONFIG, tmp_path) as prom:
        loaded = {rule["name"] for group in prom.rules() for rule in group["rules"]}
        # Static targets appear shortly after /-/ready.
        jobs = poll(
            lambda: {t["labels"]["job"] for t in prom.targets()} or None, timeout=20, what="scrape targets"
        )
        assert prom.query("vector(1)")[0]["value"][1] == "1"
    assert loaded == set(ALERT_NAMES)
    assert jobs == {"mlsignals", "celery"}


# --- Rules: conventions, coverage and the catalogue -------------------------------------------------


@pytest.mark.parametrize("rule", ALERT_RULES, ids=lambda r: f"{r.alert}-{r.labels.get('severity')}")
def test_every_alert_has_labels_and_annotations(rule: AlertRule) -> None:
    assert re.fullmatch(r"MLSignals[A-Za-z0-9]+", rule.alert), rule.alert
    assert rule.labels.get("severity") in SEVERITIES, rule.labels
    assert rule.labels.get("subsystem") in SUBSYSTEMS, rule.labels
    missing = REQUIRED_ANNOTATIONS - {key for key, value in rule.annotations.items() if value.strip()}
    assert not missing, f"{rule.alert} lacks annotations {sorted(missing)}"
    assert rule.annotations["runbook_url"] == RUNBOOK_PREFIX + rule.alert.lower()
    # Telegram's HTML parse mode: the message template escapes values, but markup in an annotation
    # would arrive as visible "&lt;b&gt;".
    for value in rule.annotations.values():
        assert not re.search(r"[<>&]", re.sub(r"{{.*?}}", "", value)), value


def test_stall_consequences_are_inhibitable() -> None:
    marked = {rule.alert for rule in ALERT_RULES if rule.labels.get("inhibited_by_stall") == "true"}
    assert marked == STALL_CHILDREN


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for case in _rule_test_cases():
        (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    assert not (firing | silent) - set(ALERT_NAMES), "unit tests name alerts that no rule defines"
    assert set(ALERT_NAMES) - firing == set(), "alerts without a firing unit test"
    assert set(ALERT_NAMES) - silent == set(), "alerts without a silent unit test"


def test_every_severity_of_an_alert_fires_in_a_unit_test() -> None:
    defined = {(rule.alert, rule.labels["severity"]) for rule in ALERT_RULES}
    fired = {
        (case["alertname"], alert["exp_labels"]["severity"])
        for case in _rule_test_cases()
        for alert in case.get("exp_alerts") or []
    }
    assert defined - fired == set()


def test_rules_use_only_catalogue_series() -> None:
    used: dict[str, set[str]] = {}
    for rule in ALERT_RULES:
        # Annotations run queries too (thresholds, top reasons).
        for text in (rule.expr, *rule.annotations.values()):
            for name in SERIES_NAME.findall(text):
                used.setdefault(name, set()).add(rule.alert)
    assert used, "no mlsignals_* series found in the rules"
    unknown = {name: sorted(alerts) for name, alerts in used.items() if name not in CATALOGUE_SERIES}
    assert not unknown, f"series not in the metric catalogue: {unknown}"


def test_unit_tests_feed_only_catalogue_series() -> None:
    # A unit test fed a misspelt series proves nothing about the rule that reads the real one.
    for path in _rule_test_files():
        for test in yaml.safe_load(path.read_text())["tests"]:
            for series in test.get("input_series") or []:
                name = series["series"].split("{", 1)[0].strip()
                assert name == "up" or name in CATALOGUE_SERIES, f"{path.name}: {name}"


# --- AlertManager: configuration ---------------------------------------------------------------------


def test_amtool_is_the_expected_version() -> None:
    # Debian bookworm ships 0.25 (no bot_token_file: the tests render bot_token instead).
    assert "version 0." in _assert_tool_ok("amtool", "--version")


def test_template_keeps_the_token_out() -> None:
    text = ALERTMANAGER_TEMPLATE.read_text()
    assert "bot_token_file: /run/secrets/telegram_bot_token" in text
    assert not re.search(r"^\s*bot_token\s*:", text, re.MULTILINE), "a literal bot_token in the template"
    assert not re.search(r"\b\d{6,}:[A-Za-z0-9_-]{20,}\b", text), "something that looks like a bot token"
    # The container's sed replaces this exact, unquoted placeholder with an integer.
    assert re.search(r"^\s*(- )?chat_id: __TELEGRAM_CHAT_ID__$", text, re.MULTILINE)


def test_render_substitutes_chat_id_token_and_api_url() -> None:
    text = render_alertmanager_config(
        ALERTMANAGER_TEMPLATE.read_text(), CHAT_ID, bot_token=TOKEN, api_url="http://127.0.0.1:1"
    )
    config = yaml.safe_load(text)
    telegram = [tc for receiver in config["receivers"] for tc in receiver["telegram_configs"]]
    assert len(telegram) == 2
    for entry in telegram:
        assert entry["chat_id"] == CHAT_ID
        assert entry["bot_token"] == TOKEN
        assert entry["api_url"] == "http://127.0.0.1:1"
        assert "bot_token_file" not in entry
        assert entry["parse_mode"] == "HTML"
        assert entry["send_resolved"] is True
        assert entry["message"] == '{{ template "mlsignals.telegram.message" . }}'


def test_render_without_token_keeps_the_secret_file() -> None:
    text = render_alertmanager_config(ALERTMANAGER_TEMPLATE.read_text(), 42)
    assert "bot_token_file: /run/secrets/telegram_bot_token" in text
    assert "__TELEGRAM_CHAT_ID__" not in text
    with pytest.raises(TypeError):
        render_alertmanager_config(ALERTMANAGER_TEMPLATE.read_text(), "42")  # type: ignore[arg-type]


def _write_rendered_config(directory: Path, api_url: str, **timings: str) -> Path:
    text = render_alertmanager_config(
        ALERTMANAGER_TEMPLATE.read_text(),
        CHAT_ID,
        bot_token=TOKEN,
        api_url=api_url,
        telegram_template=TELEGRAM_TEMPLATE,
        timings=timings,
    )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "alertmanager.yml"
    path.write_text(text)
    return path


def test_amtool_accepts_the_rendered_config(tmp_path: Path) -> None:
    config = _write_rendered_config(tmp_path, "http://127.0.0.1:1")
    output = _assert_tool_ok("amtool", "check-config", config)
    for found in ("3 inhibit rules", "2 receivers", "1 templates"):
        assert found in output, output


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (
            {"alertname": "MLSignalsKillSwitchEngaged", "severity": "critical", "subsystem": "trading"},
            "telegram-critical",
        ),
        ({"alertname": "MLSignalsStaleData", "severity": "warning", "subsystem": "data"}, "telegram-warning"),
    ],
)
def test_routes_by_severity(tmp_path: Path, labels: dict[str, str], receiver: str) -> None:
    config = _write_rendered_config(tmp_path, "http://127.0.0.1:1")
    pairs = [f"{key}={value}" for key, value in labels.items()]
    output = _assert_tool_ok("amtool", "config", "routes", "test", f"--config.file={config}", *pairs)
    assert output.strip().splitlines()[-1] == receiver  # after a warning line about --alertmanager.url


def test_route_timings() -> None:
    route = yaml.safe_load(ALERTMANAGER_TEMPLATE.read_text())["route"]
    assert route["group_by"] == ["alertname", "subsystem"]
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == ("30s", "5m", "4h")
    repeat = {r["matchers"][0]: r["repeat_interval"] for r in route["routes"]}
    assert repeat == {'severity="critical"': "1h", 'severity="warning"': "4h"}


# --- AlertManager: a real one, a fake Telegram -----------------------------------------------------


def _firing_case(alertname: str) -> dict[str, Any]:
    """Labels and annotations of the first firing unit-test case of ``alertname``: what Prometheus
    sends for it (promtool has checked they are what the rule renders)."""
    for case in _rule_test_cases():
        if case["alertname"] == alertname and case.get("exp_alerts"):
            expected = case["exp_alerts"][0]
            return {
                "labels": {"alertname": alertname, **expected["exp_labels"]},
                "annotations": dict(expected["exp_annotations"]),
            }
    raise AssertionError(f"no firing unit test for {alertname}")


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@pytest.fixture
def telegram() -> Iterator[FakeTelegram]:
    with FakeTelegram(token=TOKEN) as fake:
        yield fake


@pytest.fixture
def alertmanager(tmp_path: Path, telegram: FakeTelegram) -> Iterator[RunningAlertmanager]:
    # Seconds instead of minutes: the test waits for the first notification and for the resolved one.
    config = _write_rendered_config(tmp_path, telegram.url, group_wait="1s", group_interval="1s")
    with run_alertmanager(config, tmp_path / "am") as am:
        yield am


def _has(alertname: str, status: str) -> Callable[[dict[str, Any]], bool]:
    return lambda message: alertname in message["text"] and status in message["text"]


def test_alertmanager_sends_the_kill_switch_alert_to_telegram(
    alertmanager: RunningAlertmanager, telegram: FakeTelegram
) -> None:
    alert = _firing_case("MLSignalsKillSwitchEngaged")
    alertmanager.post_alerts([alert])

    assert telegram.received.wait(timeout=30), (
        f"nothing reached Telegram; AlertManager log:\n{alertmanager.daemon.log_tail()}"
    )
    message = telegram.wait_for(_has("MLSignalsKillSwitchEngaged", "FIRING"))
    assert message["chat_id"] == CHAT_ID
    assert message["parse_mode"] == "HTML"
    text = message["text"]
    assert text.strip()
    annotations = alert["annotations"]
    for expected in (
        "MLSignalsKillSwitchEngaged",
        "critical",
        annotations["summary"],
        annotations["description"],
        annotations["action"],
        f'<a href="{annotations["runbook_url"]}">',
        "account: <code>live</code>",
        "reason: <code>daily_loss_limit</code>",
    ):
        assert expected in text, f"{expected!r} not in the message:\n{text}"
    assert "<br" not in text
    assert not telegram.refused


def test_alertmanager_sends_resolved(alertmanager: RunningAlertmanager, telegram: FakeTelegram) -> None:
    alert = _firing_case("MLSignalsNoChampion")
    started = datetime.now(UTC) - timedelta(minutes=5)
    alertmanager.post_alerts([{**alert, "startsAt": _iso(started)}])
    telegram.wait_for(_has("MLSignalsNoChampion", "FIRING"))

    alertmanager.post_alerts([{**alert, "startsAt": _iso(started), "endsAt": _iso(datetime.now(UTC))}])
    message = telegram.wait_for(_has("MLSignalsNoChampion", "RESOLVED"))
    assert "✅" in message["text"]


def test_telegram_message_escapes_html(alertmanager: RunningAlertmanager, telegram: FakeTelegram) -> None:
    # Telegram refuses a message with a bare "<" or "&" ("can't parse entities"): values are escaped.
    alert = _firing_case("MLSignalsMinutesFailing")
    alert["annotations"]["description"] = "p99 < budget & queue <inference>"
    alertmanager.post_alerts([alert])
    text = telegram.wait_for(_has("MLSignalsMinutesFailing", "FIRING"))["text"]
    assert "p99 &lt; budget &amp; queue &lt;inference&gt;" in text


def test_a_group_of_alerts_is_one_message(alertmanager: RunningAlertmanager, telegram: FakeTelegram) -> None:
    base = _firing_case("MLSignalsQueueBackingUp")
    alerts = [
        {"labels": {**base["labels"], "queue": queue}, "annotations": base["annotations"]}
        for queue in ("orders", "signals")
    ]
    alertmanager.post_alerts(alerts)
    text = telegram.wait_for(lambda m: "2 × MLSignalsQueueBackingUp" in m["text"])["text"]
    assert "queue: <code>orders</code>" in text
    assert "queue: <code>signals</code>" in text


def test_a_large_group_stays_within_telegram_limits(
    alertmanager: RunningAlertmanager, telegram: FakeTelegram
) -> None:
    # AlertManager 0.25-0.27 cut a message at 4096 runes, tags included: a cut tag is refused by
    # Telegram for ever. Every collector failing at once is the largest group the rules make.
    base = _firing_case("MLSignalsExporterCollectorFailing")
    collectors = ("ledger", "data", "trading", "model", "quality", "queues", "stream")  # exporter.COLLECTORS
    alerts = [
        {"labels": {**base["labels"], "collector": c}, "annotations": base["annotations"]} for c in collectors
    ]
    alertmanager.post_alerts(alerts)
    text = telegram.wait_for(lambda m: "7 × MLSignalsExporterCollectorFailing" in m["text"])["text"]
    assert len(text) < 4096
    assert text.count("<b>FIRING</b>") == 5
    assert "7 alerts in all" in text


def _states(am: RunningAlertmanager) -> dict[tuple[str, str, str], str]:
    return {
        (a["labels"]["alertname"], a["labels"]["severity"], a["labels"].get("queue", "")): a["status"][
            "state"
        ]
        for a in am.alerts()
    }


def _wait_for_states(
    am: RunningAlertmanager, expected: dict[tuple[str, str, str], str], timeout: float = 20
) -> None:
    # The inhibitor learns about source alerts asynchronously: poll the API until it agrees.
    try:
        poll(lambda: _states(am) == expected, timeout=timeout, what="alert states")
    except TimeoutError:
        raise AssertionError(f"alert states {_states(am)}, expected {expected}") from None


def _alert(alertname: str, severity: str, **labels: str) -> dict[str, Any]:
    return {
        "labels": {"alertname": alertname, "severity": severity, **labels},
        "annotations": {"summary": alertname},
    }


@pytest.mark.parametrize(
    ("alerts", "expected"),
    [
        pytest.param(
            [
                _alert("MLSignalsPipelineStalled", "critical", subsystem="pipeline"),
                _alert("MLSignalsCoverageLow", "warning", subsystem="pipeline", inhibited_by_stall="true"),
                _alert(
                    "MLSignalsQueueBackingUp",
                    "warning",
                    subsystem="queues",
                    inhibited_by_stall="true",
                    queue="orders",
                ),
                _alert("MLSignalsNoChampion", "critical", subsystem="model"),
            ],
            {
                ("MLSignalsPipelineStalled", "critical", ""): "active",
                ("MLSignalsCoverageLow", "warning", ""): "suppressed",
                ("MLSignalsQueueBackingUp", "warning", "orders"): "suppressed",
                ("MLSignalsNoChampion", "critical", ""): "active",
            },
            id="stall-mutes-its-consequences",
        ),
        pytest.param(
            [
                _alert("MLSignalsExporterDown", "critical", subsystem="pipeline"),
                _alert("MLSignalsKillSwitchEngaged", "critical", subsystem="trading", account="live"),
                _alert("MLSignalsStaleData", "warning", subsystem="data"),
            ],
            {
                ("MLSignalsExporterDown", "critical", ""): "active",
                ("MLSignalsKillSwitchEngaged", "critical", ""): "suppressed",
                ("MLSignalsStaleData", "warning", ""): "suppressed",
            },
            id="exporter-down-mutes-everything-else",
        ),
        pytest.param(
            [
                _alert("MLSignalsWorkersDown", "critical", subsystem="queues", queue="inference"),
                _alert("MLSignalsWorkersDown", "warning", subsystem="queues", queue="inference"),
                _alert("MLSignalsWorkersDown", "warning", subsystem="queues", queue="orders"),
            ],
            {
                ("MLSignalsWorkersDown", "critical", "inference"): "active",
                ("MLSignalsWorkersDown", "warning", "inference"): "suppressed",
                ("MLSignalsWorkersDown", "warning", "orders"): "active",
            },
            id="critical-mutes-the-warning-of-the-same-alert",
        ),
    ],
)
def test_inhibitions(
    alertmanager: RunningAlertmanager, alerts: list[dict[str, Any]], expected: dict[tuple[str, str, str], str]
) -> None:
    alertmanager.post_alerts(alerts)
    _wait_for_states(alertmanager, expected)
