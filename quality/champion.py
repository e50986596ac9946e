"""Changing the champion and weighing it against the challenger: what ``mlsignals model promote``,
``rollback`` and ``compare`` do, and the ml-model MCP server's tools of the same names.

A change of champion goes through the registry (``Registry.promote`` / ``rollback``: verified files,
the aliases rewritten under their lock) and then lifts a quality-breaker halt of the version before
(``quality.events.resume_after_promotion``, docs/SIGNAL_QUALITY.md): the breaker halts trading on a
champion that went bad, and a new champion is the operator's answer to it. The comparison is
``quality.compare.compare_versions`` of the two aliases' versions over the last
``quality.window_days`` unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Engine

from core.settings import Settings
from ml.registry import Registry
from quality.compare import compare_versions
from quality.events import resume_after_promotion
from quality.outcomes import HORIZONS


@dataclass(frozen=True)
class ChampionChange:
    # "unchanged": the version asked for already was the champion (``promote(..., if_needed=True)``).
    action: Literal["promote", "rollback", "unchanged"]
    champion: str
    replaced: str | None  # the champion before, None when there was none (or nothing changed)
    challenger: str | None  # the challenger alias afterwards
    breaker_lifted: bool


def promote(
    engine: Engine, settings: Settings, registry: Registry, ref: str, *, if_needed: bool = False
) -> ChampionChange:
    """Make ``ref`` (a version or alias) the champion and lift a breaker halt of the one before.

    A version that already is the champion is an error (``RegistryError``), or with ``if_needed`` no
    change at all: then promoting twice leaves the registry as promoting once does."""
    version = registry.resolve(ref)
    if if_needed and registry.aliases().get("champion") == version:
        lifted = resume_after_promotion(engine, settings, version)
        return ChampionChange("unchanged", version, None, registry.aliases().get("challenger"), lifted)
    promoted = registry.promote(version)
    replaced = _last_event(registry, "promote", promoted).get("replaced")
    lifted = resume_after_promotion(engine, settings, promoted)
    return ChampionChange("promote", promoted, replaced, registry.aliases().get("challenger"), lifted)


def rollback(engine: Engine, settings: Settings, registry: Registry) -> ChampionChange:
    """Return the champion alias to the previous champion (the demoted one becomes the challenger)
    and lift a breaker halt of the demoted one. ``RegistryError`` when there is none to return to."""
    restored = registry.rollback()
    replaced = _last_event(registry, "rollback", restored).get("replaced")
    lifted = resume_after_promotion(engine, settings, restored)
    return ChampionChange("rollback", restored, replaced, registry.aliases().get("challenger"), lifted)


def _last_event(registry: Registry, action: str, version: str) -> dict[str, Any]:
    """The registry's history entry of this change (written under the aliases' lock with it); empty
    if another change came in between."""
    history = registry.aliases().get("history") or []
    last = history[-1] if history else {}
    return last if last.get("action") == action and last.get("version") == version else {}


def compare_champion(
    engine: Engine,
    settings: Settings,
    registry: Registry,
    *,
    horizons: Sequence[int] = HORIZONS,
    since: datetime | None = None,
) -> dict[str, Any]:
    """``compare_versions`` of the champion and the challenger (``RegistryError`` when either alias
    is unset) on the minutes from ``since``, by default the last ``quality.window_days``."""
    champion, challenger = registry.resolve("champion"), registry.resolve("challenger")
    start = since or datetime.now(UTC) - timedelta(days=settings.quality.window_days)
    return compare_versions(engine, settings, champion, challenger, horizons=horizons, since=start)
