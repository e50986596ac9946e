"""The ``orders`` tasks' own behaviour: retries of temporary failures, live reconciliation at start."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from celery.canvas import Signature
from celery.exceptions import Retry

from core.errors import BrokerUnavailableError, OrderRejectedError
from core.settings import get_settings
from tasks import orders
from tests.support.trading import intent
from worker import lifecycle


class StubTrader:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.reconciled = 0

    def execute(self, _message: Any) -> Any:
        if self.error is not None:
            raise self.error
        return SimpleNamespace(to_json=lambda: {"status": "submitted"})

    def tick(self, minute_ms: int) -> Any:
        return SimpleNamespace(to_json=lambda: {"minute_ms": minute_ms})

    def reconcile(self) -> dict[str, int]:
        self.reconciled += 1
        if self.error is not None:
            raise self.error
        return {"orders_updated": 0}


def runtime_with(trader: StubTrader) -> Any:
    return SimpleNamespace(trader=lambda: trader)


def push_worker_request(task: Any, doc: dict[str, Any], retries: int) -> None:
    """The request a worker would run: the minute's deadline as its expiry, ``retries`` so far."""
    task.push_request(
        id="task-1",
        args=[doc],
        kwargs={},
        retries=retries,
        called_directly=False,
        expires="2026-11-24T10:31:55+00:00",
        delivery_info={"exchange": "", "routing_key": "orders"},
    )


def run_as_worker(monkeypatch: pytest.MonkeyPatch, *, raises: type[BaseException]) -> list[Signature]:
    """Run ``execute`` once as a worker would (first delivery); returns the retry messages sent."""
    sent: list[Signature] = []
    monkeypatch.setattr(Signature, "apply_async", lambda sig, *_a, **_kw: sent.append(sig))
    doc = intent().model_dump(mode="json")
    push_worker_request(orders.execute, doc, 0)
    try:
        with pytest.raises(raises):
            orders.execute(doc)
    finally:
        orders.execute.pop_request()
    return sent


def test_a_temporary_failure_is_retried_by_celery_with_backoff_and_no_expiry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trader = StubTrader(BrokerUnavailableError("exchange unreachable"))
    monkeypatch.setattr(orders, "get_runtime", lambda: runtime_with(trader))
    sent: list[Signature] = []
    # Celery's own autoretry builds the retry message; only sending it is replaced.
    monkeypatch.setattr(Signature, "apply_async", lambda sig, *_a, **_kw: sent.append(sig))
    task = orders.execute
    assert task.max_retries == get_settings().trading.max_retries
    doc = intent().model_dump(mode="json")
    countdowns: dict[int, list[float]] = {}
    for retries in [0, 1, 4] * 10:
        push_worker_request(task, doc, retries)
        try:
            with pytest.raises(Retry) as info:
                task(doc)
        finally:
            task.pop_request()
        assert isinstance(info.value.exc, BrokerUnavailableError)
        options = sent[-1].options
        assert options["expires"] is None  # an order in doubt is reconciled even after its minute
        assert options["retries"] == retries + 1
        cap = min(orders.MAX_RETRY_DELAY_S, task.retry_backoff * 2**retries)  # type: ignore[attr-defined]
        assert 0 <= options["countdown"] <= cap  # exponential, full jitter
        countdowns.setdefault(retries, []).append(options["countdown"])
    assert len(set(countdowns[4])) > 1  # jittered, not one fixed delay
    before = len(sent)
    push_worker_request(task, doc, task.max_retries)  # max_retries spent: the error itself
    try:
        with pytest.raises(BrokerUnavailableError):
            task(doc)
    finally:
        task.pop_request()
    assert len(sent) == before


def test_a_permanent_failure_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    trader = StubTrader(OrderRejectedError("insufficient funds"))
    monkeypatch.setattr(orders, "get_runtime", lambda: runtime_with(trader))
    assert run_as_worker(monkeypatch, raises=OrderRejectedError) == []


def test_the_task_returns_the_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(orders, "get_runtime", lambda: runtime_with(StubTrader()))
    assert orders.execute(intent().model_dump(mode="json")) == {"status": "submitted"}


def test_tick_without_a_minute_steps_to_the_current_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    """``celery call tasks.orders.tick`` with no argument: the current minute, on the minute grid."""
    monkeypatch.setattr(orders, "now_ms", lambda: 1_764_000_000_000 + 27_345)  # 27.345 s into a minute
    monkeypatch.setattr(orders, "get_runtime", lambda: runtime_with(StubTrader()))
    assert orders.tick() == {"minute_ms": 1_764_000_000_000}
    assert orders.tick("2025-11-24T16:00:00Z") == {"minute_ms": 1_764_000_000_000}


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


def test_a_dropped_database_connection_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11 (chaos: connections terminated under the orders worker): the intent is not lost."""
    from sqlalchemy.exc import OperationalError

    trader = StubTrader(OperationalError("INSERT", {}, Exception("terminating connection")))
    monkeypatch.setattr(orders, "get_runtime", lambda: runtime_with(trader))
    sent = run_as_worker(monkeypatch, raises=Retry)
    assert len(sent) == 1
    assert sent[0].options["retries"] == 1
