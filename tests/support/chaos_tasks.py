"""Test-only tasks for the broker-restart and chaos tests, loaded by a worker with
``--include tests.support.chaos_tasks``. Registered on the production app, so the worker runs
them with the production settings (JSON, acks_late, prefetch 1), on whatever queue a test sends
them to.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from worker.app import app


@app.task(name="tests.chaos.sleep_then_return", acks_late=True, reject_on_worker_lost=True)
def sleep_then_return(seconds: float, value: str, marker: str | None = None) -> dict[str, object]:
    """Sleeps (a task "in flight" while the test breaks something), then returns ``value``.

    ``marker``: a file path this task creates as it starts, so a test can wait for that event.
    """
    started = time.time()
    if marker:
        Path(marker).write_text(str(os.getpid()))
    time.sleep(seconds)
    return {"value": value, "pid": os.getpid(), "started": started, "finished": time.time()}


@app.task(name="tests.chaos.ping_task")
def ping_task(value: str) -> dict[str, object]:
    """Returns at once: proves that a worker still consumes."""
    return {"value": value, "pid": os.getpid()}
