"""``mlsignals run``: the embedded default, beat and every worker in this process (DESIGN.md §7)."""

from __future__ import annotations

import contextlib
import queue
import time
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from cli.common import clean_errors, console, settings
from core.errors import MLSignalsError
from core.timegrid import MINUTE_MS, floor_minute, iso_minute, now_ms, parse_minute

if TYPE_CHECKING:
    from rich.console import Console

    from core.settings import Settings
    from ml.background import BackgroundTraining
    from ml.bootstrap import BootstrapResult
    from pipeline.messages import HeartbeatMessage, SignalMessage
    from worker.runtime import Runtime

ROWS = 20


class SignalBoard:
    """The newest signal per symbol, the last heartbeat, and a one-line log per minute."""

    def __init__(self) -> None:
        self.latest: dict[str, SignalMessage] = {}
        self.heartbeats: list[HeartbeatMessage] = []

    def feed(self, raw: str) -> HeartbeatMessage | None:
        from pipeline.messages import HeartbeatMessage, parse_message

        message = parse_message(raw)
        if isinstance(message, HeartbeatMessage):
            self.heartbeats.append(message)
            return message
        self.latest[message.symbol] = message
        return None

    def table(self) -> Table:
        last = self.heartbeats[-1] if self.heartbeats else None
        title = (
            "waiting for the first minute…"
            if last is None
            else (
                f"minute {last.minute:%Y-%m-%d %H:%M} UTC: {last.status}, {last.signals} signals, "
                f"{last.actionable} actionable, {last.failed} failed, model {last.model_version}"
            )
        )
        table = Table(title=title, title_justify="left")
        for name in ("symbol", "direction", "confidence", "entry", "stop-loss", "take-profit", "minute"):
            table.add_column(name, no_wrap=True)
        ranked = sorted(
            self.latest.values(), key=lambda m: (m.direction == "NEUTRAL", -m.confidence, m.symbol)
        )[:ROWS]
        for m in ranked:
            table.add_row(
                m.symbol,
                m.direction,
                f"{m.confidence:.3f}",
                f"{m.entry_price:.6g}",
                "-" if m.stop_loss is None else f"{m.stop_loss:.6g}",
                "-" if m.take_profit is None else f"{m.take_profit:.6g}",
                f"{m.minute:%H:%M}",
            )
        return table


def minute_line(beat: HeartbeatMessage, seconds: float | None) -> str:
    took = "" if seconds is None else f" in {seconds:.2f} s"
    return (
        f"{beat.minute:%Y-%m-%d %H:%M} {beat.status}: {beat.signals} signals "
        f"({beat.actionable} actionable, {beat.failed} failed){took}"
    )


def missed_line(missed: list[HeartbeatMessage]) -> str:
    first, last = missed[0].minute, missed[-1].minute
    count = len(missed)
    return f"{first:%Y-%m-%d %H:%M} .. {last:%H:%M} missed: {count} minutes without a run ({missed[0].note})"


def ensure_alive(rt: Runtime) -> None:
    """Stop with a clear error (and a non-zero exit) when an embedded worker thread died: a
    supervisor (systemd, Compose) then restarts the whole process."""
    problem = rt.health() if rt.health is not None else None
    if problem is not None:
        raise MLSignalsError(f"embedded pipeline stopped: {problem}; restart `mlsignals run`")


def first_run_line(result: BootstrapResult, primary_horizon: int) -> str | None:
    """What the first-run training gave, or None when a champion was already there."""
    if not result.trained or result.outcome is None:
        return None
    from ml.background import held_out_ic, recipe_name

    outcome = result.outcome
    recipe = outcome.training.get("recipe") or {}
    test = outcome.metrics.get("test") or {}
    ic = held_out_ic(test, primary_horizon)
    quality = ""
    if ic is not None:
        bars = test["horizons"][primary_horizon].get("horizon_bars", "?")
        quality = f", held-out IC per time at {bars} bars {ic:+.4f}"
    return (
        f"first run: champion {result.version} trained with the {recipe_name(outcome.training)} recipe "
        f"in {result.seconds:.0f} s ({recipe.get('days', '?')} days, {recipe.get('epochs', '?')} "
        f"epochs{quality})"
    )


