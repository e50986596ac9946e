"""One typed settings object: defaults < YAML file < environment (prefix ``MLSIG_``, nesting ``__``).

The YAML file is ``$MLSIG_CONFIG_FILE`` if set, else ``mlsignals.yaml`` in the working directory
when it exists. Example: ``MLSIG_DATA__SOURCE=exchange`` or ``MLSIG_DATABASE_URL=postgresql+psycopg://…``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)
from typing_extensions import override

ENV_PREFIX = "MLSIG_"
CONFIG_FILE_ENV = "MLSIG_CONFIG_FILE"
DEFAULT_CONFIG_FILE = "mlsignals.yaml"


class SchedulerSettings(BaseModel):
    interval_seconds: int = Field(60, ge=1)


class SignalSettings(BaseModel):
    # A floor on the calibrated probability of the signal's direction; the decision itself is the
    # expected edge against trading costs (decoding.edge_margin_bps, docs/SIGNALS.md).
    confidence_threshold: float = Field(0.4, ge=0.0, le=1.0)
    max_signals_per_symbol: int = Field(1, ge=1)


class MonitoringSettings(BaseModel):
    """Prometheus metrics and the values alert rules compare against (docs/MONITORING.md)."""

    # Off: `mlsignals metrics serve` refuses to start and workers write no heartbeats.
    metrics_enabled: bool = True
    # Exported as mlsignals_alert_threshold_ratio: signal coverage (signals / symbols asked) below it alerts.
    alert_threshold: float = Field(0.8, ge=0.0, le=1.0)
    host: str = "127.0.0.1"
    port: int = Field(9500, ge=0, le=65535)
    # The exporter reads the ledger, the tables and Redis this often; scrapes serve the newest snapshot.
    # Prometheus scrapes every 15 s (deploy/prometheus/prometheus.yml): refreshing more often is work
    # no scrape would see.
    refresh_seconds: float = Field(15.0, gt=0.0)
    # Exported as gauges so that the alert rules need no templating (DESIGN.md §8: 500 symbols <= 8 s).
    minute_budget_seconds: float = Field(8.0, gt=0.0)
    inference_budget_seconds: float = Field(1.5, gt=0.0)
    # Workers announce themselves in Redis this often; one silent for three periods counts as down.
    worker_heartbeat_seconds: float = Field(10.0, gt=0.0)
    # The exporter lowers its CPU priority by this much (os.nice): sharing cores with the workers,
    # a refresh yields to the minute instead of delaying it; metrics can wait a few milliseconds.
    exporter_nice: int = Field(10, ge=0, le=19)


class MLIntegrationSettings(BaseModel):
    """The seed system's ``ml_integration`` keys, with its defaults."""

    scheduler: SchedulerSettings = SchedulerSettings()
    batch_size: int = Field(50, ge=1)
    max_parallel: int = Field(10, ge=1)
    signals: SignalSettings = SignalSettings()
    monitoring: MonitoringSettings = MonitoringSettings()


class ExchangeSettings(BaseModel):
    """ccxt exchange used when ``data.source`` is ``exchange`` (and by live trading later)."""

    id: str = "bybit"
    market_type: Literal["swap", "spot", "future"] = "swap"
    timeout_ms: int = Field(10_000, ge=100)
    enable_rate_limit: bool = True
    max_retries: int = Field(4, ge=0)
    retry_base_delay_s: float = Field(0.5, ge=0.0)
    retry_max_delay_s: float = Field(30.0, gt=0.0)
    page_limit: int = Field(1000, ge=1, le=1000)
    # Overrides ccxt's REST endpoints, e.g. {"public": "http://127.0.0.1:8900"}; used by the tests'
    # local exchange server and for testnets.
    api_urls: dict[str, str] = Field(default_factory=dict)
    # Overrides ccxt's WebSocket endpoints (``urls['api']['ws']``, a nested dict on bybit): keys are
    # dotted paths such as ``public.linear`` or ``all``; values ws:// or wss:// URLs.
    ws_urls: dict[str, str] = Field(default_factory=dict)
    # The gateway's own limiter, shared by every process on the host through Redis (in-process in
    # the embedded run). Bybit allows 600 requests per 5 s per IP; 80/s keeps a third in reserve.
    # ccxt's per-client throttle is off: it knows neither the real budget nor the other processes.
    requests_per_second: float = Field(80.0, gt=0.0)
    request_burst: int = Field(20, ge=1)


