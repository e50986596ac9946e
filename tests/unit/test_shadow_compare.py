"""``mlsignals model compare`` (quality/compare.py, cli/compare_cmds.py): champion and challenger on
the (minute, symbol) pairs both scored, and the paired IC test against an independent computation
(``scipy.stats.spearmanr`` per minute, a Newey–West SE written out here)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from scipy.stats import spearmanr
from sqlalchemy import insert
from typer.testing import CliRunner

from cli import compare_cmds
from core.settings import Settings, reset_settings_cache
from data import db
from data.models import SignalOutcome
from quality.compare import compare_versions
from tests.support.models import register_challenger, untrained_registry

START = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
HORIZON = 4  # bars of 15 minutes: 1 h, so the Newey–West lag is 60 one-minute steps
SYMBOLS = [f"S{i:02d}/USDT:USDT" for i in range(12)]
COST = 0.0015


def outcome_rows(version: str, minutes: int, *, skill: float, seed: int, drop: float) -> list[dict[str, Any]]:
    """Resolved outcomes of ``version`` at ``HORIZON``: its predicted return is ``skill`` times the
    realised one plus noise; a share ``drop`` of its (minute, symbol) pairs is missing; its neutral
    returns carry a per-minute offset of its own (another group mean), which must not matter."""
    rng = np.random.default_rng(seed)
    truth = np.random.default_rng(99)  # the market: the same for every version
    rows: list[dict[str, Any]] = []
    for m in range(minutes):
        minute = START + timedelta(minutes=m)
        realised = truth.normal(0.0, 0.01, len(SYMBOLS))
        offset = rng.normal(0.0, 0.002)
        for k, symbol in enumerate(SYMBOLS):
            noise = rng.normal(0.0, 0.01)
            if rng.random() < drop:
                continue
            predicted = skill * realised[k] + noise
            neutral = realised[k] + offset
            direction = "LONG" if predicted > 0.004 else "SHORT" if predicted < -0.004 else "NEUTRAL"
            sign = {"LONG": 1.0, "SHORT": -1.0}.get(direction)
            probs = rng.dirichlet([2.0, 2.0, 2.0])
            rows.append(
                {
                    "signal_id": len(rows) + 1 + seed * 1_000_000,
                    "symbol": symbol,
                    "minute": minute,
                    "signal_made_at": minute,
                    "model_version": version,
                    "horizon_bars": HORIZON,
                    "status": "resolved",
                    "direction": direction,
                    "actionable": sign is not None,
                    "exit_time": minute + timedelta(hours=1),
                    "entry_price": 100.0,
                    "exit_price": 100.0 * (1 + realised[k]),
                    "realised_return": float(realised[k]),
                    "neutral_return": float(neutral),
                    "realised_class": "LONG" if neutral > 0.004 else "SHORT" if neutral < -0.004 else "FLAT",
                    "predicted_return": float(predicted),
                    "prob_long": float(probs[0]),
                    "prob_short": float(probs[1]),
                    "prob_flat": float(probs[2]),
                    "correct": None if sign is None else bool(sign * neutral > 0),
                    "net_return": None if sign is None else float(sign * neutral - COST),
                    "net_return_raw": None if sign is None else float(sign * realised[k] - COST),
                    "cost": COST,
                }
            )
    return rows


def store(url: str, *versions: list[dict[str, Any]]) -> None:
    with db.get_engine(url).begin() as conn:
        for rows in versions:
            conn.execute(insert(SignalOutcome), rows)


def newey_west(x: np.ndarray, lag: int) -> float:
    """The Bartlett-kernel long-run SE of the mean, written out."""
    n = len(x)
    e = x - x.mean()
    gamma = [float(np.sum(e[k:] * e[: n - k])) / n for k in range(lag + 1)]
    lrv = gamma[0] + 2 * sum((1 - k / (lag + 1)) * gamma[k] for k in range(1, min(lag, n - 1) + 1))
    return math.sqrt(lrv / n)


def independent_paired(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """Per minute, Spearman over the symbols both versions have (at least 5), challenger minus champion."""
    key = lambda r: (r["minute"], r["symbol"])  # noqa: E731
    ra, rb = {key(r): r for r in a}, {key(r): r for r in b}
    common = set(ra) & set(rb)
    by_minute: dict[datetime, list[tuple[datetime, str]]] = {}
    for k in sorted(common):
        by_minute.setdefault(k[0], []).append(k)
    ic_a, ic_b, diffs = [], [], []
    for keys in by_minute.values():
        if len(keys) < 5:
            continue
        one = spearmanr([ra[k]["predicted_return"] for k in keys], [ra[k]["neutral_return"] for k in keys])
        two = spearmanr([rb[k]["predicted_return"] for k in keys], [rb[k]["neutral_return"] for k in keys])
        ic_a.append(float(one.statistic))
        ic_b.append(float(two.statistic))
        diffs.append(float(two.statistic) - float(one.statistic))
    d = np.array(diffs)
    se = newey_west(d, HORIZON * 15)
    return {
        "pairs": len(common),
        "ic_a": float(np.mean(ic_a)),
        "ic_b": float(np.mean(ic_b)),
        "mean": float(d.mean()),
        "se": se,
        "t": float(d.mean()) / se,
        "minutes": len(diffs),
    }


def test_the_paired_figures_match_an_independent_computation(migrated_url: str) -> None:
    champion = outcome_rows("champ", 420, skill=0.3, seed=1, drop=0.06)
    challenger = outcome_rows("chall", 420, skill=0.6, seed=2, drop=0.12)
    # A minute where the two share fewer than 5 symbols has no IC for either.
    thin = START + timedelta(minutes=7)
    challenger = [r for r in challenger if not (r["minute"] == thin and r["symbol"] > "S03")]
    store(migrated_url, champion, challenger)
    expected = independent_paired(champion, challenger)

    report = compare_versions(db.get_engine(migrated_url), Settings(), "champ", "chall", horizons=(HORIZON,))
    [h] = report["horizons"]
    assert (h["horizon"], h["pairs"]) == ("1h", expected["pairs"])
    assert h["champion"]["signals"] == h["challenger"]["signals"] == expected["pairs"]
    paired = h["paired_ic"]
    assert paired["lag"] == 60  # the horizon in minutes
    assert paired["minutes"] == expected["minutes"] == 419
    assert paired["periods"] == 7
    assert paired["mean"] == pytest.approx(expected["mean"], abs=1e-12)
    assert paired["se"] == pytest.approx(expected["se"], rel=1e-9)
    assert paired["t"] == pytest.approx(expected["t"], rel=1e-9)
    assert h["champion"]["ic"]["mean"] == pytest.approx(expected["ic_a"], abs=1e-12)
    assert h["challenger"]["ic"]["mean"] == pytest.approx(expected["ic_b"], abs=1e-12)
    assert paired["t"] > 3  # the sharper challenger is clearly better

    # Per direction on the common pairs, each version's own actionable signals.
    common = {(r["minute"], r["symbol"]) for r in champion} & {(r["minute"], r["symbol"]) for r in challenger}
    longs = [r for r in challenger if (r["minute"], r["symbol"]) in common and r["direction"] == "LONG"]
    figures = h["challenger"]["directions"]["LONG"]
    assert figures["signals"] == len(longs)
    assert figures["hit_rate"] == pytest.approx(np.mean([r["correct"] for r in longs]))
    assert figures["mean_net_return"] == pytest.approx(np.mean([r["net_return"] for r in longs]))
    assert h["challenger"]["ece"] is not None
    assert h["challenger"]["brier"] is not None


def test_fewer_than_five_horizons_give_no_standard_error(migrated_url: str) -> None:
    store(
        migrated_url,
        outcome_rows("champ", 200, skill=0.3, seed=1, drop=0.0),
        outcome_rows("chall", 200, skill=0.6, seed=2, drop=0.0),
    )
    report = compare_versions(db.get_engine(migrated_url), Settings(), "champ", "chall", horizons=(HORIZON,))
    paired = report["horizons"][0]["paired_ic"]
    assert paired["periods"] == 4
    assert paired["mean"] is not None
    assert (paired["se"], paired["t"]) == (None, None)
    assert report["horizons"][0]["champion"]["ic"]["se"] is None


def test_no_common_pairs_is_an_empty_comparison(migrated_url: str) -> None:
    store(migrated_url, outcome_rows("champ", 30, skill=0.3, seed=1, drop=0.0))
    report = compare_versions(db.get_engine(migrated_url), Settings(), "champ", "chall", horizons=(HORIZON,))
    h = report["horizons"][0]
    assert (h["pairs"], h["paired_ic"]["mean"], h["paired_ic"]["minutes"]) == (0, None, 0)


@pytest.fixture
def cli_env(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A registry with a champion and a challenger, and outcomes of both; the settings point at them."""
    db.upgrade(sqlite_url)
    registry = untrained_registry(tmp_path / "models")
    champion = registry.resolve("champion")
    challenger = register_challenger(registry)
    store(
        sqlite_url,
        outcome_rows(champion, 420, skill=0.3, seed=1, drop=0.05),
        outcome_rows(challenger, 420, skill=0.6, seed=2, drop=0.05),
    )
    monkeypatch.setenv("MLSIG_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("MLSIG_MODEL__REGISTRY_DIR", str(tmp_path / "models"))
    reset_settings_cache()
    return champion, challenger


def throwaway_app() -> typer.Typer:
    app = typer.Typer()
    app.command("compare")(compare_cmds.compare)
    app.command("noop")(lambda: None)  # two commands: typer keeps "compare" as a subcommand
    return app


def test_the_compare_command_prints_both_versions_and_the_paired_test(cli_env: tuple[str, str]) -> None:
    champion, challenger = cli_env
    runner = CliRunner(env={"COLUMNS": "200"})
    since = ["--since", "2026-11-20T00:00:00Z"]
    out = runner.invoke(throwaway_app(), ["compare", "--horizon", "1h", *since, "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert (report["champion"], report["challenger"]) == (champion, challenger)
    [h] = report["horizons"]
    paired = h["paired_ic"]
    assert paired["t"] > 3
    assert "series" not in paired
    assert "series" not in h["champion"]["ic"]

    text = runner.invoke(throwaway_app(), ["compare", "--horizon", "1h", *since])
    assert text.exit_code == 0, text.output
    assert f"champion {champion} against challenger {challenger}" in text.output
    assert f"1h: {h['pairs']} common signals over {h['minutes']} minutes" in text.output
    assert f"paired IC difference (challenger - champion): {paired['mean']:+.4f}" in text.output
    assert f"Newey-West SE {paired['se']:.4f} (lag 60), t {paired['t']:+.2f}" in text.output
    assert "mlsignals model promote challenger" in text.output


def test_the_compare_command_without_a_challenger_says_so(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db.upgrade(sqlite_url)
    untrained_registry(tmp_path / "models")
    monkeypatch.setenv("MLSIG_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("MLSIG_MODEL__REGISTRY_DIR", str(tmp_path / "models"))
    reset_settings_cache()
    out = CliRunner().invoke(throwaway_app(), ["compare"])
    assert out.exit_code == 2
    assert "no challenger in the model registry" in out.output
