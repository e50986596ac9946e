"""Every series the mlsignals exporter serves (docs/MONITORING.md), by its exact scraped name.

Counters carry ``_total``; histograms ``_bucket``/``_sum``/``_count``; the gauge histogram
``mlsignals_candle_lag_seconds`` ``_bucket``/``_gcount``/``_gsum``. The alert rules and the dashboards
may name only these (tests/unit/test_monitoring_rules.py, tests/unit/test_monitoring_deploy.py), and
the end-to-end test holds the set against a live scrape of the real exporter, both ways
(tests/integration/test_monitoring_e2e.py).
"""

from __future__ import annotations

GAUGES: frozenset[str] = frozenset(
    {
        # settings / exporter
        "mlsignals_alert_threshold_ratio",
        "mlsignals_minute_budget_seconds",
        "mlsignals_inference_budget_seconds",
        "mlsignals_daily_loss_limit_ratio",
        "mlsignals_exporter_refresh_duration_seconds",
        "mlsignals_exporter_last_refresh_timestamp_seconds",
        "mlsignals_exporter_collector_up",
        # minute
        "mlsignals_last_success_minute_timestamp_seconds",
        "mlsignals_newest_minute_timestamp_seconds",
        "mlsignals_newest_minute_coverage_ratio",
        # signals / model
        "mlsignals_champion_info",
        "mlsignals_champion_present",
        # data
        "mlsignals_symbols_tracked",
        "mlsignals_candle_lag_seconds_max",
        "mlsignals_stale_symbols",
        "mlsignals_quarantined_symbols",
        "mlsignals_stream_connected",
        # trading
        "mlsignals_open_positions",
        "mlsignals_exposure_ratio",
        "mlsignals_account_equity",
        "mlsignals_account_daily_pnl",
        "mlsignals_account_daily_pnl_ratio",
        "mlsignals_kill_switch_engaged",
        # queues and workers
        "mlsignals_queue_messages",
        "mlsignals_queue_unacked_messages",
        "mlsignals_workers_up",
        # live signal quality (the exporter's quality part; the signal-quality ledger)
        "mlsignals_quality_ic",
        "mlsignals_quality_ic_tstat",
        "mlsignals_quality_hit_rate_ratio",
        "mlsignals_quality_mean_net_return_ratio",
        "mlsignals_quality_calibration_ece",
        "mlsignals_quality_brier_score",
        "mlsignals_quality_window_signals",
        "mlsignals_quality_window_actionable_signals",
        "mlsignals_quality_scored_through_timestamp_seconds",
        "mlsignals_quality_breaker_last_trip_timestamp_seconds",
        # quality breaker settings
        "mlsignals_quality_breaker_enabled",
        "mlsignals_quality_breaker_hit_rate_floor_ratio",
        "mlsignals_quality_breaker_ic_floor",
        "mlsignals_quality_breaker_min_samples",
        # feature drift (the champion's newest pass)
        "mlsignals_feature_drift_alert_psi_ratio",
        "mlsignals_feature_drift_status",
        "mlsignals_feature_drift_computed_timestamp_seconds",
        "mlsignals_feature_drift_samples",
        "mlsignals_feature_drift_minutes",
        "mlsignals_feature_drift_psi_max",
        "mlsignals_feature_drift_features",
        "mlsignals_feature_drift_psi",
    }
)

COUNTERS: frozenset[str] = frozenset(
    {
        "mlsignals_minutes_total",
        "mlsignals_symbols_asked_total",
        "mlsignals_symbols_ok_total",
        "mlsignals_symbol_failures_total",
        "mlsignals_signals_total",
        "mlsignals_model_reloads_total",
        "mlsignals_shadow_failures_total",
        "mlsignals_stream_reconnects_total",
        "mlsignals_order_intents_total",
        "mlsignals_fills_total",
        "mlsignals_quality_breaker_trips_total",
    }
)

HISTOGRAMS: frozenset[str] = frozenset(
    {
        "mlsignals_minute_duration_seconds",
        "mlsignals_minute_stage_duration_seconds",
        "mlsignals_signal_confidence",
    }
)

GAUGE_HISTOGRAMS: frozenset[str] = frozenset({"mlsignals_candle_lag_seconds"})

HISTOGRAM_SERIES: frozenset[str] = frozenset(
    f"{name}_{suffix}" for name in HISTOGRAMS for suffix in ("bucket", "sum", "count")
)
GAUGE_HISTOGRAM_SERIES: frozenset[str] = frozenset(
    f"{name}_{suffix}" for name in GAUGE_HISTOGRAMS for suffix in ("bucket", "gcount", "gsum")
)

CATALOGUE_SERIES: frozenset[str] = GAUGES | COUNTERS | HISTOGRAM_SERIES | GAUGE_HISTOGRAM_SERIES

# Series whose value only grows (between restarts): what rate(), irate() and increase() may take.
MONOTONIC_SERIES: frozenset[str] = COUNTERS | HISTOGRAM_SERIES
# Series that go up and down: never under rate()/increase() (the gauge histogram's buckets included).
GAUGE_SERIES: frozenset[str] = GAUGES | GAUGE_HISTOGRAM_SERIES
