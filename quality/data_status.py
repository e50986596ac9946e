"""The candle store's health per symbol: newest candle, staleness, gaps, quarantine, whether the
minute's signal would be blocked for want of real candles, and the exchange-wide outages of the
last day. ``mlsignals data status`` prints it; the ml-data MCP server's ``data_status`` returns it.

It lives here, not in ``data``, because the signal gate it applies needs the model's window length
(``ml.features``), which the data layer may not import. Reads only SQL aggregates (and, for symbols
with candles, the model's bar window): neither pandas nor the model libraries are loaded for an
empty store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from core.timegrid import MINUTE_MS, floor_minute, iso_minute, now_ms
from data.store import GapRecord, group_outages
from data.validation import staleness_ms

if TYPE_CHECKING:
    from core.settings import Settings
    from data.store import CandleStore

# The outages of the last day are listed.
OUTAGE_LOOKBACK_MS = 1440 * MINUTE_MS


@dataclass(frozen=True)
class SymbolHealth:
    """One symbol's row of ``data status`` (times are ISO minutes, UTC)."""

    symbol: str
    candles: int
    first: str | None
    newest: str | None
    missing_minutes: int  # minutes inside [first, newest] with no stored candle
    filled_minutes: int  # stored minutes the source had no candle for (flagged fills)
    staleness_s: int | None  # how far the newest candle lags behind now
    stale: bool
    quarantine: str | None  # the rule that quarantined the symbol
    reason: str | None
    signal_blocked: str | None  # why this minute's window would give no signal (None: it would)
    last_outage: str | None  # the symbol's own long gap of the last day


@dataclass(frozen=True)
class ExchangeOutage:
    """The same long gap in many symbols at once, reported once."""

    start: str
    end: str
    minutes: int
    symbols: int


@dataclass(frozen=True)
class StoreHealth:
    exchange: str
    as_of_ms: int
    symbols: list[SymbolHealth]
    exchange_outages: list[ExchangeOutage]

    def to_json(self) -> dict[str, Any]:
        """The document ``data status --json`` prints."""
        return {
            "symbols": [asdict(r) for r in self.symbols],
            "exchange_outages": [asdict(o) for o in self.exchange_outages],
        }


def store_health(
    settings: Settings,
    store: CandleStore,
    exchange: str,
    symbols: Sequence[str] | None = None,
    *,
    now: int | None = None,
) -> StoreHealth:
    """Per symbol of ``exchange`` (all stored or quarantined ones, or ``symbols``): see ``SymbolHealth``."""
    now = now_ms() if now is None else now
    rows = store.status(exchange, symbols)
    quality = window_quality(settings, store, exchange, [r.symbol for r in rows if r.candles], now)
    outages, own_gaps = group_outages(
        store.gaps(exchange, since_ms=now - OUTAGE_LOOKBACK_MS, outages_only=True),
        max(1, len(rows)),
        settings.data.outage_min_share,
    )
    recent_outages = {g.symbol: g for g in own_gaps}
    records = []
    for r in rows:
        lag = staleness_ms(r.newest_open_ms, now)
        own = recent_outages.get(r.symbol)
        records.append(
            SymbolHealth(
                symbol=r.symbol,
                candles=r.candles,
                first=iso_minute(r.first_open_ms) if r.first_open_ms is not None else None,
                newest=iso_minute(r.newest_open_ms) if r.newest_open_ms is not None else None,
                missing_minutes=r.missing_minutes,
                filled_minutes=r.filled_minutes,
                staleness_s=None if lag is None else lag // 1000,
                stale=lag is None or lag > settings.data.stale_after_seconds * 1000,
                quarantine=r.quarantine_rule,
                reason=r.quarantine_detail,
                signal_blocked=quality.get(r.symbol),
                last_outage=None if own is None else own_gap_text(own),
            )
        )
    return StoreHealth(
        exchange=exchange,
        as_of_ms=now,
        symbols=records,
        exchange_outages=[
            ExchangeOutage(iso_minute(o.start_ms), iso_minute(o.end_ms), o.minutes, len(o.symbols))
            for o in outages
        ],
    )


def own_gap_text(gap: GapRecord) -> str:
    return f"long gap {iso_minute(gap.start_ms)} .. {iso_minute(gap.end_ms)} ({gap.minutes} min)"


def window_quality(
    settings: Settings, store: CandleStore, exchange: str, symbols: list[str], now: int
) -> dict[str, str]:
    """Why each symbol would get no signal this minute for want of real candles (absent: it would)."""
    if not symbols:
        return {}
    from ml.features import FEATURE_SPEC

    context, pipeline = FEATURE_SPEC.context, settings.pipeline
    panel = store.read_bars(exchange, symbols, floor_minute(now), context, settings.data.bar_minutes)
    reasons = panel.quality_reasons(context, pipeline.max_filled_share, pipeline.min_real_share_newest_bar)
    incomplete = panel.incomplete_symbols()
    for symbol, bars in incomplete.items():
        reasons.setdefault(symbol, f"history: {bars} of the last {context} bars incomplete")
    return reasons
