"""What the three MCP servers share: tool registration with annotations, the write gate, the audit,
clear tool errors, and the limits every argument is checked against.

Every tool goes through a ``Toolbox``:

* ``toolbox.read(title=...)`` registers a read-only tool (``read_only_hint``, never destructive,
  idempotent);
* ``toolbox.write(title=..., destructive=..., idempotent=...)`` registers a mutating tool only when
  ``mcp.allow_write`` is true (``MLSIG_MCP__ALLOW_WRITE=true``): without it the tool does not exist
  for the client at all. Each call of one writes an ``mcp_audit`` row (tool, arguments, caller,
  result or error, duration), also when it fails.

Whatever a tool raises reaches the client as a tool error with a clear message, never a traceback:
the project's own errors (``MLSignalsError``) and ``ValueError``/``LookupError`` with their message;
anything else as ``internal error (…): logged on the server``, with the traceback in the server's log.
"""

from __future__ import annotations

import functools
import getpass
import inspect
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel

from core.errors import MLSignalsError
from core.logging import get_logger
from core.settings import Settings
from data.models import McpAudit

log = get_logger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

READ_ONLY = ToolAnnotations(
    read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)
# The longest audit ``result`` kept: a summary, never a dump.
AUDIT_RESULT_CHARS = 4000


def write_hints(*, destructive: bool, idempotent: bool, open_world: bool = False) -> ToolAnnotations:
    return ToolAnnotations(
        read_only_hint=False,
        destructive_hint=destructive,
        idempotent_hint=idempotent,
        open_world_hint=open_world,
    )


def caller() -> str:
    """Who is calling: the bearer token's client id over HTTP, the OS user over stdio (or in process)."""
    token = get_access_token()
    if token is not None:
        return token.client_id
    return f"stdio:{getpass.getuser()}"


def as_tool_error(exc: BaseException, tool: str) -> ToolError:
    """The message a client sees for ``exc``: clear for what the caller can fix, generic otherwise."""
    if isinstance(exc, ToolError):
        return exc
    if isinstance(exc, MLSignalsError | ValueError | LookupError):
        message = str(exc) or type(exc).__name__
        return ToolError(message)
    log.exception("mcp tool failed", tool=tool, error=f"{type(exc).__name__}: {exc}")
    return ToolError(f"internal error ({type(exc).__name__}) in {tool}: logged on the server")


class AuditLog:
    """Writes ``mcp_audit`` rows (data/models.py ``McpAudit``) through the server's database."""

    def __init__(self, engine_for: Callable[[], Any], server: str) -> None:
        self._engine_for = engine_for
        self.server = server

    def record(
        self,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        ok: bool,
        result: Any,
        error: str | None,
        duration_ms: float,
    ) -> None:
        from sqlalchemy.orm import Session

        row = McpAudit(
            called_at=datetime.now(UTC),
            server=self.server,
            tool=tool,
            caller=caller(),
            arguments=json_safe(dict(arguments)),
            ok=ok,
            result=_summary(result) if ok else None,
            error=error,
            duration_ms=round(duration_ms, 3),
        )
        with Session(self._engine_for()) as session, session.begin():
            session.add(row)


class Toolbox:
    """Registers one server's tools: annotations, the write gate, error mapping and the audit."""

    def __init__(self, server: MCPServer, settings: Settings, audit: AuditLog) -> None:
        self.server = server
        self.settings = settings
        self.audit = audit
        self.registered: list[str] = []

    def read(self, *, title: str) -> Callable[[F], F]:
        def register(fn: F) -> F:
            self._add(fn, title, READ_ONLY, audited=False)
            return fn

        return register

    def write(self, *, title: str, destructive: bool, idempotent: bool) -> Callable[[F], F]:
        def register(fn: F) -> F:
            if self.settings.mcp.allow_write:
                self._add(
                    fn, title, write_hints(destructive=destructive, idempotent=idempotent), audited=True
                )
            return fn

        return register

    def _add(self, fn: Callable[..., Any], title: str, hints: ToolAnnotations, *, audited: bool) -> None:
        name = fn.__name__
        audit = self.audit if audited else None
        wrapped = (
            _async_guard(fn, name, audit) if inspect.iscoroutinefunction(fn) else _guard(fn, name, audit)
        )
        self.server.add_tool(
            wrapped, name=name, title=title, annotations=hints, description=inspect.getdoc(fn)
        )
        self.registered.append(name)


@dataclass
class _Call:
    """One tool call's ending, shared by the sync and the async wrapper: audited (write tools), and
    any failure turned into the tool error the caller sees."""

    name: str
    audit: AuditLog | None
    kwargs: Mapping[str, Any]
    began: float = field(default_factory=time.perf_counter)

    def failed(self, exc: BaseException) -> ToolError:
        error = as_tool_error(exc, self.name)
        _audit(self.audit, self.name, self.kwargs, self.began, ok=False, result=None, error=str(error))
        return error

    def done(self, result: Any) -> Any:
        _audit(self.audit, self.name, self.kwargs, self.began, ok=True, result=result, error=None)
        return result