class SimulatorSettings(BaseModel):
    seed: int = 7
    universe_size: int = Field(1000, ge=1, le=10_000)
    # The learnable effect (docs/SIMULATOR.md): "switching" (per-symbol hot/quiet states that flip the
    # sign of the idiosyncratic momentum) or "momentum" (the older market-wide-regime momentum).
    effect: Literal["switching", "momentum"] = "switching"


class DataSettings(BaseModel):
    source: Literal["simulator", "exchange"] = "simulator"
    symbols: list[str] = Field(default_factory=list)
    # Used when ``symbols`` is empty: the first N symbols the source lists.
    universe_size: int = Field(50, ge=1)
    interval: Literal["1m"] = "1m"
    bar_minutes: int = Field(15, ge=1, le=240)
    # Validation rules (docs/DATA_VALIDATION.md).
    max_fill_gap_minutes: int = Field(3, ge=0)
    max_abs_log_return: float = Field(0.25, gt=0.0)
    stale_after_seconds: int = Field(300, ge=60)
    # A first sync of a symbol with nothing stored fetches this much history: the model's 96 bars
    # plus the features' warm-up of at most 200 bars, 15 minutes each, and a bar of slack.
    sync_initial_minutes: int = Field((96 + 200 + 1) * 15, ge=1)
    # Gaps longer than ``max_fill_gap_minutes`` are outages: still filled with flagged flat candles
    # (so that bars stay whole), but recorded in ``candle_gaps`` and reported. Only the newest
    # ``max_gap_fill_minutes`` of a longer gap are filled: older minutes lie outside any live window.
    max_gap_fill_minutes: int = Field((96 + 200 + 1) * 15, ge=1)
    # A gap that at least this share of the symbols (and at least 2) missed over the same minutes is
    # reported once, as an exchange-wide outage.
    outage_min_share: float = Field(0.5, gt=0.0, le=1.0)


class StreamSettings(BaseModel):
    """``mlsignals data stream``: closed candles over the exchange's WebSocket (docs/DATA.md)."""

    # Symbols per subscribe request (Bybit spot accepts at most 10 topics per request).
    subscribe_chunk: int = Field(10, ge=1, le=100)
    # No message at all for this long means a dead connection: reconnect.
    silence_timeout_s: float = Field(20.0, gt=0.0)
    reconnect_base_delay_s: float = Field(0.5, ge=0.0)
    reconnect_max_delay_s: float = Field(30.0, gt=0.0)
    # Confirmed candles are written at least this often (the "within 1 s of arrival" promise).
    flush_interval_s: float = Field(0.2, gt=0.0, le=1.0)
    # A candle newer than a symbol's watermark + 1 minute waits this long for the missing one to
    # arrive on the stream before the hole is repaired over REST.
    hole_grace_s: float = Field(3.0, ge=0.0)
    # The service marks itself alive in Redis for this long after each flush; feature tasks wait on
    # the watermark only while it is alive, and fetch over REST otherwise.
    alive_ttl_s: int = Field(15, ge=2)


class ModelSettings(BaseModel):
    """Where model versions live and how inference runs (DESIGN.md §5)."""

    registry_dir: Path = Path("var/models")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # 0 = leave torch's default (one thread per core).
    torch_threads: int = Field(0, ge=0)
    backend: Literal["eager", "onnx"] = "eager"


