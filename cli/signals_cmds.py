"""``mlsignals signals …``: watch live signals on Redis pub/sub, read recent ones from the database."""

from __future__ import annotations

import typer
from rich.markup import escape

from cli.common import clean_errors, console, err_console, settings
from data.messages import HeartbeatMessage, MalformedMessageError, SignalMessage, parse_message

app = typer.Typer(help="Live signals on Redis pub/sub (schema: docs/ML_API.md).", no_args_is_help=True)


def describe(message: SignalMessage | HeartbeatMessage) -> str:
    if isinstance(message, HeartbeatMessage):
        return (
            f"{message.minute:%Y-%m-%d %H:%M} heartbeat {message.status}: {message.signals} signals, "
            f"{message.actionable} actionable, {message.failed} failed (model {message.model_version})"
        )
    stops = ""
    if message.stop_loss is not None and message.take_profit is not None:
        stops = f" SL {message.stop_loss:.6g} TP {message.take_profit:.6g}"
    return (
        f"{message.minute:%Y-%m-%d %H:%M} #{message.sequence} {message.symbol} {message.direction} "
        f"conf {message.confidence:.3f} entry {message.entry_price:.6g}{stops}"
    )


@app.command()
@clean_errors
def subscribe(
    symbol: str | None = typer.Option(None, "--symbol", help="Only this symbol's channel."),
    count: int = typer.Option(0, "--count", min=0, help="Stop after this many messages (0: never)."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON messages."),
    heartbeat: bool = typer.Option(True, help="Also print the per-minute heartbeat."),
) -> None:
    """Print signals as they are published (Ctrl-C to stop)."""
    import redis

    s = settings()
    client = redis.Redis.from_url(s.redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    channels = [f"{s.pipeline.channel}:{symbol}" if symbol else s.pipeline.channel]
    if heartbeat:
        channels.append(s.pipeline.heartbeat_channel)
    pubsub.subscribe(*channels)
    err_console.print(f"subscribed to {', '.join(channels)} on {s.redis_url}", highlight=False)
    seen = 0
    try:
        for item in pubsub.listen():
            raw = item["data"]
            try:
                message = parse_message(raw)
            except MalformedMessageError as exc:
                err_console.print(f"[yellow]skipped:[/] {escape(str(exc))}", highlight=False)
                continue
            console.print(raw.decode() if as_json else describe(message), highlight=False, soft_wrap=True)
            seen += 1
            if count and seen >= count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        pubsub.close()
