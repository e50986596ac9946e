"""``mlsignals signals …``: watch live signals on Redis pub/sub or read them from the durable stream."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from cli import quality_cmds
from cli.common import clean_errors, console, err_console, settings

if TYPE_CHECKING:
    from core.settings import Settings
    from pipeline.messages import HeartbeatMessage, SignalMessage

app = typer.Typer(
    help="Live signals on Redis pub/sub or the durable stream (schema: docs/ML_API.md).", no_args_is_help=True
)

BATCH = 100

app.command("quality")(quality_cmds.quality)
app.command("score")(quality_cmds.score)


def describe(message: SignalMessage | HeartbeatMessage) -> str:
    from pipeline.messages import HeartbeatMessage

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


def show(data: str, message: SignalMessage | HeartbeatMessage, as_json: bool) -> None:
    """One message on stdout: its JSON as published, or one line."""
    console.print(data if as_json else describe(message), highlight=False, soft_wrap=True)


def default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@app.command()
@clean_errors
def subscribe(
    symbol: str | None = typer.Option(None, "--symbol", help="Only this symbol's signals."),
    count: int = typer.Option(0, "--count", min=0, help="Stop after this many messages (0: never)."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON messages."),
    heartbeat: bool = typer.Option(True, help="Also print the per-minute heartbeat."),
    durable: bool = typer.Option(
        False, "--durable", help="Read the durable stream through a consumer group (needs --group)."
    ),
    group: str | None = typer.Option(None, "--group", help="Consumer group on the stream (with --durable)."),
    consumer: str | None = typer.Option(
        None, "--consumer", help="Consumer name in the group (with --durable; default: hostname-pid)."
    ),
    from_start: bool = typer.Option(
        False, "--from-start", help="A new group starts at the oldest entry kept, not at new ones."
    ),
) -> None:
    """Print signals as they are published (Ctrl-C to stop).

    With --durable, read them from the Redis Stream instead: nothing is lost while this command is
    not running, and each message is acknowledged once it has been printed.
    """
    if durable and not group:
        raise typer.BadParameter(
            "required with --durable (the consumer group to read through)", param_hint="'--group'"
        )
    if not durable:
        stray = [
            name
            for name, given in (("--group", group), ("--consumer", consumer), ("--from-start", from_start))
            if given
        ]
        if stray:
            raise typer.BadParameter("only with --durable", param_hint=f"'{stray[0]}'")
    s = settings()
    try:
        if group:  # only with --durable (checked above)
            _durable(s, group, consumer or default_consumer(), from_start, symbol, count, as_json, heartbeat)
        else:
            _pubsub(s, symbol, count, as_json, heartbeat)
    except KeyboardInterrupt:
        pass


def _pubsub(s: Settings, symbol: str | None, count: int, as_json: bool, heartbeat: bool) -> None:
    import redis

    from pipeline.messages import MalformedMessageError, parse_message

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
            show(raw.decode(), message, as_json)
            seen += 1
            if count and seen >= count:
                break
    finally:
        pubsub.close()


def _durable(
    s: Settings,
    group: str,
    consumer: str,
    from_start: bool,
    symbol: str | None,
    count: int,
    as_json: bool,
    heartbeat: bool,
) -> None:
    """Print from the stream; ack each message after printing it, and what is filtered out unprinted.

    A group's entries are shared out between its consumers, so a filtered reader (--symbol,
    --no-heartbeat) acknowledges what it does not print: give it a group of its own.
    """
    import redis

    from pipeline.messages import HeartbeatMessage
    from pipeline.signal_feed import DurableFeed, FeedProblem

    client = redis.Redis.from_url(
        s.redis_url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30
    )
    stream = s.pipeline.stream_key
    # Unreachable at the start is an error (a wrong URL should not hang); later, a Redis restart is
    # waited out with backoff for as long as it takes.
    feed = DurableFeed(client, stream, group, consumer, start="all" if from_start else "new", max_retries=3)
    feed.ensure_group()
    feed.max_retries = None
    err_console.print(
        f"reading stream {stream} as {consumer} in group {group} on {s.redis_url}",
        highlight=False,
        soft_wrap=True,
    )
    seen = 0
    while not count or seen < count:
        # Never take more than is left to print: what is read and not printed stays pending.
        items = feed.read(count=min(BATCH, count - seen) if count else BATCH)
        unprinted: list[str] = []
        for item in items:
            if isinstance(item, FeedProblem):  # the feed has acknowledged it already
                err_console.print(f"[yellow]skipped:[/] {escape(str(item))}", highlight=False)
                continue
            message = item.message
            wanted = (
                heartbeat
                if isinstance(message, HeartbeatMessage)
                else symbol is None or message.symbol == symbol
            )
            if not wanted:
                unprinted.append(item.entry_id)
                continue
            show(item.data, message, as_json)
            feed.ack([item.entry_id])
            seen += 1
        feed.ack(unprinted)
