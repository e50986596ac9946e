"""The exporter's quality part (monitoring/quality_metrics.py) on SQLite and PostgreSQL.

Hand-made ``signal_outcomes`` rows; the expected figures are computed here, by hand or with SciPy
(Spearman per minute, the Newey–West t-statistic written out), and read back as prometheus_client
serves them. Also: the window of the newest signals cut at a whole minute and kept between
computations, the figures' cache (a refresh within ``quality.interval_seconds`` reads no outcome),
the breaker's trips and settings, and the part failing alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import spearmanr
from sqlalchemy import Engine, delete, event, insert, text

from core.settings import Settings
from data import db
from data.models import FeatureDrift, SignalOutcome
from monitoring.exporter import Exporter
from quality.events import BREAKER, OPERATOR, RESUME, TRIP, record
from quality.rolling import load_outcomes
from trading.accounts import set_halted

MINUTE0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
COST = 0.001
SIGN = {"LONG": 1.0, "SHORT": -1.0}
CLASSES = ("LONG", "SHORT", "FLAT")


@dataclass(frozen=True)
class Row:
    symbol: str
    predicted: float
    neutral: float
    direction: str
    probs: tuple[float, float, float]  # LONG, SHORT, FLAT
    realised: str

    @property
    def correct(self) -> bool | None:
        return None if self.direction == "NEUTRAL" else SIGN[self.direction] * self.neutral > 0

    @property
    def net(self) -> float | None:
        return None if self.direction == "NEUTRAL" else SIGN[self.direction] * self.neutral - COST


# Two minutes of six symbols: LONG right 3 of 5, SHORT right 2 of 3 (marked), all 5 of 8.
MINUTE_A = [
    Row("AAA", 0.004, 0.010, "LONG", (0.6, 0.2, 0.2), "LONG"),  # right
    Row("BBB", -0.002, 0.004, "SHORT", (0.2, 0.5, 0.3), "LONG"),  # wrong
    Row("CCC", 0.003, -0.006, "LONG", (0.5, 0.3, 0.2), "SHORT"),  # wrong
    Row("DDD", 0.000, 0.001, "NEUTRAL", (0.3, 0.3, 0.4), "FLAT"),
    Row("EEE", -0.004, -0.012, "SHORT", (0.1, 0.7, 0.2), "SHORT"),  # right
    Row("FFF", 0.001, 0.003, "NEUTRAL", (0.3, 0.2, 0.5), "FLAT"),
]
MINUTE_B = [
    Row("AAA", 0.002, -0.003, "LONG", (0.5, 0.2, 0.3), "SHORT"),  # wrong
    Row("BBB", -0.003, -0.008, "SHORT", (0.2, 0.6, 0.2), "SHORT"),  # right
    Row("CCC", 0.004, 0.009, "LONG", (0.7, 0.1, 0.2), "LONG"),  # right
    Row("DDD", -0.001, 0.002, "NEUTRAL", (0.3, 0.3, 0.4), "FLAT"),
    Row("EEE", -0.002, 0.001, "NEUTRAL", (0.2, 0.3, 0.5), "FLAT"),
    Row("FFF", 0.003, 0.005, "LONG", (0.6, 0.2, 0.2), "LONG"),  # right
]

_ids = iter(range(1, 10**9))


def outcome(row: Row, minute: datetime, version: str, horizon_bars: int, **over: Any) -> dict[str, Any]:
    values = {
        "signal_id": next(_ids),
        "symbol": f"{row.symbol}/USDT:USDT",
        "minute": minute,
        "signal_made_at": minute,
        "model_version": version,
        "horizon_bars": horizon_bars,
        "status": "resolved",
        "reason": None,
        "direction": row.direction,
        "actionable": row.direction != "NEUTRAL",
        "exit_time": minute + timedelta(minutes=15 * horizon_bars),
        "entry_price": 100.0,
        "exit_price": 100.0 * (1 + row.neutral),
        "realised_return": row.neutral,
        "neutral_return": row.neutral,
        "realised_class": row.realised,
        "predicted_return": row.predicted,
        "prob_long": row.probs[0],
        "prob_short": row.probs[1],
        "prob_flat": row.probs[2],
        "correct": row.correct,
        "net_return": row.net,
        "net_return_raw": row.net,
        "cost": COST,
    }
    return values | over


def write(url: str, rows: list[dict[str, Any]]) -> None:
    with db.get_engine(url).begin() as conn:
        conn.execute(insert(SignalOutcome), rows)


def minute_rows(rows: list[Row], minute: datetime, version: str, horizon_bars: int) -> list[dict[str, Any]]:
    return [outcome(r, minute, version, horizon_bars) for r in rows]


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def make_exporter(url: str, tmp_path: Path, clock: Clock | None = None, **kw: Any) -> Exporter:
    settings = Settings(
        database_url=url, data_dir=tmp_path, model={"registry_dir": tmp_path / "models"}, **kw
    )
    kwargs: dict[str, Any] = {"clock": clock} if clock is not None else {}
    return Exporter(settings, db.get_engine(url), None, settle_s=0.0, **kwargs)


def set_aliases(tmp_path: Path, **aliases: str) -> None:
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "models" / "aliases.json").write_text(json.dumps(aliases))


def sample(exporter: Exporter, name: str, **labels: str) -> float | None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(exporter)
    return registry.get_sample_value(name, labels)


def exposition(exporter: Exporter) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The text Prometheus scrapes, parsed: {family: [(labels, value)]} of the quality series."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(exporter)
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        if family.name.startswith("mlsignals_quality_"):
            out[family.name] = [(dict(s.labels), s.value) for s in family.samples]
    return out


def v1(horizon: str = "15m", **labels: str) -> dict[str, str]:
    return {"model_version": "v1", "role": "champion", "horizon": horizon, **labels}


def v2(horizon: str = "15m", **labels: str) -> dict[str, str]:
    return {"model_version": "v2", "role": "challenger", "horizon": horizon, **labels}


def spearman_ic(*minutes: list[Row]) -> float:
    return float(
        np.mean([spearmanr([r.predicted for r in m], [r.neutral for r in m]).statistic for m in minutes])
    )


def ece(rows: list[Row], bins: int = 10) -> float:
    """Top-label expected calibration error, written out."""
    by_bin: dict[int, list[tuple[float, float]]] = {}
    for r in rows:
        top = max(r.probs)
        hit = 1.0 if CLASSES[r.probs.index(top)] == r.realised else 0.0
        by_bin.setdefault(min(int(top * bins), bins - 1), []).append((top, hit))
    return sum(
        (
            len(v) / len(rows) * abs(float(np.mean([h for _, h in v])) - float(np.mean([c for c, _ in v])))
            for v in by_bin.values()
        ),
        0.0,
    )


def brier(rows: list[Row]) -> float:
    return float(
        np.mean([sum((p - (CLASSES[k] == r.realised)) ** 2 for k, p in enumerate(r.probs)) for r in rows])
    )


def net_mean(rows: list[Row], direction: str | None = None) -> float:
    return float(np.mean([r.net for r in rows if r.net is not None and direction in (None, r.direction)]))


# -------------------------------------------------------------------------------------- the figures


def test_figures_per_version_and_horizon(migrated_url: str, tmp_path: Path) -> None:
    set_aliases(tmp_path, champion="v1", challenger="v2")
    a, b = MINUTE0, MINUTE0 + timedelta(minutes=1)
    write(
        migrated_url,
        [
            *minute_rows(MINUTE_A, a, "v1", 1),
            *minute_rows(MINUTE_B, b, "v1", 1),
            *minute_rows(MINUTE_A, a, "v1", 4),
            # The challenger said NEUTRAL to everything: an IC, no hit rate.
            *[
                outcome(
                    r,
                    a,
                    "v2",
                    1,
                    direction="NEUTRAL",
                    actionable=False,
                    correct=None,
                    net_return=None,
                    net_return_raw=None,
                )
                for r in MINUTE_A
            ],
            # A version holding no alias, and an unresolved outcome: neither counts.
            *minute_rows(MINUTE_B, b, "v0", 1),
            outcome(
                MINUTE_B[0],
                b,
                "v1",
                1,
                symbol="GGG/USDT:USDT",
                status="unresolved",
                reason="no exit candle",
                neutral_return=None,
                correct=None,
                net_return=None,
            ),
        ],
    )
    exporter = make_exporter(migrated_url, tmp_path)
    up = exporter.refresh()
    assert up["quality"], up
    both = MINUTE_A + MINUTE_B

    assert sample(exporter, "mlsignals_quality_window_signals", **v1()) == 12
    assert sample(exporter, "mlsignals_quality_window_actionable_signals", **v1()) == 8
    assert sample(exporter, "mlsignals_quality_hit_rate_ratio", **v1(direction="all")) == pytest.approx(5 / 8)
    assert sample(exporter, "mlsignals_quality_hit_rate_ratio", **v1(direction="LONG")) == pytest.approx(
        3 / 5
    )
    assert sample(exporter, "mlsignals_quality_hit_rate_ratio", **v1(direction="SHORT")) == pytest.approx(
        2 / 3
    )
    for direction in ("LONG", "SHORT"):
        served = sample(exporter, "mlsignals_quality_mean_net_return_ratio", **v1(direction=direction))
        assert served == pytest.approx(net_mean(both, direction))
    # LONG: (0.010 - 0.006 - 0.003 + 0.009 + 0.005) / 5 - cost; all 8 pooled.
    assert net_mean(both, "LONG") == pytest.approx(0.003 - COST)
    served = sample(exporter, "mlsignals_quality_mean_net_return_ratio", **v1(direction="all"))
    assert served == pytest.approx(net_mean(both))
    assert sample(exporter, "mlsignals_quality_ic", **v1()) == pytest.approx(spearman_ic(MINUTE_A, MINUTE_B))
    assert sample(exporter, "mlsignals_quality_calibration_ece", **v1()) == pytest.approx(ece(both))
    assert sample(exporter, "mlsignals_quality_brier_score", **v1()) == pytest.approx(brier(both))
    # Two minutes span less than MIN_PERIODS horizons: no honest standard error, no sample.
    assert sample(exporter, "mlsignals_quality_ic_tstat", **v1()) is None

    # The 1h horizon has its own window.
    assert sample(exporter, "mlsignals_quality_window_signals", **v1("1h")) == 6
    assert sample(exporter, "mlsignals_quality_ic", **v1("1h")) == pytest.approx(spearman_ic(MINUTE_A))
    assert sample(exporter, "mlsignals_quality_hit_rate_ratio", **v1("1h", direction="all")) == pytest.approx(
        2 / 4
    )

    # The challenger: figures but no hit rate or net return without an actionable signal.
    assert sample(exporter, "mlsignals_quality_window_signals", **v2()) == 6
    assert sample(exporter, "mlsignals_quality_window_actionable_signals", **v2()) == 0
    assert sample(exporter, "mlsignals_quality_ic", **v2()) == pytest.approx(spearman_ic(MINUTE_A))
    served_text = exposition(exporter)
    hit_labels = [labels for labels, _ in served_text["mlsignals_quality_hit_rate_ratio"]]
    assert not [labels for labels in hit_labels if labels["model_version"] == "v2"]
    assert not [labels for labels in hit_labels if labels["model_version"] == "v0"]
    # Empty windows (4h, 12h) have counts of 0 and no figure.
    assert sample(exporter, "mlsignals_quality_window_signals", **v1("12h")) == 0
    assert sample(exporter, "mlsignals_quality_ic", **v1("12h")) is None
    roles = {
        (labels["model_version"], labels["role"])
        for labels, _ in served_text["mlsignals_quality_window_signals"]
    }
    assert roles == {("v1", "champion"), ("v2", "challenger")}

    # Scored through: the newest minute per horizon, 0 where nothing was scored.
    through = "mlsignals_quality_scored_through_timestamp_seconds"
    assert sample(exporter, through, horizon="15m") == b.timestamp()
    assert sample(exporter, through, horizon="1h") == a.timestamp()
    assert sample(exporter, through, horizon="4h") == 0
    assert sample(exporter, through, horizon="12h") == 0


def test_ic_t_statistic_is_newey_west(migrated_url: str, tmp_path: Path) -> None:
    """Eight minutes a bar apart: eight periods of the 15m horizon, Newey–West with lag 1."""
    set_aliases(tmp_path, champion="v1")
    rng = np.random.default_rng(7)
    minutes = []
    rows: list[dict[str, Any]] = []
    for k in range(8):
        neutral = rng.normal(0, 0.01, 7)
        predicted = 0.4 * neutral + rng.normal(0, 0.01, 7)
        minute = [
            Row(f"S{i}", float(p), float(n), "LONG" if p > 0 else "SHORT", (0.4, 0.3, 0.3), "LONG")
            for i, (p, n) in enumerate(zip(predicted, neutral, strict=True))
        ]
        minutes.append(minute)
        rows += minute_rows(minute, MINUTE0 + timedelta(minutes=15 * k), "v1", 1)
    write(migrated_url, rows)
    exporter = make_exporter(migrated_url, tmp_path)
    assert exporter.refresh()["quality"]

    ic = np.array([spearmanr([r.predicted for r in m], [r.neutral for r in m]).statistic for m in minutes])
    e = ic - ic.mean()
    n = ic.size
    gamma0, gamma1 = e @ e / n, e[1:] @ e[:-1] / n
    se = math.sqrt((gamma0 + 2 * (1 - 1 / 2) * gamma1) / n)  # Bartlett weight 1 - k / (lag + 1)
    assert sample(exporter, "mlsignals_quality_ic", **v1()) == pytest.approx(ic.mean())
    assert sample(exporter, "mlsignals_quality_ic_tstat", **v1()) == pytest.approx(ic.mean() / se)


# --------------------------------------------------------------------------------- window and cache


def test_the_window_is_the_newest_signals_cut_at_a_whole_minute(migrated_url: str, tmp_path: Path) -> None:
    set_aliases(tmp_path, champion="v1")
    clock = Clock(1_000_000.0)
    exporter = make_exporter(migrated_url, tmp_path, clock, quality={"window_signals": 10})
    # Three minutes of six: the newest ten split the second minute, which is dropped whole.
    write(
        migrated_url,
        [
            *minute_rows(MINUTE_A, MINUTE0, "v1", 1),
            *minute_rows(MINUTE_B, MINUTE0 + timedelta(minutes=1), "v1", 1),
            *minute_rows(MINUTE_A, MINUTE0 + timedelta(minutes=2), "v1", 1),
        ],
    )
    exporter.refresh()
    assert sample(exporter, "mlsignals_quality_window_signals", **v1()) == 6
    assert sample(exporter, "mlsignals_quality_ic", **v1()) == pytest.approx(spearman_ic(MINUTE_A))


def test_kept_windows_equal_a_fresh_read(migrated_url: str, tmp_path: Path) -> None:
    """The windows kept between computations (the new outcomes merged in, the table's count held
    against them) equal ``load_outcomes``' own window after every kind of change."""
    set_aliases(tmp_path, champion="v1")
    exporter = make_exporter(migrated_url, tmp_path, quality={"window_signals": 20})
    quality = exporter.quality
    assert quality is not None
    engine = db.get_engine(migrated_url)
    rng = np.random.default_rng(3)
    now = 0.0

    def check() -> None:
        nonlocal now
        now += 60
        kept = quality.window("v1", 1, now)
        fresh = load_outcomes(engine, "v1", 1, limit=20)
        assert kept.minute_ms.tolist() == fresh.minute_ms.tolist()
        assert kept.symbol == fresh.symbol
        assert kept.neutral.tolist() == fresh.neutral.tolist()
        assert kept.probs.tolist() == fresh.probs.tolist()

    check()  # nothing yet
    for k in range(12):  # minutes of 1 to 6 signals, the scorer's order
        size = int(rng.integers(1, 7))
        write(migrated_url, minute_rows(MINUTE_A[:size], MINUTE0 + timedelta(minutes=k), "v1", 1))
        check()
    reads = quality.full_reads
    write(migrated_url, minute_rows(MINUTE_B[:2], MINUTE0 + timedelta(minutes=12), "v1", 1))
    check()
    assert quality.full_reads == reads, "a new minute is merged, not read whole"
    # A replay adds rows to a minute inside the window, and a purge removes some: read whole.
    write(migrated_url, minute_rows(MINUTE_B[4:], MINUTE0 + timedelta(minutes=10), "v1", 1))
    check()
    assert quality.full_reads == reads + 1
    with engine.begin() as conn:
        conn.execute(delete(SignalOutcome).where(SignalOutcome.minute == MINUTE0 + timedelta(minutes=11)))
    check()
    assert quality.full_reads == reads + 2
    # Rows of the newest minute written after it was read are found by the next read.
    write(migrated_url, minute_rows(MINUTE_B[2:4], MINUTE0 + timedelta(minutes=12), "v1", 1))
    check()
    # Each window is read whole once an hour, one per computation at most, the oldest first (the
    # empty 16- and 48-bar windows are read at every computation: they cost nothing).
    write(migrated_url, minute_rows(MINUTE_A, MINUTE0, "v1", 4))
    quality.compute({"champion": "v1"}, now)
    deltas = []
    for later in (60, 3600, 3660, 3720):
        before = quality.full_reads
        quality.compute({"champion": "v1"}, now + later)
        deltas.append(quality.full_reads - before - 2)
    assert deltas == [0, 1, 1, 0]


