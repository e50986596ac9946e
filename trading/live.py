"""The live broker: orders on a ccxt exchange (Bybit USDT perpetuals by default).

This module only talks to the exchange and classifies what comes back; the executor
(``trading.executor``) decides and persists, and live execution (``trading.execution.live``) sends
and reconciles. ccxt's error classes decide:

* ``NetworkError`` and its family (``RequestTimeout``, ``ExchangeNotAvailable`` on HTTP 5xx,
  ``RateLimitExceeded``, ``InvalidNonce``): the request may or may not have taken effect. Raised as
  ``OutcomeUnknownError`` (a ``TemporaryError``): the caller looks the order up by its client
  order id before it ever sends it again, and retries later when the exchange cannot be reached.
* A duplicate client order id (Bybit retCode 110072, ccxt ``InvalidOrder``; or ``DuplicateOrderId``):
  the order exists already. Raised as ``DuplicateOrderError``: reconcile, never resend.
* ``InsufficientFunds``, ``InvalidOrder``, ``BadSymbol``/``BadRequest``, ``AuthenticationError`` and
  any other ``ExchangeError``: permanent, ``OrderRejectedError`` with the exchange's reason.

Reads (markets, order look-ups, positions, balance) run under the exchange gateway's retry policy
(``data.exchange.retry``: ``NetworkError`` only, exponential backoff with jitter) before a failure is
reported; a create or cancel is sent once and never retried blindly. Every request waits for the
gateway's rate limiter (shared with the candle source of the process, or of the host through Redis).

The client order id goes out as ccxt's ``clientOrderId`` (Bybit ``orderLinkId``), so the exchange
itself refuses a second order with the same id. Stop-loss and take-profit are attached to the entry
order, so the exchange closes the position even when no worker is running.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import ccxt

from core.errors import BrokerUnavailableError, OrderRejectedError
from core.logging import get_logger
from core.settings import Settings
from data.exchange.client import build_exchange
from data.exchange.limiter import RateLimiter, make_limiter
from data.exchange.retry import RetryPolicy
from trading.credentials import Credentials
from trading.sizing import MarketRules

log = get_logger(__name__)

_MAX_ERROR_CHARS = 300
_DUPLICATE_CODES = ("110072",)


class RedactSecrets(logging.Filter):
    """Blanks the given strings out of a record: ccxt's DEBUG log prints request headers in full,
    the API key header included."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()

    def add(self, *secrets: str) -> None:
        self._secrets.update(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if any(secret in text for secret in self._secrets):
            for secret in self._secrets:
                text = text.replace(secret, "**********")
            record.msg, record.args = text, None
        return True


# Every LiveBroker's ccxt client logs here; the filter works where records are created.
_CCXT_LOG = logging.getLogger(f"{__name__}.ccxt")
_REDACT = RedactSecrets()
_CCXT_LOG.addFilter(_REDACT)


class OutcomeUnknownError(BrokerUnavailableError):
    """The create request may have reached the exchange: look the order up before any resend."""


class DuplicateOrderError(BrokerUnavailableError):
    """The exchange already holds an order with this client order id."""


@dataclass(frozen=True)
class ExchangeOrder:
    """The part of a ccxt order structure the executor uses."""

    id: str | None
    client_order_id: str | None
    status: str | None  # ccxt: open, closed, canceled, expired, rejected (None: not yet known)
    filled: float
    average: float | None
    fee: float

    @classmethod
    def from_ccxt(cls, order: dict[str, Any]) -> ExchangeOrder:
        fee = order.get("fee") or {}
        return cls(
            id=order.get("id"),
            client_order_id=order.get("clientOrderId"),
            status=order.get("status"),
            filled=float(order.get("filled") or 0.0),
            average=None if order.get("average") is None else float(order["average"]),
            fee=float(fee.get("cost") or 0.0),
        )


@dataclass(frozen=True)
class ExchangePosition:
    symbol: str
    side: str  # long / short
    qty: float
    entry_price: float
    mark_price: float
    unrealised_pnl: float
    stop_loss: float | None
    take_profit: float | None


def short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + "…"


def classify(exc: Exception, op: str, *, places: bool) -> Exception:
    """The project error a ccxt error stands for (see the module docstring).

    Only a call that ``places`` an order can be rejected; a failed read (look-up, positions,
    balance) says nothing about the order, so it is always temporary.
    """
    if not isinstance(exc, ccxt.BaseError):
        return exc
    if not places:
        return BrokerUnavailableError(f"{op}: {short(exc)}")
    if isinstance(exc, ccxt.NetworkError):
        return OutcomeUnknownError(f"{op}: {short(exc)}")
    if isinstance(exc, ccxt.DuplicateOrderId) or (
        isinstance(exc, ccxt.InvalidOrder) and any(code in str(exc) for code in _DUPLICATE_CODES)
    ):
        return DuplicateOrderError(f"{op}: {short(exc)}")
    return OrderRejectedError(f"{op}: {short(exc)}")


class LiveBroker:
    """One synchronous ccxt client per process (ccxt clients are not thread-safe: calls are
    serialised). ``limiter`` defaults to the process's in-process budget for the exchange; pass the
    Redis-shared one (``data.exchange.limiter.make_limiter``) to share the host's. An injected
    ``exchange`` is used as given."""

    def __init__(
        self,
        settings: Settings,
        credentials: Credentials,
        exchange: Any | None = None,
        *,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.settings = settings
        self.limiter = limiter if limiter is not None else make_limiter(settings.exchange)
        self._exchange = (
            exchange if exchange is not None else build_exchange(settings.exchange, limiter=self.limiter)
        )
        self._policy = RetryPolicy.from_settings(settings.exchange)
        # Set on the client object only: never passed around, never logged.
        self._exchange.apiKey = credentials.api_key.get_secret_value()
        self._exchange.secret = credentials.api_secret.get_secret_value()
        _REDACT.add(self._exchange.apiKey, self._exchange.secret)
        self._exchange.logger = _CCXT_LOG
        self._lock = threading.RLock()
        self._markets: dict[str, Any] | None = None

    def close(self) -> None:
        self._exchange.close()

    def _call(self, op: str, fn: Any, *args: Any, places: bool = False) -> Any:
        """One request, never repeated: its outcome is the exchange's to tell (look-ups decide)."""
        try:
            with self._lock:
                return fn(*args)
        except ccxt.BaseError as exc:  # anything else is not the exchange's answer: it goes up as is
            raise classify(exc, op, places=places) from None

    def _read(self, op: str, fn: Any, *args: Any) -> Any:
        """A read, retried under the gateway's policy; the lock is held per attempt, not while
        waiting, so another thread's call can go in between."""

        def attempt() -> Any:
            with self._lock:
                return fn(*args)

        try:
            return self._policy.retrying(source=self._exchange.id, op=op)(attempt)
        except ccxt.BaseError as exc:
            raise classify(exc, op, places=False) from None

    def _load(self) -> dict[str, Any]:
        if self._markets is None:
            self._markets = self._read("load_markets", self._exchange.load_markets)
        return self._markets

    def market_rules(self, symbol: str) -> MarketRules:
        markets = self._load()
        market = markets.get(symbol)
        if market is None:
            raise OrderRejectedError(f"BadSymbol: {symbol} is not a market of {self._exchange.id}")
        step = float((market.get("precision") or {}).get("amount") or 0.0) or 1e-8
        limits = market.get("limits") or {}
        return MarketRules(
            qty_step=step,
            min_qty=float((limits.get("amount") or {}).get("min") or 0.0),
            min_notional=float((limits.get("cost") or {}).get("min") or 0.0),
        )

    def create(
        self,
        *,
        symbol: str,
        side: str,
        qty: float,
        client_order_id: str,
        stop_loss: float | None = None,
        take_profit: float | None = None,
        reduce_only: bool = False,
    ) -> ExchangeOrder:
        """Place a market order.

        Raises ``OutcomeUnknownError``, ``DuplicateOrderError`` or ``OrderRejectedError``.
        """
        self._load()
        params: dict[str, Any] = {"clientOrderId": client_order_id}
        if reduce_only:
            params["reduceOnly"] = True
        if stop_loss is not None:
            params["stopLoss"] = {"triggerPrice": stop_loss}
        if take_profit is not None:
            params["takeProfit"] = {"triggerPrice": take_profit}
        create = self._exchange.create_order
        placed = self._call("create_order", create, symbol, "market", side, qty, None, params, places=True)
        return ExchangeOrder.from_ccxt(placed)

    def find(self, symbol: str, client_order_id: str) -> ExchangeOrder | None:
        """The exchange's order with this client order id, open or closed; ``None`` when it has none."""
        self._load()
        params = {"orderLinkId": client_order_id}
        for op, fn in (
            ("fetch_open_orders", self._exchange.fetch_open_orders),
            ("fetch_closed_orders", self._exchange.fetch_canceled_and_closed_orders),
        ):
            found = self._read(op, fn, symbol, None, None, params)
            for order in found:
                if order.get("clientOrderId") == client_order_id:
                    return ExchangeOrder.from_ccxt(order)
        return None

    def cancel(self, symbol: str, client_order_id: str) -> None:
        self._load()
        self._call(
            "cancel_order", self._exchange.cancel_order, None, symbol, {"orderLinkId": client_order_id}
        )

    def positions(self) -> list[ExchangePosition]:
        self._load()
        out = []
        for p in self._read("fetch_positions", self._exchange.fetch_positions):
            qty = float(p.get("contracts") or 0.0)
            if qty <= 0 or p.get("side") not in ("long", "short"):
                continue
            entry = float(p.get("entryPrice") or 0.0)
            out.append(
                ExchangePosition(
                    symbol=str(p["symbol"]),
                    side=str(p["side"]),
                    qty=qty,
                    entry_price=entry,
                    mark_price=float(p.get("markPrice") or entry),
                    unrealised_pnl=float(p.get("unrealizedPnl") or 0.0),
                    stop_loss=_price(p.get("stopLossPrice")),
                    take_profit=_price(p.get("takeProfitPrice")),
                )
            )
        return out

    def balance(self, currency: str) -> tuple[float, float]:
        """``(wallet balance, equity)`` of ``currency`` (equity includes unrealised PnL)."""
        self._load()
        raw = self._read("fetch_balance", self._exchange.fetch_balance)
        wallet = float((raw.get(currency) or {}).get("total") or 0.0)
        equity = wallet
        for account in ((raw.get("info") or {}).get("result") or {}).get("list") or []:
            for coin in account.get("coin") or []:
                if coin.get("coin") == currency and coin.get("equity") not in (None, ""):
                    equity = float(coin["equity"])
        return wallet, equity


def _price(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None
