"""Celery settings derived from the typed settings object (``core.settings``).

Reliability choices per task are in the task decorators and explained in docs/ML_INTEGRATION.md;
what is common lives here. JSON only: no pickle ever crosses the broker.
"""

from __future__ import annotations

from core.settings import get_settings as _get_settings
from core.settings import redis_db_url as _redis_db_url
from worker import queues as _queues
from worker import schedule as _schedule

_settings = _get_settings()

broker_url = _settings.celery.broker_url or _redis_db_url(_settings.redis_url, 0)
result_backend = _settings.celery.result_backend or _redis_db_url(_settings.redis_url, 1)
# RabbitMQ (docs/RELIABILITY.md, "Choosing a broker") or Redis; the results backend and the signal
# feeds stay on Redis either way.
_amqp = broker_url.split("://", 1)[0] in {"amqp", "amqps", "pyamqp"}

# A lost broker connection is retried forever, at start-up too: a worker waits out a broker restart.
broker_connection_retry = True
broker_connection_retry_on_startup = True
broker_connection_max_retries = None
if _amqp:
    # Publisher confirms: a send returns once the broker has the message (quorum queues: a majority).
    broker_transport_options: dict[str, object] = {"confirm_publish": True}
else:
    broker_transport_options = {
        "visibility_timeout": _settings.celery.visibility_timeout_seconds,
        "unacked_restore_interval": _settings.celery.unacked_restore_interval_seconds,
        "unacked_restore_throttle": 1,
    }
result_backend_transport_options = {"retry_policy": {"timeout": 5.0}}

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]
result_expires = _settings.celery.result_expires_seconds
result_extended = False

timezone = "UTC"
enable_utc = True

task_queues = _queues.task_queues(quorum=_amqp)
task_routes = _queues.task_routes()
task_default_queue = _queues.Queue.CONTROL.value
task_create_missing_queues = False

# Events on, so Flower and `celery events` show workers, queues and tasks.
worker_send_task_events = True
task_send_sent_event = True

# A task whose worker dies is re-queued instead of being marked failed (only acks_late tasks,
# which are the idempotent ones, see tasks/*).
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
worker_max_tasks_per_child = 10_000
worker_hijack_root_logger = False
# Our log handlers write to the process's stderr; redirected into Celery's logger it would loop back
# and be dropped (every line after start-up lost).
worker_redirect_stdouts = False

beat_schedule = _schedule.beat_schedule(_settings)
