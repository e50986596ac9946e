"""Entry point of the ``mlsignals`` console script."""

from __future__ import annotations

import typer

from cli import data_cmds, db_cmds, mcp_cmds, metrics_cmds, model_cmds, run_cmd, signals_cmds, trading_cmds

app = typer.Typer(
    name="mlsignals",
    help="ML trading signals every minute on Celery workers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(db_cmds.app, name="db")
app.add_typer(data_cmds.app, name="data")
app.add_typer(model_cmds.app, name="model")
app.add_typer(signals_cmds.app, name="signals")
app.add_typer(trading_cmds.app, name="trading")
app.add_typer(metrics_cmds.app, name="metrics")
app.add_typer(mcp_cmds.app, name="mcp")
app.command("run")(run_cmd.run)


if __name__ == "__main__":
    app()
