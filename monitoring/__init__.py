"""Prometheus metrics of the running system, read from its durable state (docs/MONITORING.md).

``mlsignals metrics serve`` runs one :class:`monitoring.exporter.Exporter`. It reads the ledger
(``pipeline_runs``), the signal and trading tables, the model registry and Redis on a refresh loop,
and serves the newest snapshot to Prometheus. Nothing is pushed and no worker keeps counters in
memory, so prefork children, worker restarts and any number of hosts cannot make a count wrong.
"""
