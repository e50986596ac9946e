"""ml-model: the model registry for an agent. Versions and their aliases, one version's facts with the
check of its files, an evaluation on stored candles (long-running, with progress notifications),
champion against challenger on the same live minutes, and (only with ``mcp.allow_write``, audited)
promotion and rollback.

Read tools: ``list_models``, ``show_model``, ``evaluate_model``, ``compare_models``. Write tools:
``promote`` (not destructive: the champion it replaces goes onto the rollback stack; idempotent:
promoting the champion again changes nothing) and ``rollback`` (destructive: it overwrites the
challenger alias with the demoted champion and pops the rollback stack; not idempotent: a second call
goes one more step back). Both lift a quality-breaker halt of the champion they replace, as
``mlsignals model promote`` / ``rollback`` do (quality/champion.py).

``evaluate_model`` runs ``ml.jobs.evaluate_version`` in a worker thread (the server keeps answering
other calls meanwhile), one evaluation at a time, and leaves the version's stored metrics as they
are: a read-only tool does not re-sign a version's files (``mlsignals model evaluate`` stores them).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

import anyio
import anyio.from_thread
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

from core.settings import Settings
from core.timegrid import iso_minute
from mcp_servers.common import check_limit, check_range, parse_time
from mcp_servers.domain import Domain
from mcp_servers.serving import HttpOptions, new_server
from ml.catalog import HorizonFigures, VersionDetails, VersionSummary

if TYPE_CHECKING:
    from quality.champion import ChampionChange as DomainChange

# ml.catalog is light (no torch); ml.jobs, ml.registry (torch) and quality.* are imported inside the
# tools, so that every server answers `initialize` and `tools/list` without loading torch.

INSTRUCTIONS = (
    "The model registry of the mlsignals system: list_models (every version with its aliases and "
    "stored test figures), show_model (one version: training range, config, metrics, file check), "
    "evaluate_model (re-evaluate a version on stored candles; long-running, reports progress; the "
    "stored metrics stay as they are), compare_models (champion against challenger on the same live "
    "minutes). With writes enabled: promote (make a version the champion) and rollback (restore the "
    "previous champion); both are audited. Promotion is a human decision: compare before promoting."
)

VersionRef = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        description="A version id (e.g. 20261204T080000Z-1a2b3c4d) or an alias: champion, challenger, "
        "previous (the champion a rollback would restore).",
    ),
]


# -- results ---------------------------------------------------------------------------------------
class ModelList(BaseModel):
    registry_versions: int = Field(description="How many versions the registry holds.")
    champion: str | None
    challenger: str | None
    rollback_to: str | None = Field(description="The version rollback would make champion again.")
    versions: list[VersionSummary] = Field(description="Newest first, at most `limit`.")
    truncated: bool = Field(description="True when older versions were left out (raise `limit`).")


class Headline(BaseModel):
    """One period's headline at the primary horizon (ml.evaluation.summarize)."""

    horizon_bars: int
    samples: int | None = None
    network_ic: float | None = None
    network_ic_se: float | None = None
    best_baseline: str | None = None
    best_baseline_ic: float | None = None
    difference: float | None = Field(None, description="Network IC minus the best baseline's (paired).")
    difference_se: float | None = None
    beats_best_baseline: bool = False
    accuracy: float | None = None
    majority_accuracy: float | None = None
    ece: dict[str, float | None] = Field(default_factory=dict, description="Per horizon in bars.")
    actionable_share: float | None = None
    long_share: float | None = None
    short_share: float | None = None
    net_return: dict[str, float | None] = Field(default_factory=dict, description="Neutral, per direction.")
    net_return_raw: dict[str, float | None] = Field(default_factory=dict)
    backtest_sharpe: float | None = None
    backtest_sharpe_neutral: float | None = None


