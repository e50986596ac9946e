"""The shadow challenger in the embedded runtime (real Celery canvas and workers, in-process broker,
the registry's model server): a replayed minute stores the challenger's signals under its version,
publishes them on the shadow channel only and never makes an order of them; a challenger that
breaks leaves the champion's minute intact."""

from __future__ import annotations

import queue
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from sqlalchemy import select

from core.settings import Settings
from core.timegrid import MINUTE_MS, floor_minute, iso_minute, now_ms
from data.models import OrderIntent, SignalRecord
from ml.predictor import Predictor
from ml.registry import Registry
from pipeline.clock import minute_dt
from pipeline.messages import HeartbeatMessage, SignalMessage, parse_message
from tasks.pipeline import start_minute
from tests.support.models import biased_model, identity_scaler, register_challenger
from tests.support.trading import order_queue_spy
from tests.support.workers import backfill_live_history, embedded_settings
from trading.intents import OrderIntentMessage
from worker.app import app
from worker.embedded import embedded_runtime
from worker.runtime import Runtime

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_SYMBOLS = 4


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s: Settings = embedded_settings(tmp_path, N_SYMBOLS)
    # History for minutes up to 90 minutes back (the outcomes test replays one an hour and a half ago).
    backfill_live_history(s.database_url, N_SYMBOLS, end_lag_minutes=6, extra_minutes=120)
    return s


@pytest.fixture
def versions(settings: Settings) -> tuple[str, str]:
    """A champion whose signals are all SHORT (identity scaler) and a challenger whose signals are all
    LONG (a scaler of its own): every signal of either is actionable."""
    registry = Registry(settings.model.registry_dir)
    champion, alias = registry.register(biased_model(0, "SHORT"), identity_scaler(), {"note": "champion"}, {})
    assert alias == "champion"
    return champion, register_challenger(registry, seed=1, direction="LONG")


@pytest.fixture
def intents_sent(monkeypatch: pytest.MonkeyPatch) -> list[OrderIntentMessage]:
    """A spy on the ``orders`` queue port: every intent the publish step sends."""
    return order_queue_spy(monkeypatch)


def replay(rt: Runtime, minute: str) -> dict[str, object]:
    outcome = start_minute(rt, minute, replay=True)
    assert outcome["status"] == "running", outcome
    result: dict[str, object] = app.AsyncResult(outcome["result_id"]).get(timeout=90)
    for task_id in [*result["order_tasks"], result["tick_task"]]:  # type: ignore[misc]
        app.AsyncResult(task_id).get(timeout=30)
    return result


def drain(inbox: queue.Queue[tuple[str, str]]) -> list[tuple[str, SignalMessage | HeartbeatMessage]]:
    out: list[tuple[str, SignalMessage | HeartbeatMessage]] = []
    while True:
        try:
            channel, raw = inbox.get_nowait()
        except queue.Empty:
            return out
        out.append((channel, parse_message(raw)))


def test_the_shadow_challengers_signals_never_reach_the_orders_queue(
    settings: Settings, versions: tuple[str, str], intents_sent: list[OrderIntentMessage]
) -> None:
    champion, challenger = versions
    minute = iso_minute(floor_minute(now_ms()) - 5 * MINUTE_MS)
    with embedded_runtime(settings, beat=False) as rt:
        assert rt.model_server().warm_up().endswith(f"shadow challenger {challenger}")
        inbox = rt.bus.subscribe()  # type: ignore[attr-defined]
        result = replay(rt, minute)

        when = minute_dt(minute)
        mine, shadow = rt.signals.for_minute(when, champion), rt.signals.for_minute(when, challenger)
        assert [r.direction for r in mine] == ["SHORT"] * N_SYMBOLS
        assert [r.direction for r in shadow] == ["LONG"] * N_SYMBOLS  # actionable, every one
        assert {r.symbol for r in shadow} == {r.symbol for r in mine}
        assert all(r.orders_enqueued_at is None and r.published_at is not None for r in shadow)

        # Orders: the champion's, and nothing else, at the port and in the intents table.
        assert {(i.model_version, i.direction) for i in intents_sent} == {(champion, "SHORT")}
        assert len(intents_sent) == len(result["order_tasks"]) == N_SYMBOLS  # type: ignore[arg-type]
        with rt.store.engine.connect() as conn:
            stored = conn.execute(select(OrderIntent.model_version, OrderIntent.symbol)).all()
            versions_stored = set(conn.execute(select(SignalRecord.model_version)).scalars())
        assert sorted(stored) == sorted((champion, r.symbol) for r in mine)
        assert versions_stored == {champion, challenger}

        # Pub/sub: the challenger's on the shadow channel only; the champion's never there.
        shadow_channel = settings.pipeline.shadow_channel
        got = drain(inbox)
        on_shadow = [m for c, m in got if c == shadow_channel]
        elsewhere = [m for c, m in got if c != shadow_channel]
        assert sorted(m.sequence for m in on_shadow if isinstance(m, SignalMessage)) == [r.id for r in shadow]
        assert len(on_shadow) == N_SYMBOLS
        assert {m.model_version for m in elsewhere} == {champion}
        [beat] = [m for m in elsewhere if isinstance(m, HeartbeatMessage)]
        assert (beat.signals, beat.actionable) == (N_SYMBOLS, N_SYMBOLS)

        # The ledger is the champion's; the shadow pass is timed apart.
        run = rt.ledger.get(when)
        assert run is not None
        assert (run.status, run.model_version, run.signals_made) == ("done", champion, N_SYMBOLS)
        assert run.note is None
        assert {"inference_forward", "inference_shadow_forward"} <= set(run.timings)
        assert result["shadow"] == {"version": challenger, "signals": N_SYMBOLS, "published": N_SYMBOLS}


