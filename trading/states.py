"""The state machines of intents, orders and positions (docs/TRADING.md).

Intent: ``received`` -> ``rejected`` (reason) | ``accepted`` -> ``submitted`` -> ``filled`` |
``cancelled`` | ``expired`` | ``rejected`` (by the exchange). A paper intent goes straight from
``received`` to ``submitted``: the paper broker holds its order until the next candle.

Order: ``pending`` (paper: waiting for its fill candle) | ``accepted`` (live: decided, not yet
acknowledged) -> ``unknown`` (live: the create call's outcome is unknown) -> ``submitted`` (live:
resting on the exchange) -> ``filled`` | ``cancelled`` | ``expired`` | ``rejected``.

Position: ``open`` -> ``closing`` (an opposite signal's exit order waits for its fill) -> ``closed``.
"""

from __future__ import annotations

# Intents (order_intents.status)
RECEIVED = "received"
ACCEPTED = "accepted"
SUBMITTED = "submitted"
FILLED = "filled"
REJECTED = "rejected"
CANCELLED = "cancelled"
EXPIRED = "expired"

# Orders (trading_orders.status): the intent statuses plus these two
PENDING = "pending"
UNKNOWN = "unknown"

# An order in one of these may still fill: it counts towards positions and exposure.
ACTIVE_ORDER = (PENDING, ACCEPTED, UNKNOWN, SUBMITTED)
TERMINAL_ORDER = (FILLED, CANCELLED, EXPIRED, REJECTED)
# An entry that happened or may still happen: what the per-symbol cooldown counts.
ENTERED = (*ACTIVE_ORDER, FILLED)

# Order purposes
ENTRY = "entry"
EXIT = "exit"

# Positions (trading_positions.status)
OPEN = "open"
CLOSING = "closing"
CLOSED = "closed"