@pytest.fixture
def outcome_reads() -> Iterator[list[str]]:
    """The statements that read outcome rows (load_outcomes' select), on every engine."""
    seen: list[str] = []

    def listen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "prob_long" in statement and statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    event.listen(Engine, "before_cursor_execute", listen)
    yield seen
    event.remove(Engine, "before_cursor_execute", listen)


def test_figures_are_recomputed_once_per_interval(
    migrated_url: str, tmp_path: Path, outcome_reads: list[str]
) -> None:
    set_aliases(tmp_path, champion="v1")
    clock = Clock(1_000_000.0)
    exporter = make_exporter(migrated_url, tmp_path, clock)  # quality.interval_seconds: 60
    write(migrated_url, minute_rows(MINUTE_A, MINUTE0, "v1", 1))
    exporter.refresh()
    first_reads = len(outcome_reads)
    assert first_reads == 4  # the champion's four horizons
    assert sample(exporter, "mlsignals_quality_window_signals", **v1()) == 6

    write(migrated_url, minute_rows(MINUTE_B, MINUTE0 + timedelta(minutes=1), "v1", 1))
    for seconds in (15, 30, 45, 59):
        clock.now = 1_000_000.0 + seconds
        assert exporter.refresh()["quality"]
    assert len(outcome_reads) == first_reads, "a refresh within the interval read outcomes"
    assert sample(exporter, "mlsignals_quality_window_signals", **v1()) == 6  # the cached figures
    # The scorer's progress is an index lookup, read at every refresh.
    through = sample(exporter, "mlsignals_quality_scored_through_timestamp_seconds", horizon="15m")
    assert through == (MINUTE0 + timedelta(minutes=1)).timestamp()

    clock.now = 1_000_000.0 + 60
    exporter.refresh()
    assert len(outcome_reads) == first_reads + 4
    assert sample(exporter, "mlsignals_quality_window_signals", **v1()) == 12

    # An alias that moves is shown at once.
    set_aliases(tmp_path, champion="v1", challenger="v2")
    clock.now += 1
    exporter.refresh()
    assert len(outcome_reads) == first_reads + 4 + 8
    assert sample(exporter, "mlsignals_quality_window_signals", **v2()) == 0


