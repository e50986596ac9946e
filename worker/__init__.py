"""The Celery app, the queue enum, worker lifecycle hooks and the embedded runner.

``celery -A worker …`` finds the app here. Importing this package touches no database, broker or
CUDA device: connections are made lazily in each worker process (after the fork).
"""

from worker.app import app

__all__ = ["app"]