class DecodingSettings(BaseModel):
    """How the 20 model outputs become a signal (docs/SIGNALS.md)."""

    # The horizon (index into 1, 4, 16, 48 bars) whose direction probabilities decide the signal.
    primary_horizon: int = Field(1, ge=0, le=3)
    # Stop-loss / take-profit distances from predicted risk, as fractions of the entry price.
    stop_loss_risk_multiple: float = Field(1.0, gt=0.0)
    take_profit_risk_multiple: float = Field(1.5, gt=0.0)
    min_stop_fraction: float = Field(0.002, gt=0.0)
    max_stop_fraction: float = Field(0.05, gt=0.0)
    signal_ttl_minutes: int = Field(15, ge=1)
    # A LONG or SHORT needs a predicted return above the round trip's fees and slippage
    # (2 x (trading.fee_bps + trading.slippage_bps)) by at least this many basis points.
    edge_margin_bps: float = Field(5.0, ge=0.0)


class CelerySettings(BaseModel):
    """Broker and backend; empty means ``redis_url`` (db 0 broker, db 1 results)."""

    broker_url: str = ""
    result_backend: str = ""
    result_expires_seconds: int = Field(600, ge=60)
    # Redis redelivers an unacknowledged task after this long: longer than the hard time limit of
    # every late-acknowledged task (the minute's tasks stop within 50 s), short enough that work of
    # a dead worker comes back while it is still useful.
    visibility_timeout_seconds: int = Field(60, ge=2)
    # How often a worker looks for such unacknowledged messages to restore.
    unacked_restore_interval_seconds: int = Field(5, ge=1)