def _guard(fn: Callable[..., Any], name: str, audit: AuditLog | None) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        ending = _Call(name, audit, kwargs)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - SystemExit too: a stdio server must not go mute
            raise ending.failed(exc) from None
        return ending.done(result)

    return call


def _async_guard(fn: Callable[..., Any], name: str, audit: AuditLog | None) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def call(*args: Any, **kwargs: Any) -> Any:
        ending = _Call(name, audit, kwargs)
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a clear tool error
            raise ending.failed(exc) from None
        return ending.done(result)

    return call


def _audit(
    audit: AuditLog | None,
    tool: str,
    kwargs: Mapping[str, Any],
    began: float,
    *,
    ok: bool,
    result: Any,
    error: str | None,
) -> None:
    if audit is None:
        return
    arguments = {k: v for k, v in kwargs.items() if not _is_context(v)}
    duration_ms = (time.perf_counter() - began) * 1000.0
    try:
        audit.record(tool, arguments, ok=ok, result=result, error=error, duration_ms=duration_ms)
    except Exception as exc:  # noqa: BLE001
        # A mutation that cannot be audited has already happened: say so loudly, in the log and to
        # the caller, rather than hide it.
        log.error("mcp audit row not written", tool=tool, error=f"{type(exc).__name__}: {exc}")
        raise ToolError(f"{tool} ran, but its audit row could not be written: {type(exc).__name__}") from None


def _is_context(value: Any) -> bool:
    from mcp.server.mcpserver import Context

    return isinstance(value, Context)


def json_safe(value: Any) -> Any:
    """``value`` as JSON: pydantic models dumped, datetimes as ISO strings, NaN and inf as None."""
    if isinstance(value, BaseModel):
        return json_safe(value.model_dump(mode="json"))
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [json_safe(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _summary(result: Any) -> dict[str, Any]:
    doc = json_safe(result)
    if not isinstance(doc, dict):
        doc = {"value": doc}
    import json

    text = json.dumps(doc)
    if len(text) <= AUDIT_RESULT_CHARS:
        return doc
    return {"truncated": True, "chars": len(text), "head": text[:AUDIT_RESULT_CHARS]}


# -- argument checks -------------------------------------------------------------------------------
def parse_time(value: str | None, name: str, *, default: datetime | None = None) -> datetime:
    """An ISO 8601 time (``2026-12-04T08:00Z``; naive means UTC) or ``now``; a tool error otherwise."""
    if value is None or value == "":
        if default is None:
            raise ToolError(f"{name} is required (ISO 8601, e.g. 2026-12-04T08:00Z)")
        return default
    if value.strip().lower() == "now":
        return datetime.now(UTC)
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ToolError(f"{name} {value!r} is not an ISO 8601 time (e.g. 2026-12-04T08:00Z)") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def check_range(start: datetime, end: datetime, settings: Settings, what: str = "range") -> None:
    """``start`` before ``end``, and not longer than ``mcp.max_range_days``."""
    if end <= start:
        raise ToolError(f"{what}: start {start.isoformat()} must be before end {end.isoformat()}")
    longest = timedelta(days=settings.mcp.max_range_days)
    if end - start > longest:
        raise ToolError(
            f"{what} of {(end - start).total_seconds() / 86400:.1f} days is longer than the limit "
            f"of {settings.mcp.max_range_days:g} days (mcp.max_range_days)"
        )


def check_limit(limit: int, settings: Settings) -> int:
    if limit < 1:
        raise ToolError(f"limit must be at least 1, got {limit}")
    if limit > settings.mcp.max_rows:
        raise ToolError(f"limit {limit} is above the limit of {settings.mcp.max_rows} rows (mcp.max_rows)")
    return limit


def check_symbols(asked: Sequence[str], known: Sequence[str], settings: Settings) -> list[str]:
    """``asked`` in the store's spelling, or a tool error naming the unknown ones (and what exists)."""
    if len(asked) > settings.mcp.max_symbols:
        raise ToolError(f"{len(asked)} symbols asked; at most {settings.mcp.max_symbols} (mcp.max_symbols)")
    by_upper = {s.upper(): s for s in known}
    unknown = [s for s in asked if s.upper() not in by_upper]
    if unknown:
        hint = ", ".join(sorted(known)[:5]) + (", …" if len(known) > 5 else "")
        raise ToolError(
            f"unknown symbol{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)} "
            f"({len(known)} known{': ' + hint if known else ''}; list_symbols has them all)"
        )
    return [by_upper[s.upper()] for s in asked]
