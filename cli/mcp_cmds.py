"""``mlsignals mcp``: the MCP servers ml-data, ml-signal and ml-model (docs/MCP.md)."""

from __future__ import annotations

import typer

from cli.common import clean_errors, settings

app = typer.Typer(help="MCP servers for AI agents and operators (docs/MCP.md).", no_args_is_help=True)


@app.command()
@clean_errors
def serve(
    name: str = typer.Argument(..., help="Which server: data, signal or model."),
    http: bool = typer.Option(False, "--http", help="Streamable HTTP with bearer tokens instead of stdio."),
    host: str = typer.Option("127.0.0.1", help="HTTP: the address to bind (loopback by default)."),
    port: int = typer.Option(8765, min=1, max=65535, help="HTTP: the port."),
) -> None:
    """Serve one MCP server over stdio (for a local client) or streamable HTTP (--http).

    Write tools exist only with MLSIG_MCP__ALLOW_WRITE=true; HTTP needs MLSIG_MCP__TOKENS or
    MLSIG_MCP__TOKENS_FILE. Logs go to stderr: on stdio, stdout carries the protocol alone.
    """
    from mcp_servers.serving import SERVER_NAMES, HttpOptions
    from mcp_servers.serving import serve as run_server

    if name not in SERVER_NAMES:
        raise typer.BadParameter(f"{name!r} is not one of {', '.join(SERVER_NAMES)}", param_hint="NAME")
    run_server(name, settings(), HttpOptions(host, port) if http else None)