class PipelineSettings(BaseModel):
    """The minute pipeline (docs/ML_INTEGRATION.md)."""

    # A minute whose run would start later than this after the minute began is skipped, not run late.
    max_start_delay_seconds: float = Field(20.0, gt=0)
    # The minute's whole chord must finish inside the minute: tasks expire after this.
    minute_deadline_seconds: float = Field(55.0, gt=0)
    feature_ttl_seconds: int = Field(180, ge=10)
    # Symbols per feature task (1 = one task per symbol); defaults to ml_integration.batch_size.
    symbols_per_task: int = Field(0, ge=0)
    # How long a feature task waits for the exchange to publish the just-closed candle.
    candle_wait_seconds: float = Field(6.0, ge=0)
    # Window quality (docs/DATA.md): a symbol gets a signal only when at most this share of the
    # model's context minutes are filled (not traded) and its newest bar is at least this real.
    max_filled_share: float = Field(0.2, ge=0.0, le=1.0)
    min_real_share_newest_bar: float = Field(0.5, ge=0.0, le=1.0)
    heartbeat_channel: str = "signals:heartbeat"
    channel: str = "signals"
    # The shadow challenger's signals (docs/SIGNAL_QUALITY.md): published here, never traded.
    shadow_channel: str = "signals:shadow"
    # The durable feed beside pub/sub: every signal and heartbeat is also appended to this Redis
    # Stream, trimmed to about this many entries (a day of 500 symbols is 720,000).
    stream_key: str = "signals:stream"
    stream_maxlen: int = Field(1_000_000, ge=1000)
    # The minute supervisor (beat, every supervise_interval_seconds) re-dispatches a running minute
    # whose stage made no progress for stall_seconds, at most max_attempts dispatches in all, and
    # closes (and announces) a run still open at its deadline.
    supervise_interval_seconds: float = Field(5.0, gt=0)
    stall_seconds: float = Field(15.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    # Minutes without any run (beat or broker down) are recorded as ``missed`` at the next start,
    # looking back at most this far.
    missed_lookback_minutes: int = Field(1440, ge=0)
    # Transient infrastructure errors (database, Redis) inside a minute's task are retried by Celery
    # with exponential backoff and full jitter, bounded by the minute's deadline.
    task_max_retries: int = Field(4, ge=0)


class BreakerSettings(BaseModel):
    """The quality circuit breaker (docs/SIGNAL_QUALITY.md): halts new entries when the champion's
    live signals stop working."""

    enabled: bool = True
    # The horizon it watches (index into 1, 4, 16, 48 bars); None: decoding.primary_horizon.
    horizon: int | None = Field(None, ge=0, le=3)
    # No verdict before this many resolved actionable signals since the last resume or promotion.
    min_samples: int = Field(200, ge=1)
    # No verdict before the window spans this many periods of the horizon (from its oldest to its newest
    # minute, in horizon lengths, plus one); a window of fewer is widened to every actionable signal of
    # the last min_periods periods. Nearby minutes share most of their outcome: 500 signals of a
    # 500-symbol universe come from ~15 minutes, one or two periods at 1 h, over which a sound model's
    # IC falls below 0 by chance often enough to halt trading for nothing (docs/SIGNAL_QUALITY.md).
    min_periods: int = Field(4, ge=1)
    # The window: the newest this many resolved actionable signals, widened to min_periods periods (and
    # for the IC every signal of the newest minute of each of their bars).
    window_signals: int = Field(500, ge=1)
    # Trips when the window's hit rate or its mean per-minute IC falls below these floors. The default
    # recipe's held-out figures are a hit rate of 0.61 and an IC of 0.08 at 1 h (docs/MODEL.md).
    hit_rate_floor: float = Field(0.45, ge=0.0, le=1.0)
    ic_floor: float = Field(0.0, ge=-1.0, le=1.0)


class QualitySettings(BaseModel):
    """Signal outcomes and their rolling quality (docs/SIGNAL_QUALITY.md)."""

    enabled: bool = True
    # Beat runs tasks.quality.score this often: outcomes first, then the breaker.
    interval_seconds: float = Field(60.0, gt=0)
    # A minute's horizon is scored once its exit candle closed this long ago (late candles arrive).
    settle_seconds: float = Field(120.0, ge=0)
    # Symbols still without every candle of the horizon this long after it settled are recorded as
    # unresolved, with the reason; the rest of their minute is scored without them.
    resolve_grace_minutes: int = Field(60, ge=0)
    # Signals older than this are not scored any more (a first run, or one after a long outage,
    # starts here instead of at the beginning of history).
    lookback_hours: float = Field(72.0, gt=0)
    # Minutes scored per horizon and run: catching up after an outage spreads over several runs.
    max_minutes_per_run: int = Field(120, ge=1)
    # The rolling windows of `mlsignals signals quality` and of the exported gauges.
    window_signals: int = Field(50_000, ge=10)
    window_days: float = Field(7.0, gt=0)
    breaker: BreakerSettings = BreakerSettings()
    # The registry's challenger, when there is one, is scored in the champion's batch and its
    # signals stored and published on pipeline.shadow_channel, never traded.
    shadow_enabled: bool = True
    # Feature drift: the population stability index of the live windows' newest rows against the
    # training distribution stored with the model (quantile bins), per feature.
    drift_enabled: bool = True
    drift_bins: int = Field(10, ge=2, le=100)
    # PSI above this is drift worth a look (the conventional 0.1 / 0.25 cut-offs: 0.25 is "major").
    drift_alert_psi: float = Field(0.25, gt=0)
    # How many of the worst features `mlsignals model drift` prints and the exporter labels.
    drift_top: int = Field(10, ge=1, le=240)


class McpSettings(BaseModel):
    """The MCP servers ml-data, ml-signal and ml-model (``mcp_servers/``, docs/MCP.md)."""

    # Mutating tools (backfill, import_file, run_minute, promote, rollback) exist only when true; each
    # call of one writes an audit row (mcp_audit).
    allow_write: bool = False
    # Bearer tokens of the streamable-HTTP transport, client id -> token: the client id is the caller
    # the audit records. From MLSIG_MCP__TOKENS='{"ops-agent": "..."}' or ``tokens_file`` (a JSON
    # object of the same shape, or ``client_id=token`` lines), never from a command line.
    tokens: dict[str, SecretStr] = Field(default_factory=dict)
    tokens_file: Path | None = None
    # The public URL of the HTTP servers (the SDK's auth metadata names it); default: http://HOST:PORT.
    public_url: str | None = None
    # Limits, so that no tool can dump the database.
    max_rows: int = Field(1000, ge=1, le=100_000)
    max_range_days: float = Field(31.0, gt=0)
    max_symbols: int = Field(500, ge=1)
    max_backfill_days: int = Field(30, ge=1)
    # run_minute waits this long for the minute it sent (then answers with the task id).
    run_minute_wait_seconds: float = Field(120.0, gt=0)
    # The only directory import_file reads from (None: DATA_DIR/imports): an agent names a file in it,
    # never an arbitrary path on the host.
    import_dir: Path | None = None


class MarketRuleSettings(BaseModel):
    """A paper market's order rules (live trading reads them from the exchange instead)."""

    qty_step: float = Field(0.001, gt=0.0)
    min_qty: float = Field(0.0, ge=0.0)
    min_notional: float = Field(5.0, ge=0.0)


class TradingSettings(BaseModel):
    """Order execution: sizing, risk limits, paper and live brokers (docs/TRADING.md)."""

    mode: Literal["paper", "live"] = "paper"
    currency: str = "USDT"
    # -- paper broker
    paper_balance: float = Field(10_000.0, gt=0.0)
    fee_bps: float = Field(5.5, ge=0.0)
    slippage_bps: float = Field(2.0, ge=0.0)
    paper_market: MarketRuleSettings = MarketRuleSettings()
    # Per-symbol overrides of ``paper_market``, e.g. {"BTC/USDT:USDT": {"qty_step": 0.001}}.
    paper_markets: dict[str, MarketRuleSettings] = Field(default_factory=dict)
    # -- sizing
    risk_per_trade: float = Field(0.005, gt=0.0, le=0.1)
    # Confidence scale: min_scale at the confidence threshold, rising linearly to 1 at confidence 1.
    confidence_min_scale: float = Field(0.5, ge=0.0, le=1.0)
    max_leverage: float = Field(2.0, gt=0.0)
    # -- risk limits (exposures are multiples of equity; 0 disables a count or cooldown limit)
    min_confidence: float | None = Field(None, ge=0.0, le=1.0)  # None: the signals' threshold
    max_open_positions: int = Field(10, ge=0)
    max_exposure_total: float = Field(6.0, gt=0.0)
    max_exposure_per_symbol: float = Field(2.0, gt=0.0)
    cooldown_minutes: int = Field(15, ge=0)
    daily_loss_limit: float = Field(0.03, gt=0.0, le=1.0)
    # -- live broker (keys only from the environment or ``secrets_file``; never in task arguments)
    api_key: SecretStr | None = None
    api_secret: SecretStr | None = None
    secrets_file: Path | None = None
    max_retries: int = Field(5, ge=0)
    retry_base_delay_s: float = Field(1.0, ge=0.0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    env: Literal["dev", "test", "prod"] = "dev"
    log_level: str = "INFO"
    log_json: bool = False
    data_dir: Path = Path("var")
    database_url: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    exchange: ExchangeSettings = ExchangeSettings()
    simulator: SimulatorSettings = SimulatorSettings()
    data: DataSettings = DataSettings()
    stream: StreamSettings = StreamSettings()
    ml_integration: MLIntegrationSettings = MLIntegrationSettings()
    model: ModelSettings = ModelSettings()
    decoding: DecodingSettings = DecodingSettings()
    celery: CelerySettings = CelerySettings()
    pipeline: PipelineSettings = PipelineSettings()
    trading: TradingSettings = TradingSettings()
    quality: QualitySettings = QualitySettings()
    mcp: McpSettings = McpSettings()

    @field_validator("log_level")
    @classmethod
    def _upper_level(cls, value: str) -> str:
        return value.upper()

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'mlsignals.db').as_posix()}"
        return self

    # pydantic-settings calls this hook with every source by keyword (so no parameter may be
    # renamed or dropped); the .env source is left out on purpose.
    @classmethod
    @override
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = config_file_path()
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        sources.append(file_secret_settings)
        return tuple(sources)


def config_file_path() -> Path | None:
    explicit = os.environ.get(CONFIG_FILE_ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(f"{CONFIG_FILE_ENV}={explicit} does not name a file")
        return path
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def redis_db_url(url: str, db: int) -> str:
    """``url`` with its database number replaced by ``db``."""
    base, _, tail = url.rpartition("/")
    return f"{base}/{db}" if tail.isdigit() else f"{url.rstrip('/')}/{db}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings_cache() -> None:
    get_settings.cache_clear()