def start_background(s: Settings, enabled: bool, out: Console) -> BackgroundTraining | None:
    """Start the full recipe's training when the champion is the quick first-run model (and no
    full-recipe version exists yet); says what it does either way."""
    from ml import background
    from ml.jobs import registry_for

    recipe = background.BACKGROUND_RECIPE
    quick = background.upgrade_needed(registry_for(s), recipe)
    if quick is None:
        return None
    if not enabled:
        out.print(
            f"the champion {quick} is the quick first-run model; background training of the full "
            "recipe is off (--no-background-training)",
            highlight=False,
        )
        return None
    job = background.BackgroundTraining.start(s, recipe, target=background.BACKGROUND_TARGET)
    out.print(
        f"background training started (pid {job.pid}, nice +{background.NICE}, log {job.log_path}): "
        f"the full recipe, promoted if it beats the quick model {quick} on the same held-out samples; "
        "the quick model serves meanwhile",
        highlight=False,
    )
    return job


def background_lines(job: BackgroundTraining | None) -> list[str]:
    if job is None:
        return []
    return [
        f"background: {e.text}" if e.kind == "note" else f"background training {e.kind}: {e.text}"
        for e in job.poll()
    ]


@clean_errors
def run(
    minutes: int = typer.Option(
        0, "--minutes", min=0, help="Stop after this many minutes (0: run until Ctrl-C)."
    ),
    replay: bool = typer.Option(
        False, "--replay", help="Run past minutes back to back, as fast as possible."
    ),
    start: str | None = typer.Option(None, help="First minute of a replay (ISO, default: MINUTES ago)."),
    symbols: int | None = typer.Option(
        None, "--symbols", min=1, help="Use the first N symbols of the universe."
    ),
    background_training: bool = typer.Option(
        True,
        "--background-training/--no-background-training",
        help="When the champion is the quick first-run model, train the full recipe in a background "
        "process and promote it if it is better.",
    ),
) -> None:
    """Run the minute pipeline embedded: in-process broker, SQLite and the simulator by default.

    Without a champion, the first run trains a quick model first (a few minutes), then the full
    recipe in the background while the minutes run."""
    from ml.bootstrap import ensure_champion, ensure_live_history
    from ml.training import QUICK_RECIPE

    s = settings()
    if symbols:
        s.data.universe_size = symbols
    result = ensure_champion(s, recipe=QUICK_RECIPE, console=console)
    trained = first_run_line(result, s.decoding.primary_horizon)
    if trained is not None:
        console.print(trained, highlight=False)
    history = ensure_live_history(s)
    if history.failed:
        names = ", ".join(sorted(history.failed))
        console.print(
            f"no usable history for {len(history.failed)} symbols (quarantined): {names}", highlight=False
        )
    if replay:
        count = minutes or 10
        first = parse_minute(start) if start else floor_minute(now_ms()) - count * MINUTE_MS
        _replay(s, first, count)
        return
    _live(s, minutes, background_training)


