"""The ``orders`` tasks' own behaviour: retries of temporary failures, live reconciliation at start."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from celery.exceptions import Retry

from core.errors import BrokerUnavailableError
from tasks import orders
from tests.support.trading import intent
from worker import lifecycle


class StubTrader:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.reconciled = 0
        self.settings = SimpleNamespace(trading=SimpleNamespace(max_retries=3, retry_base_delay_s=0.5))

    def execute(self, message: Any) -> Any:
        if self.error is not None:
            raise self.error
        return SimpleNamespace(to_json=lambda: {"status": "submitted"})

    def reconcile(self) -> dict[str, int]:
        self.reconciled += 1
        if self.error is not None:
            raise self.error
        return {"orders_updated": 0}


def runtime_with(trader: StubTrader) -> Any:
    return SimpleNamespace(trader=lambda: trader)


def test_a_temporary_failure_is_retried_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    trader = StubTrader(BrokerUnavailableError("exchange unreachable"))
    monkeypatch.setattr(orders, "get_runtime", lambda: runtime_with(trader))
    asked: list[dict[str, Any]] = []

    def retry(**options: Any) -> Exception:
        asked.append(options)
        return Retry("retry", options["exc"])

    # Called directly, not through a broker: the test never touches the app's result backend.
    monkeypatch.setattr(orders.execute, "retry", retry)
    doc = intent().model_dump(mode="json")
    for attempt, delay in [(0, 0.5), (2, 2.0)]:
        orders.execute.push_request(retries=attempt)
        try:
            with pytest.raises(Retry):
                orders.execute(doc)
        finally:
            orders.execute.pop_request()
        assert asked[-1]["countdown"] == delay  # 0.5 s doubled per attempt
        assert asked[-1]["expires"] is None  # an order in doubt is reconciled even after its minute
    orders.execute.push_request(retries=3)  # max_retries reached: the error itself
    try:
        with pytest.raises(BrokerUnavailableError):
            orders.execute(doc)
    finally:
        orders.execute.pop_request()


def test_the_task_returns_the_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(orders, "get_runtime", lambda: runtime_with(StubTrader()))
    assert orders.execute(intent().model_dump(mode="json")) == {"status": "submitted"}


def orders_worker() -> Any:
    queues = SimpleNamespace(consume_from={"orders": object()})
    return SimpleNamespace(app=SimpleNamespace(amqp=SimpleNamespace(queues=queues)))


def test_a_live_orders_worker_reconciles_when_it_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSIG_TRADING__MODE", "live")
    trader = StubTrader()
    monkeypatch.setattr(lifecycle, "get_runtime", lambda: runtime_with(trader))
    lifecycle._preload_model(sender=orders_worker())
    assert trader.reconciled == 1
    # A failing reconciliation is logged; the worker still starts.
    failing = StubTrader(BrokerUnavailableError("down"))
    monkeypatch.setattr(lifecycle, "get_runtime", lambda: runtime_with(failing))
    lifecycle._preload_model(sender=orders_worker())
    assert failing.reconciled == 1


def test_a_paper_orders_worker_does_not_reconcile(monkeypatch: pytest.MonkeyPatch) -> None:
    trader = StubTrader()
    monkeypatch.setattr(lifecycle, "get_runtime", lambda: runtime_with(trader))
    lifecycle._preload_model(sender=orders_worker())
    assert trader.reconciled == 0
