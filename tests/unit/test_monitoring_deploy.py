"""The monitoring deployment, checked without an engine: Grafana's dashboards and provisioning
(deploy/grafana), and the monitoring services of docker-compose.yml (the mlsignals exporter,
celery-exporter, Prometheus, AlertManager, Grafana).

Dashboards: valid JSON models with unique uids; every panel titled, described, on the provisioned
Prometheus datasource and placed; every query names only series of the metric catalogue
(tests/support/dashboards.py, a copy of /tmp/shared/metrics_spec.md), never celery-exporter's, and
takes rate()/increase() of counters only. Compose: pinned images, loopback ports, health checks,
the rendering of AlertManager's template, no committed secret, and the mounts that tie Prometheus,
AlertManager and Grafana to their files in deploy/.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.version import Version

from tests.support.catalogue import CATALOGUE_SERIES, GAUGE_SERIES, MONOTONIC_SERIES
from tests.support.dashboards import (
    DATASOURCE_UID,
    counter_function_arguments,
    dashboard_files,
    iter_panels,
    load_dashboard,
    metric_names,
    panel_queries,
    panel_targets,
    promql,
    range_windows,
)
from tests.unit.test_deploy_files import argv, health_test, interpolate, services

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "mlsignals.yml"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTMANAGER_DIR = ROOT / "deploy" / "alertmanager"
ALERTMANAGER_TEMPLATE = ALERTMANAGER_DIR / "alertmanager.yml.tmpl"

DATASOURCE = {"type": "prometheus", "uid": DATASOURCE_UID}
DASHBOARD_UIDS = {
    "pipeline.json": "mlsignals-pipeline",
    "signals.json": "mlsignals-signals",
    "trading.json": "mlsignals-trading",
}
MONITORING = {"metrics", "celery-exporter", "prometheus", "alertmanager", "grafana"}
THIRD_PARTY_MONITORING = MONITORING - {"metrics"}
METRICS_COMMAND = ["mlsignals", "metrics", "serve", "--host", "0.0.0.0", "--port", "9500"]
CHAT_ID_PLACEHOLDER = "__TELEGRAM_CHAT_ID__"
QUERY_PANELS = {"timeseries", "stat", "bargauge", "heatmap", "table", "state-timeline", "gauge"}
LIVE_QUALITY_ROW = "Live signal quality"

# What each dashboard must show (the issue's list), as the series its queries read.
REQUIRED_SERIES = {
    "mlsignals-pipeline": {
        "mlsignals_minute_duration_seconds_bucket",
        "mlsignals_minute_budget_seconds",
        "mlsignals_minute_stage_duration_seconds_bucket",
        "mlsignals_minute_stage_duration_seconds_sum",
        "mlsignals_minute_stage_duration_seconds_count",
        "mlsignals_last_success_minute_timestamp_seconds",
        "mlsignals_minutes_total",
        "mlsignals_newest_minute_coverage_ratio",
        "mlsignals_alert_threshold_ratio",
        "mlsignals_symbol_failures_total",
        "mlsignals_queue_messages",
        "mlsignals_queue_unacked_messages",
        "mlsignals_workers_up",
        "mlsignals_candle_lag_seconds_max",
        "mlsignals_stale_symbols",
        "mlsignals_quarantined_symbols",
        "mlsignals_stream_connected",
        "mlsignals_stream_reconnects_total",
        "mlsignals_exporter_collector_up",
        "mlsignals_exporter_refresh_duration_seconds",
    },
    "mlsignals-signals": {
        "mlsignals_signals_total",
        "mlsignals_signal_confidence_bucket",
        "mlsignals_champion_info",
        "mlsignals_champion_present",
        "mlsignals_model_reloads_total",
        # live quality (the signal-quality ledger)
        "mlsignals_quality_ic",
        "mlsignals_quality_ic_tstat",
        "mlsignals_quality_hit_rate_ratio",
        "mlsignals_quality_mean_net_return_ratio",
        "mlsignals_quality_calibration_ece",
        "mlsignals_quality_brier_score",
        "mlsignals_quality_window_signals",
        "mlsignals_quality_window_actionable_signals",
        "mlsignals_quality_scored_through_timestamp_seconds",
        "mlsignals_quality_breaker_trips_total",
        "mlsignals_quality_breaker_last_trip_timestamp_seconds",
        "mlsignals_quality_breaker_hit_rate_floor_ratio",
        "mlsignals_quality_breaker_ic_floor",
        "mlsignals_kill_switch_engaged",
    },
    "mlsignals-trading": {
        "mlsignals_account_equity",
        "mlsignals_account_daily_pnl",
        "mlsignals_account_daily_pnl_ratio",
        "mlsignals_daily_loss_limit_ratio",
        "mlsignals_open_positions",
        "mlsignals_exposure_ratio",
        "mlsignals_kill_switch_engaged",
        "mlsignals_order_intents_total",
        "mlsignals_fills_total",
    },
}


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: load_dashboard(path) for path in dashboard_files()}


def dashboard_by_uid(uid: str) -> dict[str, Any]:
    found = [d for d in dashboards().values() if d.get("uid") == uid]
    assert len(found) == 1, f"no single dashboard with uid {uid}"
    return found[0]


def all_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) over every dashboard."""
    return [(name, title, expr) for name, d in dashboards().items() for title, expr in panel_queries(d)]