class PeriodResult(BaseModel):
    available: bool = True
    reason: str | None = Field(None, description="Why the period was not evaluated.")
    start: str | None = Field(None, description="The held-out window (ISO); None for the test split.")
    end: str | None = None
    samples: int | None = None
    symbols: int | None = None
    first_anchor: str | None = None
    last_anchor: str | None = None
    missing_symbols: list[str] = Field(default_factory=list)
    horizons: list[HorizonFigures] = Field(default_factory=list, description="Per horizon.")
    headline: Headline | None = None


class Evaluation(BaseModel):
    version: str
    device: str
    seconds: float
    primary_horizon_bars: int
    baselines: str | None = Field(None, description="stored (with the version) or refitted.")
    metrics_stored: bool = Field(False, description="Always false: the stored metrics are left as they are.")
    test: PeriodResult
    holdout: PeriodResult | None = Field(None, description="The days before the training data; None if 0.")


class DirectionFigures(BaseModel):
    signals: int
    hit_rate: float | None = None
    mean_net_return: float | None = None
    mean_net_return_raw: float | None = None


class IcFigures(BaseModel):
    mean: float | None = None
    se: float | None = None
    t: float | None = None
    minutes: int = 0
    periods: int = 0
    lag: int = 0


class PairedIc(IcFigures):
    min_periods: int = Field(description="Non-overlapping horizons needed before an SE is given.")


class VersionFigures(BaseModel):
    signals: int
    minutes: int
    first_ms: int | None = None
    last_ms: int | None = None
    actionable: int
    hit_rate: float | None = None
    directions: dict[str, DirectionFigures]
    ic: IcFigures
    ece: float | None = None
    brier: float | None = None


class HorizonComparison(BaseModel):
    horizon: str
    horizon_bars: int
    pairs: int = Field(description="(minute, symbol) pairs both versions have resolved outcomes for.")
    minutes: int
    champion: VersionFigures
    challenger: VersionFigures
    paired_ic: PairedIc = Field(description="Per minute, the challenger's IC minus the champion's.")


class Comparison(BaseModel):
    champion: str
    challenger: str
    since: str
    horizons: list[HorizonComparison]


class ChampionChange(BaseModel):
    action: Literal["promote", "rollback", "unchanged"]
    champion: str
    replaced: str | None = Field(description="The champion before the change (None if none or unchanged).")
    challenger: str | None
    rollback_to: str | None = Field(description="What a rollback would restore now.")
    breaker_lifted: bool = Field(description="A quality-breaker halt of the replaced champion was lifted.")


