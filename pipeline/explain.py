"""Why a stored signal is what it is (MCP ml-signal ``explain_signal``, docs/MCP.md).

From the 20 raw outputs stored beside the signal (``ml_predictions``) the decoder's rules are run
again (``ml.decoding.decode_arrays``, the very function the pipeline decodes with) and each of the
three conditions that make a signal LONG or SHORT is reported with its numbers:

1. *edge*: ``|predicted return| - round-trip cost`` above ``edge_margin``;
2. *agreement*: the proposed direction's class more likely than the opposite one;
3. *confidence*: that probability at least ``confidence_threshold``.

The proposed direction is the sign of the primary horizon's predicted return; the signal is that
direction when all three hold, else NEUTRAL. The rules are the server's current settings: when they
differ from those the signal was decoded with, the re-decoded direction can differ from the stored
one, and the explanation says so.

The window's features are computed as the feature step does (``pipeline.steps.feature_step``):
the anchored bars of the stored candles up to the signal's minute, the feature engine, and the
scaling of the signal's own model version; the newest row's most extreme scaled values are reported.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, Field

from core.settings import Settings
from core.timegrid import MINUTE_MS, dt_to_ms, ms_to_dt
from ml.decoding import SIGNAL_DIRECTIONS, DecodeRules, decode_arrays
from ml.features import FEATURE_SPEC
from ml.features.live import live_features
from ml.model.schema import OutputSchema
from ml.outputs import horizon_label
from ml.scaling import RobustScaler

if TYPE_CHECKING:
    from data.models import MlPrediction, SignalRecord
    from data.store import CandleStore
    from ml.registry import Registry


class HorizonDecoding(BaseModel):
    horizon: str = Field(description="Horizon label (15m, 1h, 4h, 12h).")
    bars: int
    p_long: float
    p_short: float
    p_flat: float
    most_likely: str = Field(description="The argmax class of the three.")
    predicted_return: float = Field(description="Fraction of the entry price.")


class RuleCheck(BaseModel):
    rule: str = Field(description="edge, agreement or confidence.")
    passed: bool
    value: float
    threshold: float
    text: str = Field(description="The comparison with its numbers.")


class Decision(BaseModel):
    primary_horizon: str
    proposed: str = Field(description="LONG or SHORT: the sign of the primary horizon's predicted return.")
    direction: str = Field(description="What the rules give now: the proposed direction, or NEUTRAL.")
    stored_direction: str = Field(description="The direction stored (and published) with the signal.")
    consistent: bool = Field(description="False when the current rules decode another direction.")
    predicted_return: float
    round_trip_cost: float
    edge_margin: float
    edge: float = Field(description="|predicted return| minus the round-trip cost.")
    confidence: float = Field(description="Probability of the proposed direction's class.")
    confidence_threshold: float
    checks: list[RuleCheck]
    reason: str = Field(description="Which condition made the signal what it is, in one sentence.")


class FeatureValue(BaseModel):
    name: str
    scaled: float = Field(description="Robust-scaled value the model saw (clipped at +-clip).")
    raw: float = Field(description="The feature before scaling.")
    clipped: bool


class WindowFeatures(BaseModel):
    bar_end: datetime = Field(description="End of the window's newest bar.")
    bars: int = Field(description="Bars in the model's window.")
    clip: float = Field(description="The scaler's clip bound (scale units).")
    top: list[FeatureValue] = Field(description="The newest row's features by |scaled value|, largest first.")


class SignalExplanation(BaseModel):
    symbol: str
    minute: datetime
    model_version: str
    served: bool | None = Field(
        description="True: the minute's champion (published, traded); False: a shadow challenger's row; "
        "None: the ledger has no row for the minute."
    )
    direction: str = Field(description="As stored and published.")
    confidence: float
    entry_price: float
    stop_loss: float | None
    take_profit: float | None
    bar_end: datetime
    expires_at: datetime
    outputs: dict[str, float] | None = Field(
        description="The model's 20 raw outputs by name (None when none were stored)."
    )
    temperature: float | None
    horizons: list[HorizonDecoding] = Field(description="Decoded probabilities and returns per horizon.")
    risk: dict[str, float] = Field(description="Predicted drawdown/rally per window, fractions of the entry.")
    decision: Decision | None = Field(description="The decoder's rule, condition by condition.")
    features: WindowFeatures | None = Field(description="The window's most extreme scaled features.")
    notes: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class ModelArtefacts:
    """What explaining needs of a version: its output schema and its scaler."""

    version: str
    schema: OutputSchema
    scaler: RobustScaler


class ArtefactCache:
    """Versions' schemas and scalers, loaded once each (a verified registry load, as
    ``ml.serving.RegistryModelServer.scaler`` does; the weights are dropped straight away)."""

    def __init__(self, registry: Registry, keep: int = 8) -> None:
        self.registry = registry
        self.keep = keep
        self._held: dict[str, ModelArtefacts] = {}
        self._lock = threading.Lock()

    def get(self, version: str) -> ModelArtefacts:
        with self._lock:
            held = self._held.get(version)
            if held is not None:
                return held
            loaded = self.registry.load(version)
            held = ModelArtefacts(version, loaded.schema, loaded.scaler)
            if len(self._held) >= self.keep:
                self._held.pop(next(iter(self._held)))
            self._held[version] = held
            return held


@dataclass(frozen=True)
class Decoded:
    horizons: list[HorizonDecoding]
    risk: dict[str, float]
    decision: Decision


def explain_outputs(
    outputs: list[float],
    temperature: float,
    entry_price: float,
    stored_direction: str,
    rules: DecodeRules,
    schema: OutputSchema,
) -> Decoded:
    """Decode one row of raw outputs with ``rules`` and say which condition decided the direction."""
    d = decode_arrays(np.asarray([outputs], dtype=np.float64), temperature, [entry_price], rules, schema)
    classes = schema.direction_classes
    long_c, short_c = classes.index("LONG"), classes.index("SHORT")
    horizons = [
        HorizonDecoding(
            horizon=horizon_label(h, schema.bar_minutes),
            bars=h,
            p_long=float(d.probabilities[0, i, long_c]),
            p_short=float(d.probabilities[0, i, short_c]),
            p_flat=float(d.probabilities[0, i, classes.index("FLAT")]),
            most_likely=classes[int(d.classes[0, i])],
            predicted_return=float(d.returns[0, i]),
        )
        for i, h in enumerate(schema.horizons)
    ]
    p = rules.primary_horizon
    primary = horizons[p]
    predicted = primary.predicted_return
    # The same comparisons as decode_arrays, one by one (its direction is the arbiter below).
    proposed = "LONG" if predicted >= 0.0 else "SHORT"
    opposite = "SHORT" if proposed == "LONG" else "LONG"
    p_side = primary.p_long if proposed == "LONG" else primary.p_short
    p_other = primary.p_short if proposed == "LONG" else primary.p_long
    edge = float(d.edge[0])
    checks = [
        RuleCheck(
            rule="edge",
            passed=edge > rules.edge_margin,
            value=edge,
            threshold=rules.edge_margin,
            text=(
                f"|predicted {primary.horizon} return| {abs(predicted):.5f} - round-trip cost "
                f"{rules.round_trip_cost:.5f} = edge {edge:.5f} "
                f"{'>' if edge > rules.edge_margin else '<='} margin {rules.edge_margin:.5f}"
            ),
        ),
        RuleCheck(
            rule="agreement",
            passed=p_side > p_other,
            value=p_side,
            threshold=p_other,
            text=f"P({proposed}) {p_side:.4f} {'>' if p_side > p_other else '<='} "
            f"P({opposite}) {p_other:.4f}",
        ),
        RuleCheck(
            rule="confidence",
            passed=p_side >= rules.confidence_threshold,
            value=p_side,
            threshold=rules.confidence_threshold,
            text=(
                f"confidence P({proposed}) {p_side:.4f} "
                f"{'>=' if p_side >= rules.confidence_threshold else '<'} threshold "
                f"{rules.confidence_threshold:.4f}"
            ),
        ),
    ]
    direction = SIGNAL_DIRECTIONS[int(d.direction[0])]
    failed = [c for c in checks if not c.passed]
    if direction != "NEUTRAL":
        reason = f"{direction}: all three conditions hold ({'; '.join(c.text for c in checks)})"
    else:
        names = " and ".join(c.rule for c in failed)
        reason = f"NEUTRAL: the proposed {proposed} fails {names} ({'; '.join(c.text for c in failed)})"
    decision = Decision(
        primary_horizon=primary.horizon,
        proposed=proposed,
        direction=direction,
        stored_direction=stored_direction,
        consistent=direction == stored_direction,
        predicted_return=predicted,
        round_trip_cost=rules.round_trip_cost,
        edge_margin=rules.edge_margin,
        edge=edge,
        confidence=p_side,
        confidence_threshold=rules.confidence_threshold,
        checks=checks,
        reason=reason,
    )
    risk = {name: float(v) for name, v in zip(schema.risk_names, d.risk[0].tolist(), strict=True)}
    return Decoded(horizons, risk, decision)


def window_features(
    store: CandleStore,
    exchange: str,
    symbol: str,
    minute: datetime,
    scaler: RobustScaler,
    settings: Settings,
    top: int,
) -> tuple[WindowFeatures | None, str | None]:
    """The newest row of ``symbol``'s scaled window at ``minute`` (its ``top`` most extreme features),
    computed from the stored candles as the feature step does; or None and why not."""
    FEATURE_SPEC.check_hash(scaler.spec_hash, "the scaler")
    minute_ms = dt_to_ms(minute)
    bar_minutes = settings.data.bar_minutes
    panel = store.read_bars(exchange, [symbol], minute_ms, FEATURE_SPEC.window, bar_minutes)
    raw = live_features(panel)
    if symbol not in raw.symbols:
        quality = raw.quality.get(symbol)
        why = quality.reason if quality is not None and quality.reason else "rejected by the feature stage"
        return None, f"the window cannot be computed from the stored candles now: {why}"
    newest_raw = raw.values[raw.symbols.index(symbol), -1]
    newest = scaler.transform(newest_raw)
    order = sorted(range(newest.shape[0]), key=lambda j: (-abs(float(newest[j])), FEATURE_SPEC.names[j]))
    values = [
        FeatureValue(
            name=FEATURE_SPEC.names[j],
            scaled=float(newest[j]),
            raw=float(newest_raw[j]),
            clipped=abs(float(newest[j])) >= scaler.clip,
        )
        for j in order[:top]
    ]
    bar_end = ms_to_dt(int(panel.bar_open_ms[-1]) + bar_minutes * MINUTE_MS)
    note = None
    reasons = panel.quality_reasons(
        FEATURE_SPEC.context, settings.pipeline.max_filled_share, settings.pipeline.min_real_share_newest_bar
    )
    if symbol in reasons:
        note = f"the pipeline would now refuse this window: {reasons[symbol]}"
    return WindowFeatures(bar_end=bar_end, bars=FEATURE_SPEC.context, clip=scaler.clip, top=values), note


def explain_record(
    record: SignalRecord,
    prediction: MlPrediction | None,
    artefacts: ModelArtefacts | None,
    *,
    store: CandleStore,
    exchange: str,
    settings: Settings,
    served_by: str | None,
    top: int,
    notes: list[str] | None = None,
) -> SignalExplanation:
    """The explanation of one stored signal: its raw outputs decoded again under ``settings``' rules
    with the version's output schema (the default one without ``artefacts``), and its window's
    ``top`` most extreme features (only with ``artefacts``: they hold the scaler). ``served_by`` is
    the ledger's champion of the minute."""
    from core.timegrid import as_utc
    from ml.model.schema import DEFAULT_OUTPUT_SCHEMA

    notes = list(notes or [])
    schema = artefacts.schema if artefacts is not None else DEFAULT_OUTPUT_SCHEMA
    outputs: dict[str, float] | None = None
    decoded = None
    if prediction is None:
        notes.append("no raw outputs stored beside this signal: the decision cannot be re-run")
    else:
        values = [float(v) for v in prediction.outputs]
        outputs = dict(zip(schema.names, values, strict=True))
        decoded = explain_outputs(
            values,
            float(prediction.temperature),
            float(record.entry_price),
            record.direction,
            DecodeRules.from_settings(settings),
            schema,
        )
        if not decoded.decision.consistent:
            notes.append(
                f"the current decoding rules give {decoded.decision.direction}, the stored signal is "
                f"{record.direction}: the rules (thresholds, costs) changed since it was made"
            )
    minute, bar_end = as_utc(record.minute), as_utc(record.bar_end)
    features = None
    if artefacts is not None:
        features, why = window_features(
            store, exchange, record.symbol, minute, artefacts.scaler, settings, top
        )
        if why:
            notes.append(why)
        if features is not None and features.bar_end != bar_end:
            notes.append(
                f"the window recomputed now ends at {features.bar_end.isoformat()}, the signal's at "
                f"{bar_end.isoformat()}"
            )
    return SignalExplanation(
        symbol=record.symbol,
        minute=minute,
        model_version=record.model_version,
        served=None if served_by is None else served_by == record.model_version,
        direction=record.direction,
        confidence=float(record.confidence),
        entry_price=float(record.entry_price),
        stop_loss=record.stop_loss,
        take_profit=record.take_profit,
        bar_end=bar_end,
        expires_at=as_utc(record.expires_at),
        outputs=outputs,
        temperature=None if prediction is None else float(prediction.temperature),
        horizons=[] if decoded is None else decoded.horizons,
        risk={} if decoded is None else decoded.risk,
        decision=None if decoded is None else decoded.decision,
        features=features,
        notes=notes,
    )