def _live(s: Settings, minutes: int, background_training: bool) -> None:
    """The live minutes until MINUTES have run (0: until Ctrl-C), with the background training's
    news printed as it comes."""
    from rich.live import Live

    from pipeline.ledger import SKIPPED_LATE
    from worker.embedded import embedded_runtime

    with contextlib.ExitStack() as stack:
        rt = stack.enter_context(embedded_runtime(s, beat=True, stream=True))
        # The champion's feed only: a challenger's shadow signals (pipeline.shadow_channel) and the
        # per-symbol copies are not the table's.
        inbox = rt.bus.subscribe([s.pipeline.channel, s.pipeline.heartbeat_channel])  # type: ignore[attr-defined]
        board = SignalBoard()
        done = 0
        missed: list[HeartbeatMessage] = []
        console.print(
            f"embedded run: {len(rt.symbols())} symbols from {rt.source.name}, database {s.database_url}; "
            "the first minute starts at the next minute boundary",
            highlight=False,
        )
        # Entered after the runtime: stopped (terminated and waited for) before the runtime stops.
        job = start_background(s, background_training, console)
        if job is not None:
            stack.enter_context(job)
        model: str | None = None
        with Live(board.table(), console=console, refresh_per_second=2, transient=False) as live:
            try:
                while not minutes or done < minutes:
                    for line in background_lines(job):
                        live.console.print(line, highlight=False)
                    try:
                        _channel, raw = inbox.get(timeout=0.5)
                    except queue.Empty:
                        ensure_alive(rt)
                        continue
                    beat = board.feed(raw)
                    live.update(board.table())
                    if beat is not None and beat.status == "missed":
                        # The ledger records minutes nobody ran (this process was down): one line
                        # for the lot, and they do not count as minutes run.
                        missed.append(beat)
                    elif beat is not None:
                        if missed:
                            live.console.print(missed_line(missed), highlight=False)
                            missed.clear()
                        if beat.model_version and beat.model_version != model:
                            if model is not None:
                                live.console.print(
                                    f"model {beat.model_version} serves from this minute on", highlight=False
                                )
                            model = beat.model_version
                        run = rt.ledger.get(beat.minute)
                        total = (run.timings or {}).get("minute_total") if run else None
                        live.console.print(minute_line(beat, total), highlight=False)
                        # A minute skipped because it started too late (e.g. right after a long
                        # first-run training) produced nothing: it is not one of the MINUTES asked.
                        done += beat.status != SKIPPED_LATE
            except KeyboardInterrupt:
                pass
            for line in background_lines(job):
                live.console.print(line, highlight=False)
            if job is not None and not job.finished:
                live.console.print(
                    "background training stopped with the run; the next run starts it again",
                    highlight=False,
                )


def _replay(s: Settings, first: int, count: int) -> None:
    """Run COUNT minutes from FIRST back to back: each one's ``run_minute`` task, sent through the
    embedded broker like beat sends it, and its whole chord waited for before the next minute."""
    from worker.embedded import embedded_runtime

    with embedded_runtime(s, beat=False) as rt:
        # The champion's feed only: a challenger's shadow signals (pipeline.shadow_channel) and the
        # per-symbol copies are not the table's.
        inbox = rt.bus.subscribe([s.pipeline.channel, s.pipeline.heartbeat_channel])  # type: ignore[attr-defined]
        board = SignalBoard()
        began = time.perf_counter()
        duplicates = 0
        for i in range(count):
            minute = iso_minute(first + i * MINUTE_MS)
            tick = time.perf_counter()
            outcome = replay_minute(minute, s.pipeline.minute_deadline_seconds)
            if "result_id" not in outcome:
                duplicates += outcome["status"] == "duplicate"
                console.print(f"{minute}: {outcome['status']} {outcome.get('note', '')}", highlight=False)
                continue
            while True:
                try:
                    _channel, raw = inbox.get_nowait()
                except queue.Empty:
                    break
                beat = board.feed(raw)
                if beat is not None:
                    console.print(minute_line(beat, time.perf_counter() - tick), highlight=False)
        console.print(board.table())
        total = time.perf_counter() - began
        console.print(f"replayed {count} minutes in {total:.1f} s ({total / max(count, 1):.2f} s per minute)")
        if duplicates == count:
            console.print("every minute was already run (the pipeline_runs ledger holds it): nothing new")
        elif not board.heartbeats:
            raise MLSignalsError("replay produced no minute")


def replay_minute(minute: str, deadline_s: float) -> dict[str, Any]:
    """Send ``tasks.pipeline.run_minute`` for a past MINUTE and wait for it, then for its chord.

    Returns the task's outcome: ``{"minute", "status", "run", "symbols", "result_id"}`` once
    dispatched, or ``{"minute", "status"[, "note"]}`` when the minute did not run (a duplicate, no
    champion). Task errors are raised here. Waiting needs a runner that may join results (the
    embedded runtime's block allows it; ``allow_join_result`` says so where this runs).
    """
    from celery.result import allow_join_result

    from tasks.pipeline import run_minute
    from worker.app import app

    with allow_join_result():
        outcome: dict[str, Any] = run_minute.apply_async(kwargs={"minute": minute, "replay": True}).get(
            timeout=deadline_s, propagate=True
        )
        if "result_id" in outcome:
            app.AsyncResult(outcome["result_id"]).get(timeout=deadline_s, propagate=True)
    return outcome