# -- evaluation progress ---------------------------------------------------------------------------
class ToolProgress:
    """``ml.progress.Progress`` of a tool call as MCP progress notifications: ``progress`` is the stages
    done plus the current stage's share, ``total`` the stages expected (raised if more come), so the
    value only grows as the protocol requires. Called in the worker thread; ``send`` blocks until the
    notification is handed to the event loop. Updates within ``every_s`` of the last are dropped,
    except a stage's start and its end."""

    def __init__(self, send: Callable[[float, float, str], None], expected: int, every_s: float = 0.25):
        self._send = send
        self.total = float(expected)
        self.every_s = every_s
        self._stage = -1
        self._name = ""
        self._steps = 0
        self._last_value = 0.0
        self._last_sent = 0.0

    def start(self, task: str, total: int) -> None:
        self._stage += 1
        self._name, self._steps = task, max(int(total), 0)
        self.total = max(self.total, self._stage + 1.0)
        self._emit(float(self._stage), f"{task}: started", force=True)

    def update(self, completed: int, **info: float) -> None:  # noqa: ARG002 - figures are not sent
        if self._stage < 0:
            return
        share = min(completed / self._steps, 1.0) if self._steps else 1.0
        done = share >= 1.0
        self._emit(self._stage + share, f"{self._name}: {completed}/{self._steps}", force=done)

    def note(self, message: str) -> None:
        self._emit(self._last_value, message, force=True)

    def finish(self, message: str) -> None:
        self._emit(self.total, message, force=True)

    def _emit(self, value: float, message: str, *, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_sent < self.every_s:
            return
        self._last_value = max(self._last_value, value)
        self._last_sent = now
        self._send(self._last_value, self.total, message)


def expected_stages(has_baselines: bool, holdout_days: float) -> int:
    """The stages ``ml.jobs.evaluate_version`` reports: reading, features, (refitted baselines,) the
    test split; then (a backfill when candles are missing,) reading, features and the held-out period."""
    return 3 + (0 if has_baselines else 1) + (3 if holdout_days > 0 else 0)


# -- conversions -----------------------------------------------------------------------------------
def _iso(ms: Any) -> str | None:
    return iso_minute(int(ms)) if isinstance(ms, int | float) and not isinstance(ms, bool) else None


def period_result(report: Mapping[str, Any], primary: int) -> PeriodResult:
    """A period of the (JSON-ready) metrics without its series: the figures per horizon and the
    primary horizon's headline; an unavailable held-out period with its reason."""
    from ml.catalog import period_figures
    from ml.evaluation import summarize

    window = {"start": report.get("start"), "end": report.get("end")}
    if not report.get("available", True):
        return PeriodResult(available=False, reason=report.get("reason"), **window)
    return PeriodResult(
        **window,
        samples=report.get("samples"),
        symbols=report.get("symbols"),
        first_anchor=_iso(report.get("first_anchor_ms")),
        last_anchor=_iso(report.get("last_anchor_ms")),
        missing_symbols=list(report.get("missing_symbols") or []),
        horizons=period_figures(report),
        headline=Headline.model_validate(_finite(summarize(report, primary))),
    )


def _finite(value: Any) -> Any:
    from ml.evaluation import json_ready

    return json_ready(value)


class ModelTools:
    """The tools' bodies, on one server's settings and handles; ``build`` registers them."""

    def __init__(self, settings: Settings, domain: Domain) -> None:
        self.settings = settings
        self.domain = domain
        # One evaluation at a time: it takes every torch thread (or the GPU) it is given.
        self.evaluating = threading.Lock()

    def resolve(self, ref: str) -> str:
        """A stored version id for ``ref``, or a tool error naming what the registry holds."""
        from ml.catalog import known_refs, rollback_target
        from ml.registry import RegistryError

        registry = self.domain.registry
        if ref == "previous":
            target = rollback_target(registry)
            if target is None:
                raise ToolError(f"no previous champion to name: {known_refs(registry)}")
            return target
        try:
            version: str | None = registry.resolve(ref)
        except RegistryError:
            version = None
        # Membership, not only a folder test: a reference is a name in the registry, never a path.
        if version is None or version not in registry.versions():
            alias = ref in ("champion", "challenger")
            what = f"no {ref} alias is set" if alias else f"unknown version {ref!r}"
            raise ToolError(f"{what} in the model registry: {known_refs(registry)}")
        return version

    def list_models(
        self,
        limit: Annotated[
            int, Field(ge=1, description="The most versions returned, newest first (at most mcp.max_rows).")
        ] = 100,
    ) -> ModelList:
        """Every version in the model registry, newest first: when it was registered, its aliases
        (champion, challenger, previous = what rollback would restore), its training range and symbol
        count, and its stored test-split figures per horizon (accuracy against the majority class,
        IC per time). At most `limit` versions (<= mcp.max_rows); `truncated` says when older ones
        were left out. Reads the versions' JSON files only."""
        from ml.catalog import rollback_target, version_summaries

        check_limit(limit, self.settings)
        registry = self.domain.registry
        newest = [_with_previous(s) for s in reversed(version_summaries(registry))]
        aliases = registry.aliases()
        return ModelList(
            registry_versions=len(newest),
            champion=aliases.get("champion"),
            challenger=aliases.get("challenger"),
            rollback_to=rollback_target(registry),
            versions=newest[:limit],
            truncated=len(newest) > limit,
        )

    def show_model(self, version: VersionRef) -> VersionDetails:
        """One version (id or alias): when it was registered, its aliases, training.json without the
        per-epoch history (data range, symbols, split, recipe, fit), config.json (architecture and
        label rules), the stored metrics' headline, and `verification`: every file checked against
        the sha256 in its manifest (`ok` false with the reason when a file was changed). An unknown
        version or unset alias is an error that lists what the registry holds."""
        from ml.catalog import version_details

        details = version_details(self.domain.registry, self.resolve(version))
        details.summary = _with_previous(details.summary)
        return details

    async def evaluate_model(
        self,
        version: VersionRef,
        ctx: Context,
        holdout_days: Annotated[
            float,
            Field(
                ge=0,
                description="Days before the version's training data to evaluate too (0: the test "
                "split only). At most mcp.max_range_days and mcp.max_backfill_days: missing candles of "
                "that period are backfilled from the configured source first.",
            ),
        ] = 0.0,
    ) -> Evaluation:
        """Re-evaluate a stored version on stored candles: its own test split and, with
        `holdout_days`, the days before its training data (a period it never saw). Returns per period
        the figures per horizon and the primary horizon's headline: network IC with its Newey-West
        SE against the best linear baseline, accuracy against the majority class, ECE, the signal
        mix and net returns, the backtest's Sharpe. No series. Long-running (seconds to minutes):
        sends progress notifications per stage when the call carries a progress token. One
        evaluation at a time per server; the version's stored metrics are not changed."""
        limit = min(self.settings.mcp.max_range_days, self.settings.mcp.max_backfill_days)
        if holdout_days > limit:
            raise ToolError(
                f"holdout_days {holdout_days:g} is above the limit of {limit:g} days "
                "(mcp.max_range_days / mcp.max_backfill_days)"
            )
        resolved = self.resolve(version)
        training = self.domain.registry.info(resolved).training
        missing = [k for k in ("exchange", "symbols", "candles", "split", "recipe") if k not in training]
        if missing:
            raise ToolError(
                f"version {resolved} has no training record to evaluate it on (its training.json lacks "
                f"{', '.join(missing)}): only a version trained on stored candles can be evaluated"
            )
        if not self.evaluating.acquire(blocking=False):
            raise ToolError("another evaluation is running on this server: call again when it is done")
        try:
            return await self._evaluate(resolved, holdout_days, ctx)
        finally:
            self.evaluating.release()

    async def _evaluate(self, version: str, holdout_days: float, ctx: Context) -> Evaluation:
        from ml.catalog import evaluate_unstored
        from ml.predictor import select_device

        settings = self.settings
        # Without stored baselines the evaluation refits them: one stage more. (Loading verifies the file.)
        has_baselines = (self.domain.registry.versions_dir / version / "baselines.npz").is_file()

        def send(value: float, total: float, message: str) -> None:
            anyio.from_thread.run(ctx.report_progress, value, total, message)

        progress = ToolProgress(send, expected_stages(has_baselines, holdout_days))

        def work() -> tuple[dict[str, Any], float]:
            began = time.perf_counter()
            _, metrics = evaluate_unstored(
                settings,
                self.domain.store,
                version,
                device=settings.model.device,
                progress=progress,
                holdout_days=holdout_days,
            )
            progress.finish(f"{version} evaluated")
            return _finite(metrics), time.perf_counter() - began

        await ctx.report_progress(0.0, progress.total, f"loading {version}")
        # The forward passes and the statistics hold the GIL only in part: in a worker thread the
        # event loop keeps serving other requests (and this call's notifications).
        metrics, seconds = await anyio.to_thread.run_sync(work)
        primary = int(metrics["decoding"]["primary_horizon"])
        holdout = metrics.get("holdout") if holdout_days > 0 else None
        return Evaluation(
            version=version,
            device=str(select_device(settings.model.device)),
            seconds=round(seconds, 3),
            primary_horizon_bars=int(metrics["summary"]["primary_horizon_bars"]),
            baselines=(metrics.get("baselines") or {}).get("source"),
            test=period_result(metrics["test"], primary),
            holdout=None if holdout is None else period_result(holdout, primary),
        )

    def compare_models(
        self,
        horizon: Annotated[
            str | None, Field(description="15m, 1h, 4h or 12h; none: all four.", max_length=8)
        ] = None,
        since: Annotated[
            str | None,
            Field(
                description="ISO 8601 time: the minutes from then on (default: the last "
                "quality.window_days; at most mcp.max_range_days ago).",
                max_length=40,
            ),
        ] = None,
    ) -> Comparison:
        """The champion against the challenger (which runs in shadow) on the (minute, symbol) pairs
        both have resolved outcomes for, per horizon: each version's IC per minute with its
        Newey-West SE, hit rate and mean net return per direction, ECE and Brier, and the paired IC
        test (challenger minus champion). No series. An unset champion or challenger alias is an
        error. Promoting stays a decision: `promote` (with writes enabled)."""
        from ml.catalog import known_refs
        from ml.outputs import horizon_label
        from ml.registry import RegistryError
        from quality.champion import compare_champion
        from quality.compare import without_series
        from quality.outcomes import HORIZONS

        settings = self.settings
        labels = {horizon_label(h, settings.data.bar_minutes): h for h in HORIZONS}
        if horizon is not None and horizon not in labels:
            raise ToolError(f"unknown horizon {horizon!r}: one of {', '.join(labels)}")
        now = datetime.now(UTC)
        start = parse_time(since, "since", default=now - timedelta(days=settings.quality.window_days))
        check_range(start, now, settings, "comparison period")
        registry = self.domain.registry
        try:
            report = compare_champion(
                self.domain.engine,
                settings,
                registry,
                horizons=(labels[horizon],) if horizon else HORIZONS,
                since=start,
            )
        except RegistryError as exc:
            raise ToolError(f"{exc}: {known_refs(registry)}") from None
        return Comparison.model_validate(_finite(without_series(report)))

    def promote(self, version: VersionRef) -> ChampionChange:
        """Make a version (id or alias, e.g. challenger) the champion: the model that trades from the
        next minute on. The champion it replaces goes onto the rollback stack (`rollback` restores
        it); a quality-breaker halt of that champion is lifted. Promoting the current champion
        changes nothing (action "unchanged"). The version's files are verified first. Audited."""
        from quality.champion import promote as promote_champion

        version = self.resolve(version)
        registry = self.domain.registry
        return self._change(
            promote_champion(self.domain.engine, self.settings, registry, version, if_needed=True)
        )

    def rollback(self) -> ChampionChange:
        """Restore the previous champion (the top of the rollback stack); the demoted champion becomes
        the challenger, replacing the challenger alias. A quality-breaker halt of the demoted one is
        lifted. Each call goes one step further back; with no previous champion it is an error.
        Audited."""
        from quality.champion import rollback as rollback_champion

        return self._change(rollback_champion(self.domain.engine, self.settings, self.domain.registry))

    def _change(self, change: DomainChange) -> ChampionChange:
        from ml.catalog import rollback_target

        return ChampionChange(**dataclasses.asdict(change), rollback_to=rollback_target(self.domain.registry))


def _with_previous(summary: VersionSummary) -> VersionSummary:
    """The summary with "previous" among its aliases when a rollback would restore it."""
    if not summary.previous_champion or "previous" in summary.aliases:
        return summary
    return summary.model_copy(update={"aliases": [*summary.aliases, "previous"]})


def build(settings: Settings, domain: Domain, http: HttpOptions | None = None) -> MCPServer:
    server, tools = new_server("model", INSTRUCTIONS, settings, domain, http)
    impl = ModelTools(settings, domain)
    tools.read(title="List model versions")(impl.list_models)
    tools.read(title="Show one model version")(impl.show_model)
    tools.read(title="Evaluate a model version")(impl.evaluate_model)
    tools.read(title="Compare champion and challenger")(impl.compare_models)
    # promote only adds (the replaced champion goes onto the rollback stack) and promoting the
    # champion again changes nothing; rollback overwrites the challenger alias and pops the stack,
    # and each call goes one step further back.
    tools.write(title="Promote a model version", destructive=False, idempotent=True)(impl.promote)
    tools.write(title="Roll back the champion", destructive=True, idempotent=False)(impl.rollback)
    return server
