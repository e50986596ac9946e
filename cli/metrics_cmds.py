"""``mlsignals metrics …``: the Prometheus exporter (docs/MONITORING.md)."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import typer

from cli.common import clean_errors, console, fail, settings

app = typer.Typer(help="Prometheus metrics of the pipeline, signals, data and trading.", no_args_is_help=True)

_EMBEDDED_HELP = "Read only the database and the registry (the embedded run has no Redis, broker or workers)."


@app.command()
@clean_errors
def serve(
    host: str = typer.Option(None, help="Address to bind (default: monitoring.host, 127.0.0.1)."),
    port: int = typer.Option(None, help="Port (default: monitoring.port, 9500; 0 picks a free one)."),
    refresh_seconds: float = typer.Option(
        None, help="Refresh interval (default: monitoring.refresh_seconds)."
    ),
    embedded: bool = typer.Option(False, "--embedded", help=_EMBEDDED_HELP),
) -> None:
    """Serve /metrics until interrupted; the snapshot is refreshed from the durable state."""
    from monitoring.exporter import Exporter
    from monitoring.exporter import serve as start

    cfg = settings()
    mon = cfg.ml_integration.monitoring
    if not mon.metrics_enabled:
        raise fail("metrics are disabled (ml_integration.monitoring.metrics_enabled=false)")
    os.nice(mon.exporter_nice)
    exporter = Exporter.from_settings(cfg, embedded=embedded)
    server, loop = start(
        exporter,
        host or mon.host,
        mon.port if port is None else port,
        refresh_seconds or mon.refresh_seconds,
    )
    bound_host, bound_port = server.server_address[:2]
    # Tests and supervisors read this line to learn a port picked with --port 0.
    console.print(f"serving metrics on http://{bound_host}:{bound_port}/metrics", highlight=False)
    stop = threading.Event()

    def _stop(*_args: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    stop.wait()
    server.shutdown()
    if loop.stop():
        exporter.close()  # not under a refresh still running: it would be using the connections


@app.command()
@clean_errors
def show(embedded: bool = typer.Option(False, "--embedded", help=_EMBEDDED_HELP)) -> None:
    """Refresh once and print the metrics in Prometheus's text format."""
    from prometheus_client import CollectorRegistry, generate_latest

    from monitoring.exporter import Exporter

    exporter = Exporter.from_settings(settings(), embedded=embedded)
    exporter.refresh()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(exporter)
    typer.echo(generate_latest(registry).decode(), nl=False)
    exporter.close()
