"""Building and running the servers: stdio (``mlsignals mcp serve NAME``) or streamable HTTP with
bearer tokens (``--http --host 127.0.0.1 --port N``).

Over stdio, stdout carries the protocol and nothing else: logs go to stderr. Over HTTP every request
to the MCP endpoint (``/mcp``) needs ``Authorization: Bearer <token>`` (401 without); ``/healthz``
answers without one, for probes. Bound to a loopback address the SDK also checks the Host and
Origin headers (DNS rebinding); the Compose services bind 0.0.0.0 inside their container and publish
the port on the host's loopback only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from core.settings import Settings
from mcp_servers.auth import StaticTokenVerifier, load_tokens
from mcp_servers.common import AuditLog, Toolbox
from mcp_servers.domain import Domain

ServerName = Literal["data", "signal", "model"]
SERVER_NAMES: tuple[ServerName, ...] = ("data", "signal", "model")
MCP_PATH = "/mcp"


@dataclass(frozen=True)
class HttpOptions:
    host: str = "127.0.0.1"
    port: int = 8765

    def public_url(self, settings: Settings) -> str:
        return (settings.mcp.public_url or f"http://{self.host}:{self.port}").rstrip("/")


def new_server(
    name: str, instructions: str, settings: Settings, domain: Domain, http: HttpOptions | None
) -> tuple[MCPServer, Toolbox]:
    """An empty server named ``ml-NAME`` and its toolbox (auth only with ``http``)."""
    from importlib.metadata import version

    label, release = f"ml-{name}", version("mlsignals")
    if http is None:
        server: MCPServer = MCPServer(label, instructions=instructions, version=release)
    else:
        url = http.public_url(settings)
        server = MCPServer(
            label,
            instructions=instructions,
            version=release,
            token_verifier=StaticTokenVerifier(load_tokens(settings.mcp)),
            auth=AuthSettings(issuer_url=url, resource_server_url=f"{url}{MCP_PATH}"),
        )

        async def healthz(_request: Request) -> Response:
            return JSONResponse({"status": "ok", "server": label})

        server.custom_route("/healthz", methods=["GET"])(healthz)

    return server, Toolbox(server, settings, AuditLog(lambda: domain.engine, f"ml-{name}"))


def build(
    name: ServerName, settings: Settings, domain: Domain | None = None, http: HttpOptions | None = None
) -> MCPServer:
    """The ``ml-NAME`` server with its tools registered (write tools only with ``mcp.allow_write``)."""
    builders: dict[str, Callable[[Settings, Domain, HttpOptions | None], MCPServer]]
    from mcp_servers import data_server, model_server, signal_server

    builders = {"data": data_server.build, "signal": signal_server.build, "model": model_server.build}
    if name not in builders:
        raise ValueError(f"unknown MCP server {name!r}: one of {', '.join(SERVER_NAMES)}")
    return builders[name](settings, domain or Domain(settings), http)


def serve(name: ServerName, settings: Settings, http: HttpOptions | None = None) -> None:
    """Run ``ml-NAME`` until its client goes (stdio) or the process is stopped (HTTP)."""
    server = build(name, settings, http=http)
    if http is None:
        server.run("stdio")
    else:
        server.run("streamable-http", host=http.host, port=http.port, streamable_http_path=MCP_PATH)