# ----------------------------------------------------------------------------------- breaker, failure


def test_breaker_trips_settings_and_the_kill_switch(migrated_url: str, tmp_path: Path) -> None:
    exporter = make_exporter(
        migrated_url,
        tmp_path,
        quality={"breaker": {"horizon": 2, "hit_rate_floor": 0.5, "ic_floor": -0.01, "min_samples": 300}},
    )
    exporter.refresh()
    assert sample(exporter, "mlsignals_quality_breaker_trips_total") == 0
    assert sample(exporter, "mlsignals_quality_breaker_last_trip_timestamp_seconds") is None
    assert sample(exporter, "mlsignals_quality_breaker_hit_rate_floor_ratio", horizon="4h") == 0.5
    assert sample(exporter, "mlsignals_quality_breaker_ic_floor", horizon="4h") == -0.01
    assert sample(exporter, "mlsignals_quality_breaker_min_samples", horizon="4h") == 300
    assert sample(exporter, "mlsignals_quality_breaker_enabled", horizon="4h") == 1

    engine, settings = exporter.engine, exporter.settings
    reason = "quality_breaker: champion v1 at 4h: hit rate 0.400 < 0.500 over 300 resolved actionable signals"
    set_halted(engine, settings, True, reason, also=record(TRIP, BREAKER, "v1", reason, {}))
    set_halted(engine, settings, False, also=record(RESUME, OPERATOR, "v1", "checked", {}))
    set_halted(engine, settings, True, reason, also=record(TRIP, BREAKER, "v1", reason, {}))
    with engine.connect() as conn:
        newest = conn.execute(text("SELECT max(at) FROM quality_events WHERE kind = 'trip'")).scalar()
    exporter.refresh()
    assert sample(exporter, "mlsignals_quality_breaker_trips_total") == 2
    last = sample(exporter, "mlsignals_quality_breaker_last_trip_timestamp_seconds")
    newest_at = newest if isinstance(newest, datetime) else datetime.fromisoformat(str(newest))
    assert last == pytest.approx(newest_at.replace(tzinfo=newest_at.tzinfo or UTC).timestamp(), abs=1e-3)
    # The trading part labels the halt by its code.
    assert sample(exporter, "mlsignals_kill_switch_engaged", account="paper", reason="quality_breaker") == 1


