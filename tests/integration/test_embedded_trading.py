"""Signals become paper orders and positions in the embedded runtime, minute after minute.

What ``mlsignals run`` does with real minutes, replayed here: minute M's actionable signals become
pending paper orders; minute M+1's step (``tasks.orders.tick``, sent by ``publish`` before the new
intents) fills them at the open of the candle that opened at M; ``mlsignals trading status`` shows
the positions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cli.main import app as cli
from core.settings import Settings, reset_settings_cache
from core.timegrid import MINUTE_MS, as_utc, dt_to_ms, floor_minute, iso_minute, now_ms
from data.models import OrderIntent, TradingOrder, TradingPosition
from ml.model.schema import DIRECTION, RETURNS
from ml.outputs import ModelOutputs
from tasks.pipeline import start_minute
from tests.support.models import FixedModelServer
from tests.support.workers import backfill_live_history
from trading.states import ENTRY
from worker.app import app
from worker.embedded import embedded_runtime

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_SYMBOLS = 4


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(
        data_dir=tmp_path,
        data={"universe_size": N_SYMBOLS},
        pipeline={"symbols_per_task": 4, "candle_wait_seconds": 0},
        ml_integration={"signals": {"confidence_threshold": 0.34}},
        trading={"cooldown_minutes": 0},
    )
    backfill_live_history(s.database_url, N_SYMBOLS, end_lag_minutes=6, extra_minutes=30)
    return s


class LongModelServer(FixedModelServer):
    """The untrained model, with its primary horizon's LONG logit and predicted return raised (a 3 %
    move beats any trading cost): every signal is a LONG."""

    def predict(self, tensor: npt.NDArray[np.float32], version: str) -> ModelOutputs:
        out = super().predict(tensor, version)
        logits = out.outputs.copy()
        primary = Settings().decoding.primary_horizon
        logits[:, DIRECTION.start + 3 * primary] += 8.0
        logits[:, RETURNS.start + primary] = 0.5
        return ModelOutputs(out.version, logits, out.temperature, out.schema)


def run(minute: str) -> dict[str, object]:
    from worker.runtime import get_runtime

    outcome = start_minute(get_runtime(), minute, replay=True)
    result: dict[str, object] = app.AsyncResult(outcome["result_id"]).get(timeout=60)
    for task_id in [*result["order_tasks"], result["tick_task"]]:  # type: ignore[misc]
        app.AsyncResult(task_id).get(timeout=30)
    return result


def test_signals_become_paper_orders_then_positions(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = floor_minute(now_ms()) - 5 * MINUTE_MS
    with embedded_runtime(settings, beat=False) as rt:
        rt.models = LongModelServer()
        one = run(iso_minute(first))
        assert len(one["order_tasks"]) == N_SYMBOLS  # type: ignore[arg-type]
        engine = rt.store.engine
        with engine.connect() as conn:
            orders = conn.execute(select(TradingOrder)).all()
            intents = conn.execute(select(OrderIntent)).all()
        assert len(orders) >= 1
        assert {o.status for o in orders} == {"pending"}  # the candle opening at M has not closed yet
        assert {i.status for i in intents} <= {"submitted", "rejected"}

        run(iso_minute(first + MINUTE_MS))
        with engine.connect() as conn:
            placed = conn.execute(
                select(TradingOrder).where(TradingOrder.signal_minute == orders[0].signal_minute)
            ).all()
            positions = conn.execute(select(TradingPosition)).all()
        # A bar that crosses a stop or target closes the position in the same step, with an exit
        # order of its own: entries match positions one to one, exits match the closed ones.
        filled = [o for o in placed if o.purpose == ENTRY]
        exits = [o for o in placed if o.purpose != ENTRY]
        assert {o.status for o in placed} == {"filled"}
        assert len(positions) == len(filled)
        assert len(exits) == sum(1 for p in positions if p.status == "closed")
        # Filled at the open of the candle that opened at the signal's minute.
        assert {dt_to_ms(as_utc(p.opened_at)) for p in positions} == {first}
        still_open = sum(1 for p in positions if p.status == "open")

    monkeypatch.setenv("MLSIG_DATABASE_URL", settings.database_url)
    reset_settings_cache()  # the runtime above read the settings already
    status = CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["trading", "status"])
    assert status.exit_code == 0, status.output
    assert f"open positions ({still_open})" in status.output
