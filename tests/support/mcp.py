"""What the MCP server tests share: a real PostgreSQL database filled by a replayed minute (module
scope: one replay per test module), and the real transports (a stdio subprocess, a streamable-HTTP
server process with bearer tokens).

Use in a test module::

    from tests.support.mcp import mcp_deployment  # noqa: F401  (the fixture)

    def test_x(mcp_deployment: McpDeployment) -> None: ...
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings
from core.timegrid import MINUTE_MS, floor_minute, iso_minute, now_ms
from tests.conftest import pg_schema_url
from tests.support.workers import backfill_live_history, embedded_settings

N_SYMBOLS = 4
# Tokens of the HTTP tests (at least 16 characters: the server refuses shorter ones).
TOKENS = {"ops-agent": "tok-ops-agent-0123456789abcdef", "reader": "tok-reader-0123456789abcdef"}


@dataclass
class McpDeployment:
    """A database and registry as a running deployment leaves them after one replayed minute."""

    settings: Settings
    minute: str  # the replayed minute, ISO (``2026-12-04T08:00Z``)
    champion: str
    challenger: str
    symbols: list[str]
    root: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    def with_writes(self) -> Settings:
        """The same settings with ``mcp.allow_write`` on."""
        return self.settings.model_copy(
            update={"mcp": self.settings.mcp.model_copy(update={"allow_write": True})}
        )

    def env(self, *, allow_write: bool = False, tokens: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a server subprocess with these settings (the SDK's stdio client passes
        only a few variables on unless ``env`` is given: give it this)."""
        s = self.settings
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("MLSIG_") or k.startswith("MLSIG_TEST_")
        }
        env.update(
            {
                "MLSIG_DATA_DIR": str(s.data_dir),
                "MLSIG_DATABASE_URL": s.database_url,
                "MLSIG_REDIS_URL": s.redis_url,
                "MLSIG_MODEL__REGISTRY_DIR": str(s.model.registry_dir),
                "MLSIG_MODEL__DEVICE": s.model.device,
                "MLSIG_DATA__UNIVERSE_SIZE": str(s.data.universe_size),
                "MLSIG_MCP__ALLOW_WRITE": "true" if allow_write else "false",
                "MLSIG_LOG_LEVEL": "WARNING",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if tokens is not None:
            env["MLSIG_MCP__TOKENS"] = json.dumps(tokens)
        env.update(self.extra_env)
        return env


def replay_one_minute(settings: Settings) -> tuple[str, str, str]:
    """Register a champion (every signal SHORT) and a challenger (every signal LONG), backfill the
    model's window of simulated candles and replay one minute on the embedded runtime's real Celery
    workers. Returns (minute, champion, challenger)."""
    from ml.registry import Registry
    from tasks.pipeline import start_minute
    from tests.support.models import biased_model, identity_scaler, register_challenger
    from worker.app import app
    from worker.embedded import embedded_runtime

    backfill_live_history(settings.database_url, N_SYMBOLS, end_lag_minutes=6, extra_minutes=120)
    registry = Registry(settings.model.registry_dir)
    champion, _ = registry.register(biased_model(0, "SHORT"), identity_scaler(), {"note": "champion"}, {})
    challenger = register_challenger(registry, seed=1, direction="LONG")
    minute = iso_minute(floor_minute(now_ms()) - 5 * MINUTE_MS)
    with embedded_runtime(settings, beat=False) as rt:
        outcome = start_minute(rt, minute, replay=True)
        assert outcome["status"] == "running", outcome
        result: dict[str, Any] = app.AsyncResult(outcome["result_id"]).get(timeout=120)
        for task_id in [*result["order_tasks"], result["tick_task"]]:
            app.AsyncResult(task_id).get(timeout=60)
    return minute, champion, challenger


@pytest.fixture(scope="module")
def mcp_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpDeployment]:
    root = tmp_path_factory.mktemp("mcp")
    with pg_schema_url() as url:
        settings: Settings = embedded_settings(root, N_SYMBOLS, database_url=url)
        minute, champion, challenger = replay_one_minute(settings)
        from data.sources.simulator import SimulatedMarket

        symbols = SimulatedMarket().list_symbols()[:N_SYMBOLS]
        yield McpDeployment(settings, minute, champion, challenger, symbols, root)


# -- results -------------------------------------------------------------------------------------
def ok(result: Any) -> dict[str, Any]:
    """A tool result's structured content, after checking it is not an error."""
    assert not result.is_error, result.content
    doc: dict[str, Any] = result.structured_content
    return doc


def error_text(result: Any) -> str:
    """A tool error's message, after checking it is one and carries no traceback."""
    assert result.is_error, result.structured_content
    message: str = result.content[0].text
    assert "Traceback" not in message
    return message


# -- transports ----------------------------------------------------------------------------------
def mlsignals_command() -> list[str]:
    """The ``mlsignals`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("mlsignals")
    if script.exists():
        return [str(script)]
    found = shutil.which("mlsignals")
    return [found] if found else [sys.executable, "-m", "cli.main"]


def stdio_parameters(name: str, deployment: McpDeployment, *, allow_write: bool = False) -> Any:
    """``StdioServerParameters`` that start ``mlsignals mcp serve NAME`` as a real subprocess."""
    from mcp import StdioServerParameters

    command = mlsignals_command()
    return StdioServerParameters(
        command=command[0],
        args=[*command[1:], "mcp", "serve", name],
        env=deployment.env(allow_write=allow_write),
        cwd=str(deployment.root),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def http_server(
    name: str, deployment: McpDeployment, *, allow_write: bool = False, tokens: dict[str, str] | None = None
) -> Iterator[str]:
    """``mlsignals mcp serve NAME --http`` on a free loopback port; yields the MCP endpoint's URL once
    ``/healthz`` answers (the process's own readiness signal), stops the process afterwards."""
    import httpx2

    port = free_port()
    command = [
        *mlsignals_command(),
        "mcp",
        "serve",
        name,
        "--http",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = deployment.env(allow_write=allow_write, tokens=TOKENS if tokens is None else tokens)
    log = deployment.root / f"mcp-{name}-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, cwd=deployment.root, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"mcp serve {name} exited {process.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx2.get(f"{base}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mcp serve {name} did not answer in 60 s: {log.read_text()[-2000:]}")
            time.sleep(0.1)  # polling the server's readiness endpoint: nothing to await across processes
        yield f"{base}/mcp"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def bearer_transport(url: str, token: str | None) -> Any:
    """A streamable-HTTP client transport that sends ``Authorization: Bearer TOKEN`` (none: no header)."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return streamable_http_client(url, http_client=httpx2.AsyncClient(headers=headers, timeout=30.0))
