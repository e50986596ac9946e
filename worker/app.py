"""The Celery application (after cookiecutter-django's wiring: config object plus autodiscovery)."""

from __future__ import annotations

from celery import Celery

from worker.queues import MODULE_QUEUES

# Every task module is listed explicitly (derived from the queue map), so each worker registers
# every task whatever queue it consumes.
app = Celery("mlsignals", include=list(MODULE_QUEUES))
app.config_from_object("celeryconfig")
# Threads that never set a current app (thread pools, the embedded runner) must find this one,
# not Celery's implicit default app.
app.set_default()
# Lifecycle hooks (model load at worker start) register themselves on import.
import worker.lifecycle  # noqa: E402,F401

# The liveness probe's heartbeat file, touched while the consumer runs (worker/liveness.py).
app.steps["consumer"].add("worker.liveness:HeartbeatFile")