def query_ids() -> list[str]:
    return [f"{name}:{title}:{i}" for i, (name, title, _) in enumerate(all_queries())]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source of a service's short-syntax volumes (":ro" dropped)."""
    found: dict[str, str] = {}
    for volume in service.get("volumes", []):
        source, target, *_ = str(volume).split(":")
        found[target] = source
    return found


def image_tag(service: dict[str, Any]) -> tuple[str, str]:
    name, _, tag = str(service["image"]).rpartition(":")
    return name, tag


# ------------------------------------------------------------------------------------ dashboards


def test_three_dashboards_with_unique_uids() -> None:
    found = dashboards()
    assert set(found) == set(DASHBOARD_UIDS)
    assert {name: d["uid"] for name, d in found.items()} == DASHBOARD_UIDS
    titles = [d["title"] for d in found.values()]
    assert len(set(titles)) == len(titles), "two dashboards share a title"


@pytest.mark.parametrize("name", sorted(DASHBOARD_UIDS))
def test_dashboard_model(name: str) -> None:
    dashboard = dashboards()[name]
    assert dashboard["schemaVersion"] == 39
    assert "mlsignals" in dashboard["tags"]
    assert dashboard["time"] == {"from": "now-6h", "to": "now"}
    assert dashboard["refresh"] == "30s"
    assert dashboard.get("id") is None, "a provisioned dashboard carries no database id"
    ids = [p["id"] for p in iter_panels(dashboard)]
    assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"


@pytest.mark.parametrize("name", sorted(DASHBOARD_UIDS))
def test_every_panel_is_titled_described_placed_and_on_the_datasource(name: str) -> None:
    for panel in iter_panels(dashboards()[name]):
        title = panel.get("title")
        assert isinstance(title, str), f"{name}: a {panel.get('type')} panel has no title"
        assert title.strip(), f"{name}: a {panel.get('type')} panel has an empty title"
        description = panel.get("description")
        assert isinstance(description, str), f"{name}/{title}: no description"
        assert len(description) > 20, f"{name}/{title}: description {description!r} says too little"
        assert panel.get("datasource") == DATASOURCE, f"{name}/{title}: datasource {panel.get('datasource')}"
        grid = panel.get("gridPos")
        assert isinstance(grid, dict), f"{name}/{title}: no gridPos"
        assert all(isinstance(grid.get(k), int) for k in ("h", "w", "x", "y")), f"{name}/{title}: {grid}"
        assert min(grid["w"], grid["h"]) > 0, f"{name}/{title}: {grid}"
        assert grid["x"] + grid["w"] <= 24, f"{name}/{title}: {grid} is wider than the dashboard"


