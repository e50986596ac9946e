"""Worker liveness for Kubernetes: a heartbeat file touched by a consumer bootstep, and the probe.

``HeartbeatFile`` is a bootstep of the worker's consumer blueprint (registered in worker/app.py).
The consumer starts it once it is connected to the broker and consuming; it writes the file at once,
then touches it every ``MLSIGNALS_LIVENESS_INTERVAL`` seconds (10) on the worker's timer, which
the consumer's event loop fires. So the file's age says whether the main loop still turns: a worker
stuck in a deadlock, in a task that never returns on a ``solo`` pool, or in a wedged event loop stops
touching it, and the probe fails. The probe is this file run as a script, without importing the
project (``celery -A worker`` imports everything: about a second of CPU per probe)::

    python -P /app/worker/liveness.py --max-age 60       # exit 0: alive; 1: not

Why a file and not ``celery inspect ping``: a ping needs the broker, so a Redis restart would fail
every worker's probe at once and Kubernetes would restart the whole fleet, then hold the pods in
CrashLoopBackOff (up to 5 minutes) after Redis is back; a ping also costs a Celery import per probe.

States, written into the file (one word): ``alive`` while the consumer runs; ``reconnecting`` when
the consumer lost the broker connection and Celery retries it (forever: celeryconfig.py). A
reconnecting worker is live for ``--reconnect-grace`` seconds (900) from the moment it lost the
connection: a restart cannot reach the broker any sooner. A clean shutdown deletes the file, and
the step deletes a leftover one when the worker starts (``/tmp`` is an emptyDir, which outlives a
container restart), so the probe never reads the state of a previous process.

Settings: ``MLSIGNALS_LIVENESS_FILE`` (unset or empty: no step; the Kubernetes manifests set
``/tmp/mlsignals-worker-alive``, one file per container: a host that runs several workers, under
systemd or in the tests, would otherwise have them all write one file) and
``MLSIGNALS_LIVENESS_INTERVAL`` (seconds, default 10). Deliberately not ``MLSIG_*``: the probe reads
them without loading the project's settings, and they are no part of them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from celery import bootsteps

FILE_ENV = "MLSIGNALS_LIVENESS_FILE"
INTERVAL_ENV = "MLSIGNALS_LIVENESS_INTERVAL"
DEFAULT_FILE = "/tmp/mlsignals-worker-alive"
DEFAULT_INTERVAL_S = 10.0
DEFAULT_MAX_AGE_S = 60.0
DEFAULT_RECONNECT_GRACE_S = 900.0
ALIVE = "alive"
RECONNECTING = "reconnecting"

# Blueprint states (celery.bootsteps RUN, CLOSE, TERMINATE): a step stopped while its blueprint is
# still running is being restarted (a lost connection), otherwise the worker shuts down.
_RUN: int = vars(bootsteps)["RUN"]

log = logging.getLogger(__name__)


def liveness_file(environ: dict[str, str] | None = None) -> Path | None:
    """The heartbeat file's path from the environment; ``None`` when unset or empty (no heartbeat)."""
    value = (os.environ if environ is None else environ).get(FILE_ENV, "")
    return Path(value) if value.strip() else None


def liveness_interval(environ: dict[str, str] | None = None) -> float:
    value = (os.environ if environ is None else environ).get(INTERVAL_ENV, "")
    interval = float(value) if value.strip() else DEFAULT_INTERVAL_S
    if interval <= 0:
        raise ValueError(f"{INTERVAL_ENV} must be positive, got {value!r}")
    return interval


def write_state(path: Path, state: str) -> None:
    """Replace the file atomically with ``state`` (a probe never reads half a file); sets its mtime."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{state}\n")
    os.replace(tmp, path)


class HeartbeatFile(bootsteps.StartStopStep):
    """Consumer bootstep: keeps the liveness file fresh while the consumer runs (module docstring)."""

    label = "Liveness file"
    # After the task consumer: the file says "consuming", not merely "connected".
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        self.path = liveness_file()
        self.interval_s = liveness_interval() if self.path is not None else DEFAULT_INTERVAL_S
        self._entry: Any = None
        super().__init__(parent, **kwargs)
        if self.path is not None:
            # A previous container's file (same emptyDir) must not vouch for this process.
            self._guard(lambda p: p.unlink(missing_ok=True))

    def include_if(self, parent: Any) -> bool:  # noqa: ARG002  (Celery's signature)
        return self.path is not None

    def start(self, parent: Any) -> None:
        self._guard(lambda p: write_state(p, ALIVE))
        self._cancel()
        self._entry = parent.timer.call_repeatedly(self.interval_s, self._touch)

    def stop(self, parent: Any) -> None:
        """A connection restart (the blueprint still runs) or a shutdown (it is closing)."""
        self._cancel()
        blueprint = getattr(parent, "blueprint", None)
        if blueprint is not None and blueprint.state == _RUN:
            self._guard(lambda p: write_state(p, RECONNECTING))
        else:
            self._guard(lambda p: p.unlink(missing_ok=True))

    def terminate(self, parent: Any) -> None:
        self.shutdown(parent)

    def shutdown(self, parent: Any) -> None:  # noqa: ARG002  (Celery's signature)
        self._cancel()
        self._guard(lambda p: p.unlink(missing_ok=True))

    def _touch(self) -> None:
        def touch(path: Path) -> None:
            try:
                os.utime(path)
            except FileNotFoundError:
                write_state(path, ALIVE)

        self._guard(touch)

    def _cancel(self) -> None:
        if self._entry is not None:
            self._entry.cancel()
            self._entry = None

    def _guard(self, action: Any) -> None:
        """File errors are logged, never raised: the probe reports them by failing, the worker runs on."""
        if self.path is None:
            return
        try:
            action(self.path)
        except OSError as exc:
            log.warning("liveness file %s: %s", self.path, exc)


# ------------------------------------------------------------------------------------------- probe


def check(
    path: Path,
    max_age_s: float = DEFAULT_MAX_AGE_S,
    reconnect_grace_s: float = DEFAULT_RECONNECT_GRACE_S,
    now: float | None = None,
) -> tuple[bool, str]:
    """(alive, why): the file exists, and is younger than ``max_age_s`` (``alive``) or than
    ``reconnect_grace_s`` (``reconnecting``)."""
    try:
        mtime = path.stat().st_mtime
        state = path.read_text().strip()
    except FileNotFoundError:
        return False, f"{path}: missing (consumer not started, or the worker stopped)"
    except OSError as exc:
        return False, f"{path}: {exc}"
    age = (time.time() if now is None else now) - mtime
    if state == RECONNECTING:
        ok = age <= reconnect_grace_s
        return ok, f"{path}: reconnecting to the broker for {age:.0f} s (grace {reconnect_grace_s:.0f} s)"
    ok = state == ALIVE and age <= max_age_s
    return ok, f"{path}: {state or 'empty'}, touched {age:.1f} s ago (max {max_age_s:.0f} s)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Exit 0 when the worker's liveness file is fresh.")
    parser.add_argument("--file", type=Path, default=None, help=f"default: ${FILE_ENV} or {DEFAULT_FILE}")
    parser.add_argument("--max-age", type=float, default=DEFAULT_MAX_AGE_S, help="seconds (%(default)s)")
    parser.add_argument(
        "--reconnect-grace", type=float, default=DEFAULT_RECONNECT_GRACE_S, help="seconds (%(default)s)"
    )
    args = parser.parse_args(argv)
    path = args.file or liveness_file() or Path(DEFAULT_FILE)
    ok, why = check(path, args.max_age, args.reconnect_grace)
    print(("ok: " if ok else "not live: ") + why, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