@pytest.mark.parametrize("breaks", ["predict", "load"])
def test_a_challenger_that_breaks_leaves_the_champions_minute_intact(
    settings: Settings,
    versions: tuple[str, str],
    intents_sent: list[OrderIntentMessage],
    monkeypatch: pytest.MonkeyPatch,
    breaks: str,
) -> None:
    champion, challenger = versions
    if breaks == "load":
        folder = Path(settings.model.registry_dir) / "versions" / challenger
        (folder / "weights.pt").write_bytes(b"truncated")  # its manifest no longer matches
    else:
        original = Predictor.predict

        def predict(self: Predictor, inputs: npt.ArrayLike | torch.Tensor) -> npt.NDArray[np.float32]:
            if self.version == challenger:
                raise RuntimeError("challenger exploded")
            return original(self, inputs)

        monkeypatch.setattr(Predictor, "predict", predict)
    minute = iso_minute(floor_minute(now_ms()) - 4 * MINUTE_MS)
    with embedded_runtime(settings, beat=False) as rt:
        rt.model_server().warm_up()
        inbox = rt.bus.subscribe()  # type: ignore[attr-defined]
        result = replay(rt, minute)

        when = minute_dt(minute)
        run = rt.ledger.get(when)
        assert run is not None
        assert (run.status, run.signals_made) == ("done", N_SYMBOLS)
        reason = {"predict": "failed to predict: RuntimeError: challenger exploded", "load": "failed to load"}
        assert run.note is not None
        skipped = f"shadow challenger skipped: ChallengerUnavailableError: challenger {challenger}"
        assert run.note.startswith(skipped)
        assert reason[breaks] in run.note
        assert rt.shadow_failures == 1
        assert [r.model_version for r in rt.signals.for_minute(when)] == [champion] * N_SYMBOLS
        assert len(intents_sent) == len(result["order_tasks"]) == N_SYMBOLS  # type: ignore[arg-type]
        assert "shadow" not in result
        got = drain(inbox)
        assert not [m for c, m in got if c == settings.pipeline.shadow_channel]
        assert len([m for c, m in got if c == settings.pipeline.channel]) == N_SYMBOLS


def test_the_outcomes_ledger_scores_the_challenger_and_compare_pairs_it(
    settings: Settings, versions: tuple[str, str]
) -> None:
    """Its signals are scored like the champion's (every version of a minute), so that `mlsignals model
    compare` has the same (minute, symbol) pairs for both."""
    from quality.compare import compare_versions
    from quality.outcomes import OutcomeScorer
    from quality.rolling import load_outcomes

    champion, challenger = versions
    minute = iso_minute(floor_minute(now_ms()) - 90 * MINUTE_MS)  # its 15 m and 1 h horizons have closed
    with embedded_runtime(settings, beat=False) as rt:
        rt.model_server().warm_up()
        replay(rt, minute)
        configs = Registry(settings.model.registry_dir).model_config
        scorer = OutcomeScorer(rt.store.engine, settings, exchange=rt.source.name, configs=configs)
        report = scorer.score_due(since=minute_dt(minute))
        assert report.resolved >= 2 * 2 * N_SYMBOLS  # both versions, 15 m and 1 h at least
        for horizon in (1, 4):
            mine = load_outcomes(rt.store.engine, champion, horizon)
            shadow = load_outcomes(rt.store.engine, challenger, horizon)
            assert sorted(mine.symbol) == sorted(shadow.symbol)
            assert mine.size == N_SYMBOLS
            assert set(shadow.direction.tolist()) == {"LONG"}
            # The same realised market move, whoever predicted it.
            np.testing.assert_allclose(sorted(mine.neutral), sorted(shadow.neutral))
        compared = compare_versions(rt.store.engine, settings, champion, challenger, horizons=(1, 4))
        assert [h["pairs"] for h in compared["horizons"]] == [N_SYMBOLS, N_SYMBOLS]
        assert compared["horizons"][1]["challenger"]["directions"]["LONG"]["signals"] == N_SYMBOLS