@pytest.mark.parametrize("name", sorted(DASHBOARD_UIDS))
def test_every_query_panel_has_targets_with_expr_refid_and_datasource(name: str) -> None:
    for panel in iter_panels(dashboards()[name]):
        title = panel["title"]
        targets = panel_targets(panel)
        if panel["type"] in {"row", "text"}:
            assert not targets, f"{name}/{title}: a {panel['type']} panel has queries"
            continue
        assert panel["type"] in QUERY_PANELS, f"{name}/{title}: unexpected panel type {panel['type']}"
        assert targets, f"{name}/{title}: no targets"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{name}/{title}: no unit"
        refs = [t.get("refId") for t in targets]
        assert all(isinstance(r, str) and r for r in refs), f"{name}/{title}: a target has no refId"
        assert len(set(refs)) == len(refs), f"{name}/{title}: duplicate refIds"
        for target in targets:
            expr = target.get("expr")
            assert isinstance(expr, str), f"{name}/{title}/{target.get('refId')}: no expr"
            assert expr.strip(), f"{name}/{title}/{target.get('refId')}: empty expr"
            assert target.get("datasource") == DATASOURCE, f"{name}/{title}: target datasource"


@pytest.mark.parametrize(("name", "title", "expr"), all_queries(), ids=query_ids())
def test_queries_read_only_catalogue_series(name: str, title: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{name}/{title}: no metric in {expr!r}"
    assert not [n for n in names if n.startswith("celery_")], f"{name}/{title}: celery-exporter series"
    unknown = names - CATALOGUE_SERIES
    assert not unknown, f"{name}/{title}: {sorted(unknown)} are not in the metric catalogue"
    assert "celery_" not in expr


@pytest.mark.parametrize(("name", "title", "expr"), all_queries(), ids=query_ids())
def test_rate_and_increase_only_over_counters_with_the_rate_interval(
    name: str, title: str, expr: str
) -> None:
    for function, argument in counter_function_arguments(expr):
        names = metric_names(argument)
        assert names, f"{name}/{title}: {function}() of no series"
        gauges = names & GAUGE_SERIES
        assert not gauges, f"{name}/{title}: {function}() over gauges {sorted(gauges)}"
        assert names <= MONOTONIC_SERIES, f"{name}/{title}: {function}() over {sorted(names)}"
        assert range_windows(argument) == ["$__rate_interval"], f"{name}/{title}: {function}({argument})"
    # Prometheus-ready once Grafana's variables are substituted.
    assert "$" not in promql(expr)


def test_every_dashboard_shows_what_the_issue_asks_for() -> None:
    for uid, wanted in REQUIRED_SERIES.items():
        read = set().union(*(metric_names(expr) for _, expr in panel_queries(dashboard_by_uid(uid))))
        missing = wanted - read
        assert not missing, f"{uid} shows none of {sorted(missing)}"


def test_pipeline_points_to_celery_exporter_for_task_metrics() -> None:
    pipeline = dashboard_by_uid("mlsignals-pipeline")
    first = min(iter_panels(pipeline), key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    assert first["type"] == "text"
    assert "https://github.com/danihodovic/celery-exporter" in first["options"]["content"]
    stat = next(p for p in iter_panels(pipeline) if p["title"] == "Time since last successful minute")
    assert stat["type"] == "stat"
    steps = [s["value"] for s in stat["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [None, 120, 180]
    assert "time() - " in stat["targets"][0]["expr"]


def test_confidence_heatmap_uses_buckets_by_le() -> None:
    heatmaps = [p for p in iter_panels(dashboard_by_uid("mlsignals-signals")) if p["type"] == "heatmap"]
    assert heatmaps, "no confidence heatmap"
    for panel in heatmaps:
        for target in panel["targets"]:
            assert target["format"] == "heatmap"
            assert "by (le)" in target["expr"]
            assert "mlsignals_signal_confidence_bucket" in target["expr"]


def _row_panels(dashboard: dict[str, Any], title: str) -> list[dict[str, Any]]:
    """The panels under the expanded row ``title``: those after it, up to the next row."""
    top = dashboard["panels"]
    [start] = [i for i, p in enumerate(top) if p["type"] == "row" and p["title"] == title]
    assert top[start]["collapsed"] is False
    inner: list[dict[str, Any]] = []
    for panel in top[start + 1 :]:
        if panel["type"] == "row":
            break
        inner.append(panel)
    return inner


def test_live_quality_row_replaces_the_placeholder() -> None:
    signals = dashboard_by_uid("mlsignals-signals")
    assert not [p for p in iter_panels(signals) if p["type"] == "text"], "the issue-15 placeholder is left"
    inner = _row_panels(signals, LIVE_QUALITY_ROW)
    read = set().union(*(metric_names(t["expr"]) for p in inner for t in panel_targets(p)))
    quality = {n for n in CATALOGUE_SERIES if n.startswith("mlsignals_quality_")} - {
        "mlsignals_quality_breaker_enabled",  # a setting the alert rules read; the panels do not need it
        "mlsignals_quality_breaker_min_samples",
    }
    assert quality <= read, f"the live-quality row shows none of {sorted(quality - read)}"
    assert "mlsignals_kill_switch_engaged" in read
    by_title = {p["title"]: p for p in inner}
    net = by_title["Mean net return by direction (bp)"]
    assert all(t["expr"].endswith("* 10000") for t in net["targets"]), "net returns are fractions: bp"
    lag = by_title["Outcomes lag"]
    assert lag["fieldConfig"]["defaults"]["unit"] == "s"
    assert lag["targets"][0]["expr"].startswith("time() - ")
    # A row's panels sit below it.
    row_y = next(p["gridPos"]["y"] for p in signals["panels"] if p["title"] == LIVE_QUALITY_ROW)
    assert all(p["gridPos"]["y"] > row_y for p in inner)


def test_champion_version_is_shown_by_its_label() -> None:
    panels = [
        p
        for p in iter_panels(dashboard_by_uid("mlsignals-signals"))
        if any("mlsignals_champion_info" in t["expr"] for t in panel_targets(p))
    ]
    assert {p["type"] for p in panels} & {"state-timeline", "table"}
    for panel in panels:
        assert all(t["legendFormat"] == "{{version}}" for t in panel_targets(panel))


# --------------------------------------------------------------------------- metric_names itself


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("mlsignals_workers_up", {"mlsignals_workers_up"}),
        ('sum by (queue) (mlsignals_queue_messages{queue="data"})', {"mlsignals_queue_messages"}),
        (
            "histogram_quantile(0.95, sum by (stage, le) "
            "(rate(mlsignals_minute_stage_duration_seconds_bucket[$__rate_interval])))",
            {"mlsignals_minute_stage_duration_seconds_bucket"},
        ),
        (
            "time() - max(mlsignals_last_success_minute_timestamp_seconds)",
            {"mlsignals_last_success_minute_timestamp_seconds"},
        ),
        ("-max(mlsignals_daily_loss_limit_ratio) * 1e2 + vector(0)", {"mlsignals_daily_loss_limit_ratio"}),
        (
            'a_total / on (job, instance) group_left (version) b{x=~"rate|sum"} offset 5m',
            {"a_total", "b"},
        ),
        ('label_replace(up, "dst", "$1", "src", "(.*)") or scalar(c) > bool 0', {"up", "c"}),
        ('{__name__="mlsignals_fills_total", kind="x"}', {"mlsignals_fills_total"}),
        ("sum without (le) (increase(x_bucket[1h30m])) unless ignoring (a) y", {"x_bucket", "y"}),
        ("clamp_min(topk(3, m1), 1) and count(m2) # m3 in a comment", {"m1", "m2"}),
        ("max_over_time(z[10m:1m]) @ start()", {"z"}),
        ("log2(mlsignals_stale_symbols) + Inf - NaN", {"mlsignals_stale_symbols"}),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_counter_function_arguments() -> None:
    expr = 'sum(rate(a_total{x="rate("}[5m])) / sum(increase(b_count[$__rate_interval]))'
    assert counter_function_arguments(expr) == [
        ("rate", 'a_total{x="rate("}[5m]'),
        ("increase", "b_count[$__rate_interval]"),
    ]
    assert promql(expr) == 'sum(rate(a_total{x="rate("}[5m])) / sum(increase(b_count[1m]))'


def test_catalogue_distinguishes_gauges_from_counters() -> None:
    assert all(n.endswith("_total") or n.endswith(("_bucket", "_sum", "_count")) for n in MONOTONIC_SERIES)
    assert "mlsignals_candle_lag_seconds_bucket" in GAUGE_SERIES
    assert "mlsignals_candle_lag_seconds_bucket" not in MONOTONIC_SERIES
    assert not MONOTONIC_SERIES & GAUGE_SERIES
    assert CATALOGUE_SERIES == MONOTONIC_SERIES | GAUGE_SERIES
    assert all(n.startswith("mlsignals_") for n in CATALOGUE_SERIES)


# ------------------------------------------------------------------------------------ provisioning


def test_datasource_is_the_dashboards_prometheus() -> None:
    config = load_yaml(DATASOURCES)
    assert config["apiVersion"] == 1
    [source] = config["datasources"]
    assert source["uid"] == DATASOURCE_UID
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert source["isDefault"] is True
    # $__rate_interval is four scrape intervals: Grafana must know the real one.
    scrape = load_yaml(PROMETHEUS_CONFIG)["global"]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == scrape


def test_dashboard_provider_reads_the_mounted_directory() -> None:
    config = load_yaml(PROVIDERS)
    assert config["apiVersion"] == 1
    [provider] = config["providers"]
    assert provider["type"] == "file"
    assert provider["folder"] == "mlsignals"
    assert provider["allowUiUpdates"] is False
    grafana = mounts(services()["grafana"])
    assert grafana.get(provider["options"]["path"]) == "./deploy/grafana/dashboards"
    assert grafana.get("/etc/grafana/provisioning") == "./deploy/grafana/provisioning"


# ----------------------------------------------------------------------------------------- compose


def test_monitoring_services_exist() -> None:
    missing = MONITORING - set(services())
    assert not missing, f"docker-compose.yml lacks {sorted(missing)}"
    for name in MONITORING:
        assert "profiles" not in services()[name], f"{name} is part of the default deployment"


@pytest.mark.parametrize("name", sorted(THIRD_PARTY_MONITORING))
def test_monitoring_images_are_pinned(name: str) -> None:
    image, tag = image_tag(services()[name])
    assert image, f"{name}: {services()[name]['image']} names no image"
    assert tag != "latest", f"{name}: {image}:latest"
    assert re.search(r"\d+\.\d+\.\d+", tag), f"{name}: {image}:{tag} is not pinned to a release"
    assert "build" not in services()[name]


@pytest.mark.parametrize("name", sorted(MONITORING))
def test_monitoring_services_are_checked_restarted_and_on_loopback(name: str) -> None:
    svc = services()[name]
    test = svc["healthcheck"]["test"]
    assert test[0] in {"CMD", "CMD-SHELL"}
    assert all(str(p).strip() for p in test[1:])
    assert svc.get("restart") == "always", f"{name}: restart {svc.get('restart')!r}"
    assert svc.get("network_mode") != "host"
    assert svc.get("ports"), f"{name} publishes no port"
    for port in svc["ports"]:
        assert interpolate(str(port)).startswith("127.0.0.1:"), f"{name}: {port} is not on loopback"
    for target, spec in (svc.get("depends_on") or {}).items():
        assert spec["condition"] in {"service_healthy", "service_completed_successfully"}, f"{name}->{target}"
    # No curl in these images: Python (the app, celery-exporter) or busybox wget (prom/*, grafana).
    assert "curl" not in health_test(svc)


def test_metrics_service_is_the_exporter_of_the_app_image() -> None:
    metrics = services()["metrics"]
    assert argv(metrics["command"]) == METRICS_COMMAND
    assert metrics["build"]["dockerfile"] == "docker/Dockerfile"
    assert metrics["image"] == services()["control"]["image"]
    assert metrics["environment"] == services()["control"]["environment"]
    assert mounts(metrics).get("/data/models") == "models"
    assert any(str(v).endswith(":ro") for v in metrics["volumes"] if str(v).startswith("models:"))
    depends = metrics["depends_on"]
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert "127.0.0.1:9500:9500" in [interpolate(str(p)) for p in metrics["ports"]]
    assert "http://127.0.0.1:9500/metrics" in health_test(metrics)


def test_celery_exporter_listens_to_the_workers_broker() -> None:
    exporter = services()["celery-exporter"]
    image, _ = image_tag(exporter)
    assert image == "danihodovic/celery-exporter"
    broker = exporter["environment"]["CE_BROKER_URL"]
    assert broker == services()["control"]["environment"]["MLSIG_CELERY__BROKER_URL"]
    command = argv(exporter["command"])
    assert "--port=9808" in command
    assert "127.0.0.1:9808:9808" in [interpolate(str(p)) for p in exporter["ports"]]
    assert exporter["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "9808/health" in health_test(exporter)


def test_prometheus_loads_the_repository_config_and_rules() -> None:
    prometheus = services()["prometheus"]
    image, tag = image_tag(prometheus)
    assert image == "prom/prometheus"
    assert tag.startswith("v2.53."), "Prometheus 2.53 LTS"
    assert mounts(prometheus).get("/etc/prometheus") == "./deploy/prometheus"
    command = argv(prometheus["command"])
    assert "--config.file=/etc/prometheus/prometheus.yml" in command
    assert "--storage.tsdb.retention.time=30d" in command
    assert not [a for a in command if a.startswith("--web.enable-lifecycle")]
    assert "/-/ready" in health_test(prometheus)
    config = load_yaml(PROMETHEUS_CONFIG)
    rule_files = config.get("rule_files") or []
    assert rule_files, "prometheus.yml loads no rules"
    for pattern in rule_files:
        assert list(PROMETHEUS_DIR.glob(pattern)), f"rule file {pattern} is not in deploy/prometheus"
    targets = {
        job["job_name"]: [t for sc in job.get("static_configs", []) for t in sc.get("targets", [])]
        for job in config["scrape_configs"]
    }
    assert "metrics:9500" in targets.get("mlsignals", [])
    assert "celery-exporter:9808" in targets.get("celery", [])
    alertmanagers = config["alerting"]["alertmanagers"]
    assert any("alertmanager:9093" in sc["targets"] for am in alertmanagers for sc in am["static_configs"])


def test_alertmanager_supports_telegram_bot_token_file() -> None:
    image, tag = image_tag(services()["alertmanager"])
    assert image == "prom/alertmanager"
    assert Version(tag.lstrip("v")) >= Version("0.26"), "bot_token_file needs AlertManager >= 0.26"


def _alertmanager_script() -> str:
    alertmanager = services()["alertmanager"]
    assert alertmanager["entrypoint"] == ["/bin/sh", "-c"]
    [script] = alertmanager["command"]
    return str(script).replace("$$", "$")  # what compose hands to the shell


def test_alertmanager_renders_the_mounted_template() -> None:
    alertmanager = services()["alertmanager"]
    assert mounts(alertmanager).get("/etc/alertmanager") == "./deploy/alertmanager"
    script = _alertmanager_script()
    assert f"s/{CHAT_ID_PLACEHOLDER}/$TELEGRAM_CHAT_ID/" in script
    template = re.search(r"/etc/alertmanager/(\S+\.tmpl)", script)
    assert template, "the command renders no template of /etc/alertmanager"
    assert (ALERTMANAGER_DIR / template[1]) == ALERTMANAGER_TEMPLATE
    assert ALERTMANAGER_TEMPLATE.is_file(), f"{ALERTMANAGER_TEMPLATE} is missing"
    text = ALERTMANAGER_TEMPLATE.read_text()
    assert CHAT_ID_PLACEHOLDER in text
    assert "bot_token_file: /run/secrets/telegram_bot_token" in text
    assert alertmanager["secrets"] == ["telegram_bot_token"]
    assert alertmanager["environment"]["TELEGRAM_CHAT_ID"] == "${TELEGRAM_CHAT_ID:-}"
    assert "exec /bin/alertmanager --config.file=" in script
    assert "/-/ready" in health_test(alertmanager)


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX shell")
@pytest.mark.parametrize(
    ("chat_id", "ok"),
    [
        ("123456789", True),
        ("-1001234567890", True),
        ("", False),
        ("-", False),
        ("12-3", False),
        ("1/2", False),
    ],
)
def test_alertmanager_script_checks_and_substitutes_the_chat_id(
    tmp_path: Path, chat_id: str, ok: bool
) -> None:
    """Run the entrypoint's script with the paths moved into tmp_path and `echo` for the binary."""
    (tmp_path / "alertmanager.yml.tmpl").write_text(f"chat_id: {CHAT_ID_PLACEHOLDER}\n")
    script = (
        _alertmanager_script()
        .replace("/etc/alertmanager/", f"{tmp_path}/")
        .replace("/tmp/alertmanager.yml", f"{tmp_path}/out.yml")
        .replace("exec /bin/alertmanager", "exec echo started")
    )
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TELEGRAM_CHAT_ID": chat_id}
    result = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, check=False)
    if ok:
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("started --config.file=")
        assert (tmp_path / "out.yml").read_text() == f"chat_id: {chat_id}\n"
    else:
        assert result.returncode != 0
        assert "TELEGRAM_CHAT_ID" in result.stderr
        assert not (tmp_path / "out.yml").exists()


def test_no_secret_is_committed_in_compose() -> None:
    text = COMPOSE_FILE.read_text()
    assert not re.search(r"\b\d{6,}:[A-Za-z0-9_-]{30,}\b", text), "a Telegram bot token in docker-compose.yml"
    assert not re.search(r"TELEGRAM_CHAT_ID:\s*['\"]?-?\d", text), "a literal chat id in docker-compose.yml"
    secrets = {name: spec["file"] for name, spec in services_secrets().items()}
    assert secrets == {
        "telegram_bot_token": "${TELEGRAM_BOT_TOKEN_FILE:-./secrets/telegram_bot_token}",
        "grafana_admin_password": "${GRAFANA_ADMIN_PASSWORD_FILE:-./secrets/grafana_admin_password}",
        "mcp_tokens": "${MCP_TOKENS_FILE:-./secrets/mcp_tokens}",
    }
    for name in MONITORING:
        env = services()[name].get("environment") or {}
        for key, value in env.items():
            if re.search(r"PASSWORD|TOKEN|SECRET", key) and not key.endswith("__FILE"):
                assert str(value).startswith("${"), f"{name}: {key} is hard-coded"


def services_secrets() -> dict[str, dict[str, str]]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    found: dict[str, dict[str, str]] = data["secrets"]
    return found


def test_grafana_provisions_from_the_repository_with_a_secret_password() -> None:
    grafana = services()["grafana"]
    image, tag = image_tag(grafana)
    assert image == "grafana/grafana-oss"
    assert tag.startswith("11."), "Grafana 11"
    found = mounts(grafana)
    assert found.get("/etc/grafana/provisioning") == "./deploy/grafana/provisioning"
    assert found.get("/var/lib/grafana/dashboards") == "./deploy/grafana/dashboards"
    env = grafana["environment"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env, "the admin password comes from the secret file"
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert grafana["secrets"] == ["grafana_admin_password"]
    assert str(env["GF_USERS_ALLOW_SIGN_UP"]).lower() == "false"
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert "127.0.0.1:3000:3000" in [interpolate(str(p)) for p in grafana["ports"]]
    assert "/api/health" in health_test(grafana)
    for volume in ("prometheus-data", "alertmanager-data", "grafana-data"):
        assert volume in yaml.safe_load(COMPOSE_FILE.read_text())["volumes"]
