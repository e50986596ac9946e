"""A worker stopped by an unrecoverable error always exits non-zero (70), never silently with 0.

When an exception escapes the worker's bootsteps, Celery logs "Unrecoverable error: …" (CRITICAL,
logger ``celery.worker``, in ``WorkController.start``) and stops the worker. Examples: kombu's
``AttributeError: 'NoneType' object has no attribute 'hostname'`` when the Redis broker goes away
while a BRPOP is pending and a task is unacknowledged (the consumer's ``connection.collect()``
leaves the channel open and the transport detached, and the following ``connection.close()``
fails in ``restore_unacked``: celery/kombu#970, celery/celery#8384), or giving up on a broker
after ``broker_connection_max_retries``. Celery 5.7 then exits with 1, but only if nothing raises
``SystemExit`` during the (warm, possibly long) shutdown that follows; a supervisor that restarts
only on failure leaves a worker that exits 0 dead. So, once such an error is logged in a
``celery worker`` process (``celeryd_init`` is sent by the worker program only, never by the
embedded runner's in-process worker), the process ends with status 70 (EX_SOFTWARE) however it
gets out: an ``atexit`` hook, registered at that moment so that it runs before the earlier-
registered ones, flushes logging and the standard streams and calls ``os._exit(70)``.
(The hooks it pre-empts are the interpreter's own: logging, which it flushes itself, and
multiprocessing finalizers; the worker's warm shutdown has already stopped pool and consumer, and
the broker redelivers what was left unacknowledged: Redis after the visibility timeout, RabbitMQ
when the connection closes.)
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from contextlib import suppress
from typing import Any

from celery.signals import celeryd_init

EX_UNRECOVERABLE = 70  # os.EX_SOFTWARE
UNRECOVERABLE_PREFIX = "Unrecoverable error"
CELERY_WORKER_LOGGER = "celery.worker"  # celery.utils.log.worker_logger


class UnrecoverableErrorExit(logging.Handler):
    """Arms a non-zero exit when Celery logs an unrecoverable error in this (the main) process."""

    def __init__(self, exitcode: int = EX_UNRECOVERABLE) -> None:
        super().__init__(level=logging.CRITICAL)
        self.exitcode = exitcode
        self.pid = os.getpid()  # pool children inherit the handler; only the main process arms
        self.armed = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.armed or os.getpid() != self.pid:
            return
        if not str(record.msg).startswith(UNRECOVERABLE_PREFIX):
            return
        self.armed = True
        atexit.register(self.exit_now)

    def exit_now(self) -> None:
        with suppress(Exception):  # nothing may stand between this hook and the exit status
            message = f"worker: stopped by an unrecoverable error; exiting with status {self.exitcode}\n"
            if sys.__stderr__ is not None:
                sys.__stderr__.write(message)
            logging.shutdown()
            for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
                if stream is not None:
                    stream.flush()
        os._exit(self.exitcode)


def install_unrecoverable_error_exit() -> UnrecoverableErrorExit:
    """Adds the handler to Celery's worker logger once per process; returns it."""
    logger = logging.getLogger(CELERY_WORKER_LOGGER)
    for handler in logger.handlers:
        if isinstance(handler, UnrecoverableErrorExit):
            return handler
    handler = UnrecoverableErrorExit()
    logger.addHandler(handler)
    return handler


@celeryd_init.connect
def _exit_non_zero_after_unrecoverable_error(**_kwargs: Any) -> None:
    install_unrecoverable_error_exit()
