"""What the model registry holds, as typed figures: one summary per version (``mlsignals model list``
and the ml-model MCP server's ``list_models``), one version's details with the check of its files
(``show_model``), and an evaluation that leaves the stored metrics as they are (``evaluate_model``).

Summaries and details read the versions' JSON files only: no weights are loaded, so listing a
registry stays cheap however large its models are. Importing this module loads neither torch nor the
registry (the MCP servers import it to declare their results' schemas).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from core.settings import Settings
    from data.store import CandleStore
    from ml.progress import Progress
    from ml.registry import Registry, VersionInfo


class HorizonFigures(BaseModel):
    """One horizon of an evaluated period: the argmax class against the period's majority class, and
    the mean per-time IC of the returns head."""

    horizon_bars: int
    samples: int | None = None
    accuracy: float | None = None
    majority_accuracy: float | None = None
    majority_class: str | None = None
    ic_per_time: float | None = None


class VersionSummary(BaseModel):
    version: str
    created: str
    aliases: list[str] = Field(
        description="champion / challenger; the ml-model server adds previous (see previous_champion)."
    )
    previous_champion: bool = Field(
        description="The champion a rollback would restore (the top of the registry's rollback stack)."
    )
    exchange: str | None = None
    symbols: int = Field(description="How many symbols it was trained on.")
    history_start: str | None = Field(None, description="First minute of its training candles (ISO).")
    history_end: str | None = Field(None, description="End of its training candles (ISO, exclusive).")
    test: list[HorizonFigures] = Field(
        default_factory=list, description="The stored test-split figures per horizon; empty if none."
    )


class Verification(BaseModel):
    ok: bool
    error: str | None = Field(None, description="Why the check failed (a changed or missing file).")
    files: dict[str, str] = Field(default_factory=dict, description="sha256 of each file, as checked.")
    manifest_sha256: str | None = None


class VersionDetails(BaseModel):
    summary: VersionSummary
    training: dict[str, Any] = Field(
        description="training.json without the per-epoch history: range, symbols, split, recipe, fit."
    )
    config: dict[str, Any] = Field(description="config.json: the architecture and the label rules.")
    metrics_summary: dict[str, Any] | None = Field(
        None, description="The stored headline at the primary horizon (test and held-out periods)."
    )
    evaluated_at_ms: int | None = None
    verification: Verification


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def period_figures(report: Mapping[str, Any] | None) -> list[HorizonFigures]:
    """Per horizon, the headline figures of one evaluated period (``ml.evaluation.evaluate_outputs``
    or its stored form); older metrics without some figures give None for them."""
    figures = []
    for h in (report or {}).get("horizons") or []:
        figures.append(
            HorizonFigures(
                horizon_bars=int(h["horizon_bars"]),
                samples=h.get("samples"),
                accuracy=_number(h.get("accuracy")),
                majority_accuracy=_number(h.get("majority_accuracy")),
                majority_class=h.get("majority_class"),
                ic_per_time=_number(h.get("ic_per_time")),
            )
        )
    return figures


def summarize_version(info: VersionInfo, rollback_to: str | None) -> VersionSummary:
    training = info.training
    candles = training.get("candles") or {}
    return VersionSummary(
        version=info.version,
        created=info.created,
        aliases=list(info.aliases),
        previous_champion=info.version == rollback_to,
        exchange=training.get("exchange"),
        symbols=len(training.get("symbols") or []),
        history_start=candles.get("start"),
        history_end=candles.get("end"),
        test=period_figures(info.metrics.get("test")),
    )


def rollback_target(registry: Registry) -> str | None:
    """The version ``Registry.rollback`` would make champion again, or None."""
    stack = registry.aliases().get("previous_champions") or []
    return str(stack[-1]) if stack else None


def version_summaries(registry: Registry) -> list[VersionSummary]:
    """Every stored version, oldest first (version ids start with their registration time)."""
    previous = rollback_target(registry)
    return [summarize_version(registry.info(v), previous) for v in registry.versions()]


def verification(registry: Registry, version: str) -> Verification:
    """Every file of ``version`` against its manifest's sha256 (``Registry.verify``); a failed check is
    a result, not an error: the version's other facts are still worth showing."""
    from ml.registry import ModelIntegrityError

    try:
        manifest = registry.verify(version)
    except ModelIntegrityError as exc:
        return Verification(ok=False, error=str(exc))
    return Verification(
        ok=True, files=dict(manifest.get("files") or {}), manifest_sha256=manifest.get("manifest_sha256")
    )


def version_details(registry: Registry, ref: str) -> VersionDetails:
    from ml.registry import ModelIntegrityError

    version = registry.resolve(ref)
    info = registry.info(version)
    training = {k: v for k, v in info.training.items() if k != "history"}
    try:
        config = registry.model_config(version).model_dump(mode="json")
    except (ModelIntegrityError, ValueError) as exc:
        config = {"error": str(exc)}
    summary = info.metrics.get("summary")
    evaluated = info.metrics.get("evaluated_at_ms")
    return VersionDetails(
        summary=summarize_version(info, rollback_target(registry)),
        training=training,
        config=config,
        metrics_summary=summary if isinstance(summary, dict) else None,
        evaluated_at_ms=evaluated if isinstance(evaluated, int) else None,
        verification=verification(registry, version),
    )


def known_refs(registry: Registry, newest: int = 10) -> str:
    """What a caller may name instead of an unknown version: the aliases set and the newest ids."""
    aliases = registry.aliases()
    named = [f"{a} = {aliases[a]}" for a in ("champion", "challenger") if aliases.get(a)]
    versions = registry.versions()
    if not versions:
        return "the registry holds no versions"
    shown = ", ".join(reversed(versions[-newest:]))
    more = f" and {len(versions) - newest} older" if len(versions) > newest else ""
    return (
        f"aliases: {'; '.join(named) or 'none set'}; {len(versions)} version"
        f"{'s' if len(versions) != 1 else ''}, newest first: {shown}{more}"
    )


def evaluate_unstored(
    settings: Settings,
    store: CandleStore,
    ref: str,
    *,
    device: str = "auto",
    progress: Progress | None = None,
    holdout_days: float = 0.0,
) -> tuple[str, dict[str, Any]]:
    """``ml.jobs.evaluate_version`` that leaves the version's stored metrics (and so its manifest) as
    they are: for a caller that only reads, such as the ml-model MCP server's ``evaluate_model``.
    Returns the version and the full metrics, series included."""
    from ml.jobs import evaluate_version

    return evaluate_version(
        settings, store, ref, device=device, progress=progress, holdout_days=holdout_days, record=False
    )
