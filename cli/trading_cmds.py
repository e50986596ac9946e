"""``mlsignals trading …``: account status, order history, the kill switch and flattening
(docs/TRADING.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from cli.common import EXIT_PARTIAL, clean_errors, console, err_console, ready_store, settings, split_symbols
from core.timegrid import as_utc

if TYPE_CHECKING:
    from datetime import datetime

    from trading.execution import FlattenReport

app = typer.Typer(help="Orders, positions, PnL and the kill switch.", no_args_is_help=True)


def _t(value: datetime | None) -> str:
    return "-" if value is None else f"{as_utc(value):%Y-%m-%d %H:%M}"


def _n(value: float | None, digits: int = 6) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _money(value: float) -> str:
    return f"{value:,.2f}"


@app.command()
@clean_errors
def status() -> None:
    """Balance, equity, PnL, open positions and orders, the limits in force, halted or not."""
    from trading.report import account_status
    from trading.risk import RiskLimits

    s = settings()
    engine = ready_store(s).engine
    mode = s.trading.mode
    view = account_status(engine, mode)
    acct = view.account
    if acct is None:
        console.print(
            f"{mode} account: no order yet (it starts with {_money(s.trading.paper_balance)} "
            f"{s.trading.currency} in paper mode)",
            highlight=False,
        )
    else:
        state = (
            f"[bold red]HALTED[/] since {_t(acct.halted_at)}: {escape(acct.halt_reason or '')}"
            if acct.halted
            else "[green]trading[/]"
        )
        summary = Table(title=f"{mode} account ({acct.currency})", show_header=False, title_justify="left")
        summary.add_column("item", no_wrap=True)
        summary.add_column("value", justify="right")
        summary.add_row("state", state)
        summary.add_row("balance", _money(acct.balance))
        summary.add_row("equity", _money(acct.equity))
        summary.add_row("unrealised PnL", _money(view.unrealised))
        summary.add_row("realised PnL today", f"{_money(view.realised_today)} ({view.closed_today} closed)")
        summary.add_row("realised PnL total", _money(view.realised_total))
        day = f"{_money(view.day_pnl)} (from {_money(acct.day_start_equity)})"
        summary.add_row("PnL since 00:00 UTC", day)
        summary.add_row("initial balance", _money(acct.initial_balance))
        console.print(summary)

    positions = Table(title=f"open positions ({len(view.positions)})", title_justify="left")
    columns = ("symbol", "side", "qty", "entry", "mark", "stop-loss", "take-profit", "unrealised", "opened")
    for name in columns:
        positions.add_column(name, no_wrap=True, justify="left" if name in ("symbol", "side") else "right")
    for p in view.positions:
        side = p.side if p.status != "closing" else f"{p.side} (closing)"
        positions.add_row(
            p.symbol,
            side,
            _n(p.qty),
            _n(p.entry_price),
            _n(p.mark_price),
            _n(p.stop_loss),
            _n(p.take_profit),
            _money(p.unrealised_pnl),
            _t(p.opened_at),
        )
    console.print(positions)

    orders = Table(title=f"open orders ({len(view.open_orders)})", title_justify="left")
    for name in ("client order id", "symbol", "side", "purpose", "qty", "status", "signal minute"):
        orders.add_column(name, no_wrap=True)
    for o in view.open_orders:
        minute = _t(o.signal_minute)
        orders.add_row(o.client_order_id, o.symbol, o.side, o.purpose, _n(o.qty), o.status, minute)
    console.print(orders)

    limits = Table(title="limits in force", show_header=False, title_justify="left")
    limits.add_column("limit", no_wrap=True)
    limits.add_column("value")
    t = s.trading
    for name, value in RiskLimits.from_settings(s).describe().items():
        limits.add_row(name, value)
    limits.add_row("risk_per_trade", f"{t.risk_per_trade:.2%} of equity at the stop-loss")
    limits.add_row("max_leverage", f"{t.max_leverage:g} x equity per order")
    if mode == "paper":
        limits.add_row("paper fees / slippage", f"{t.fee_bps:g} bps / {t.slippage_bps:g} bps")
    console.print(limits)


@app.command()
@clean_errors
def history(
    limit: int = typer.Option(20, "--limit", "-n", min=1, help="How many of each to show."),
    symbol: str | None = typer.Option(None, "--symbol", "-s", help="Only this symbol."),
) -> None:
    """Recent intents (with rejection reasons), orders and fills, newest first."""
    from trading.report import recent_fills, recent_intents, recent_orders

    s = settings()
    engine = ready_store(s).engine
    mode = s.trading.mode

    intents = Table(title="recent intents", title_justify="left")
    for name in ("minute", "symbol", "direction", "confidence", "status", "reason"):
        intents.add_column(name, no_wrap=name != "reason")
    for i in recent_intents(engine, limit, symbol):
        intents.add_row(
            _t(i.minute), i.symbol, i.direction, f"{i.confidence:.3f}", i.status, escape(i.reason or "")
        )
    console.print(intents)

    orders = Table(title=f"recent {mode} orders", title_justify="left")
    for name in ("created", "symbol", "side", "purpose", "qty", "status", "avg price", "fee", "reason"):
        orders.add_column(name, no_wrap=name != "reason")
    for o in recent_orders(engine, mode, limit, symbol):
        orders.add_row(
            _t(o.created_at),
            o.symbol,
            o.side,
            o.purpose,
            _n(o.qty),
            o.status,
            _n(o.avg_price),
            _money(o.fee),
            escape(o.reason or ""),
        )
    console.print(orders)

    fills = Table(title=f"recent {mode} fills", title_justify="left")
    for name in ("filled", "symbol", "side", "kind", "qty", "price", "fee", "realised (gross)"):
        fills.add_column(name, no_wrap=True)
    for f in recent_fills(engine, mode, limit, symbol):
        fills.add_row(
            _t(f.filled_at),
            f.symbol,
            f.side,
            f.kind,
            _n(f.qty),
            _n(f.price),
            _money(f.fee),
            _money(f.realised_pnl) if f.kind != "entry" else "-",
        )
    console.print(fills)


@app.command()
@clean_errors
def halt(
    reason: str = typer.Option("halted by the operator", "--reason", help="Why (shown with every refusal)."),
) -> None:
    """Kill switch on: every new intent is refused and pending paper entries are cancelled."""
    from trading.executor import set_halted

    s = settings()
    set_halted(ready_store(s).engine, s, True, reason)
    console.print(f"trading halted: {escape(reason)}", highlight=False)


@app.command()
@clean_errors
def resume() -> None:
    """Kill switch off: new intents are checked and placed again (also after a quality-breaker trip,
    which is recorded with the resume: docs/SIGNAL_QUALITY.md)."""
    from quality.events import OPERATOR
    from quality.events import resume as resume_trading

    s = settings()
    if resume_trading(ready_store(s).engine, s, source=OPERATOR, reason="resumed by the operator"):
        console.print("trading resumed", highlight=False)
    else:
        console.print("trading was not halted", highlight=False)


@app.command()
@clean_errors
def flatten(
    symbol: list[str] | None = typer.Option(
        None, "--symbol", "-s", help="Only these symbols (repeat, or separate with commas); default: all."
    ),
    reason: str = typer.Option("flattened by the operator", "--reason", help="Recorded with the halt."),
    keep_trading: bool = typer.Option(
        False,
        "--keep-trading",
        help="Leave the kill switch as it is: new entries may open at the next minute.",
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Close open positions at market now and cancel the entries not sent yet; the kill switch goes
    on first (unless --keep-trading). Paper: at the last close; live: reduce-only market orders. Safe
    to run again: it never closes a position twice."""
    from data.sources.factory import source_name
    from trading.factory import build_trader
    from trading.report import account_status

    s = settings()
    store = ready_store(s)
    mode = s.trading.mode
    wanted = split_symbols(symbol)
    if not yes:
        view = account_status(store.engine, mode)
        held = [p for p in view.positions if wanted is None or p.symbol in wanted]
        what = (
            f"close {len(held)} open position{'s' if len(held) != 1 else ''} of the {mode} account at market"
        )
        halt_too = "" if keep_trading else " and halt trading"
        typer.confirm(f"{what}{halt_too}?", abort=True)
    trader = build_trader(s, store, source_name(s))
    try:
        report = trader.flatten(wanted, halt_reason=None if keep_trading else f"flatten: {reason}")
    finally:
        if trader.broker is not None:
            trader.broker.close()
    _print_flatten(report, s.trading.currency)
    if wanted is not None:
        missing = sorted(set(wanted) - {p.symbol for p in report.positions})
        if missing:
            console.print(f"no open position in {', '.join(missing)}", highlight=False)
    if not keep_trading:
        console.print("trading is halted: `mlsignals trading resume` lifts it", highlight=False)
    if not report.complete:
        left = report.not_closed
        err_console.print(
            f"[bold red]{left} position{'s are' if left != 1 else ' is'} not closed:[/] run the command "
            "again (every exit is looked up on the exchange before anything is sent again)",
            highlight=False,
        )
        raise typer.Exit(EXIT_PARTIAL)


def _print_flatten(report: FlattenReport, currency: str) -> None:
    table = Table(
        title=f"flattened {report.account} account ({len(report.positions)} positions, "
        f"{report.cancelled_orders} orders cancelled)",
        title_justify="left",
    )
    for name in (
        "symbol",
        "side",
        "qty",
        "status",
        "exit price",
        "realised PnL (net)",
        "marked at",
        "problem",
    ):
        table.add_column(name, no_wrap=name != "problem")
    for p in report.positions:
        table.add_row(
            p.symbol,
            p.side,
            _n(p.qty),
            p.status if p.status == "closed" else f"[bold red]{p.status}[/]",
            _n(p.exit_price),
            f"{_money(p.realised_pnl)} {currency}",
            _t(p.marked_at),
            escape(p.problem or ""),
        )
    console.print(table)
