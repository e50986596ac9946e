"""``mlsignals metrics serve`` in its own process, as users start it, for the tests."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager


def start_exporter(env: Mapping[str, str], *args: str) -> tuple[subprocess.Popen[str], str]:
    """Start ``mlsignals metrics serve --port 0 ARGS`` with ``env``; returns the process and its
    ``host:port`` once the server is bound (the line it prints then)."""
    command = [sys.executable, "-m", "cli.main", "metrics", "serve", "--port", "0", *args]
    proc = subprocess.Popen(
        command, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r"http://([\d.]+):(\d+)/metrics", line)
    if found is None:
        proc.kill()
        raise AssertionError(f"the exporter did not start: {line}{proc.stdout.read()}")
    return proc, f"{found[1]}:{found[2]}"


@contextmanager
def serving_exporter(env: Mapping[str, str], *args: str) -> Iterator[str]:
    """``start_exporter``, yielding ``host:port``; SIGTERM on exit, which must end it cleanly (exit
    status 0)."""
    proc, address = start_exporter(env, *args)
    try:
        yield address
        proc.terminate()
        assert proc.wait(timeout=20) == 0, "the exporter did not stop cleanly on SIGTERM"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