def test_the_quality_part_fails_alone_and_keeps_its_last_values(
    migrated_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_aliases(tmp_path, champion="v1")
    clock = Clock(1_000_000.0)
    exporter = make_exporter(migrated_url, tmp_path, clock)
    write(migrated_url, minute_rows(MINUTE_A, MINUTE0, "v1", 1))
    assert all(exporter.refresh().values())
    quality = exporter.quality
    assert quality is not None

    # The figures fail (the cheap reads work): down until the next computation is due, which is
    # not attempted before the interval has passed.
    calls = []

    def broken(*_args: Any) -> Any:
        calls.append(1)
        raise RuntimeError("boom")

    monkeypatch.setattr(quality, "compute", broken)
    clock.now += 60
    up = exporter.refresh()
    assert up["quality"] is False
    assert all(up[part] for part in ("ledger", "trading", "model", "data"))
    assert sample(exporter, "mlsignals_exporter_collector_up", collector="quality") == 0
    assert sample(exporter, "mlsignals_exporter_collector_up", collector="ledger") == 1
    assert sample(exporter, "mlsignals_quality_window_signals", **v1()) == 6  # the last good value
    clock.now += 30
    assert exporter.refresh()["quality"] is False
    assert len(calls) == 1
    monkeypatch.delattr(quality, "compute")  # the method again
    clock.now += 30
    assert exporter.refresh()["quality"] is True

    # The table cannot be read at all.
    with db.get_engine(migrated_url).begin() as conn:
        conn.execute(text("ALTER TABLE signal_outcomes RENAME TO signal_outcomes_away"))
    try:
        clock.now += 1
        up = exporter.refresh()
        assert up["quality"] is False
        assert up["ledger"] is True
        assert sample(exporter, "mlsignals_quality_window_signals", **v1()) == 6
    finally:
        with db.get_engine(migrated_url).begin() as conn:
            conn.execute(text("ALTER TABLE signal_outcomes_away RENAME TO signal_outcomes"))
    clock.now += 60
    assert exporter.refresh()["quality"] is True


def test_no_quality_part_when_quality_is_off(sqlite_url: str, tmp_path: Path) -> None:
    db.upgrade(sqlite_url)
    exporter = make_exporter(sqlite_url, tmp_path, quality={"enabled": False})
    assert "quality" not in exporter.refresh()
    assert exposition(exporter) == {}


def test_the_champions_newest_drift_pass_is_exported(migrated_url: str, tmp_path: Path) -> None:
    set_aliases(tmp_path, champion="v1")
    engine = db.get_engine(migrated_url)
    base = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    psi = {f"f{i}": 0.01 * i for i in range(30)}  # f25..f29 major (>= 0.25), f10..f29 moderate
    for version, at, scale in (("v1", base, 1.0), ("v0", base + timedelta(minutes=1), 5.0)):
        with engine.begin() as conn:
            conn.execute(
                insert(FeatureDrift).values(
                    computed_at=at,
                    model_version=version,
                    status="ok",
                    newest_minute=at,
                    minutes=15,
                    samples=750,
                    bins=10,
                    max_psi=0.29 * scale,
                    psi={k: v * scale for k, v in psi.items()},
                    worst=[{"feature": f"f{i}", "psi": 0.01 * i * scale} for i in range(29, 17, -1)],
                    detail={},
                )
            )
    exporter = make_exporter(migrated_url, tmp_path)
    exporter.refresh()
    # The champion's pass, not the newer one of another version.
    assert sample(exporter, "mlsignals_feature_drift_psi_max") == pytest.approx(0.29)
    assert sample(exporter, "mlsignals_feature_drift_features", level="major") == 5  # f25 .. f29
    assert sample(exporter, "mlsignals_feature_drift_features", level="moderate") == 20
    assert sample(exporter, "mlsignals_feature_drift_psi", feature="f29") == pytest.approx(0.29)
    assert sample(exporter, "mlsignals_feature_drift_psi", feature="f20") == pytest.approx(0.20)
    assert sample(exporter, "mlsignals_feature_drift_psi", feature="f19") is None  # only the top 10
    assert sample(exporter, "mlsignals_feature_drift_status", status="ok") == 1
    assert sample(exporter, "mlsignals_feature_drift_samples") == 750
    assert sample(exporter, "mlsignals_feature_drift_computed_timestamp_seconds") == base.timestamp()
    assert sample(exporter, "mlsignals_feature_drift_alert_psi_ratio") == 0.25
