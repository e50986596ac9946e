"""The committed evaluation report (docs/reports/default-recipe/evaluation.json) is what
``python -m benchmarks.model_report`` writes: a small version re-derived here has the same
structure, and the figures the docs quote are the report's."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from benchmarks.model_report import DEFAULT_OUT, build_report
from tests.unit.test_training import TINY

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / DEFAULT_OUT / "evaluation.json"


def shape(value: Any) -> Any:
    """The structure of a JSON document: dict keys recursively, a list by its first item's shape,
    numbers and nulls alike (a figure may be undefined on a tiny sample)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float) or value is None:
        return "number"
    return type(value).__name__


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: only in the committed report" for k in a.keys() - b.keys()]
        out += [f"{path}.{k}: only in the re-derived report" for k in b.keys() - a.keys()]
        for k in a.keys() & b.keys():
            out += differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        return differences(a[0], b[0], f"{path}[0]") if a and b else []
    if "bool" in (a, b) and "number" in (a, b):
        return []  # e.g. beats_best_baseline is null where the difference is undefined
    return [] if a == b else [f"{path}: {a} vs {b}"]


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(COMMITTED.read_text())
    return doc


def test_a_small_rederived_report_has_the_committed_structure(
    tmp_path: Path, committed: dict[str, Any]
) -> None:
    doc = build_report(tmp_path / "work", tmp_path / "out", recipe=TINY, holdout_days=1.0, plots=False)
    written = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert written == json.loads(json.dumps(doc))
    assert differences(shape(committed), shape(written)) == []
    assert written["command"] == committed["command"] == "python -m benchmarks.model_report"
    assert written["holdout"]["available"] is True
    assert written["recipe"]["name"] == "default"


def test_the_committed_report_is_the_default_recipe_on_the_default_simulator(
    committed: dict[str, Any],
) -> None:
    from core.settings import SimulatorSettings
    from ml.training import TrainingRecipe

    assert committed["simulator"] == SimulatorSettings().model_dump(mode="json")
    trained = TrainingRecipe.model_validate(committed["recipe"])
    assert trained == TrainingRecipe()


@pytest.mark.parametrize("doc", ["docs/MODEL.md", "docs/SIGNALS.md"])
def test_the_docs_quote_the_committed_report(doc: str, committed: dict[str, Any]) -> None:
    """Every figure in the docs' report tables is one of the report's numbers (rounded)."""
    text = (ROOT / doc).read_text()
    block = text.split("<!-- report:begin -->")[1].split("<!-- report:end -->")[0]
    numbers = {round(v, 4) for v in _numbers(committed)}
    quoted = [float(m) for m in re.findall(r"(?<![\w.])[-+−]?\d+\.\d+", block.replace("−", "-"))]
    assert quoted
    missing = [q for q in quoted if not any(abs(q - n) <= _half_ulp(q) for n in numbers)]
    assert not missing, f"{doc} quotes figures that are not in the report: {missing}"


def _half_ulp(quoted: float) -> float:
    text = f"{quoted}"
    decimals = len(text.split(".")[1]) if "." in text else 0
    return 0.5 * 10.0**-decimals + 1e-12


def _numbers(value: Any) -> list[float]:
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int | float):
        # Figures appear as fractions, percentages and basis points.
        return [float(value), 100.0 * value, 1e4 * value]
    return []
