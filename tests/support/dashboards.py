"""The Grafana dashboards of deploy/grafana/dashboards, read for the tests.

``dashboard_files()`` lists the provisioned JSON models, ``panel_queries(dashboard)`` gives every
panel's PromQL (rows and collapsed rows included) and ``metric_names(expr)`` the metric names an
expression reads, so that a unit test can hold the names against the metric catalogue
(tests/support/catalogue.py) and an end-to-end test can send every expression to a real Prometheus
(``promql(expr)`` replaces Grafana's ``$__rate_interval`` & co. first) and compare the names with a
live scrape.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = ROOT / "deploy" / "grafana" / "dashboards"
PROVISIONING_DIR = ROOT / "deploy" / "grafana" / "provisioning"
DATASOURCE_UID = "prometheus"

Dashboard = Mapping[str, Any]
Panel = Mapping[str, Any]

# ------------------------------------------------------------------------------------- dashboards


def dashboard_files(directory: Path = DASHBOARD_DIR) -> list[Path]:
    """The provisioned dashboard JSON files, sorted by name."""
    return sorted(directory.glob("*.json"))


def load_dashboard(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise TypeError(f"{path}: a dashboard is a JSON object, not {type(data).__name__}")
    return data


def iter_panels(dashboard: Dashboard) -> Iterator[Panel]:
    """Every panel, depth first: top-level panels, rows, the panels of collapsed rows (nested under
    the row's ``panels``) and the legacy ``rows`` of pre-5.0 models."""

    def walk(panels: Any) -> Iterator[Panel]:
        for panel in panels or []:
            if not isinstance(panel, Mapping):
                continue
            yield panel
            yield from walk(panel.get("panels"))

    yield from walk(dashboard.get("panels"))
    for row in dashboard.get("rows") or []:
        if isinstance(row, Mapping):
            yield from walk(row.get("panels"))


def panel_targets(panel: Panel) -> list[Mapping[str, Any]]:
    """A panel's query targets (an empty list for rows and text panels)."""
    targets = panel.get("targets") or []
    return [t for t in targets if isinstance(t, Mapping)]


def panel_queries(dashboard: Dashboard) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) for every target with a non-empty ``expr``, in panel order."""
    found: list[tuple[str, str]] = []
    for panel in iter_panels(dashboard):
        title = str(panel.get("title", ""))
        for target in panel_targets(panel):
            expr = target.get("expr")
            if isinstance(expr, str) and expr.strip():
                found.append((title, expr))
    return found


# Grafana's interval variables, as an end-to-end test substitutes them before asking Prometheus.
GRAFANA_INTERVALS = ("$__rate_interval", "$__interval", "$__range", "${__rate_interval}", "${__interval}")


def promql(expr: str, interval: str = "1m") -> str:
    """The expression as Prometheus takes it: Grafana's interval variables replaced by ``interval``
    (``$__interval_ms`` / ``$__range_s`` and other variables are not used by these dashboards)."""
    text = expr
    for variable in sorted(GRAFANA_INTERVALS, key=len, reverse=True):
        text = text.replace(variable, interval)
    if "$" in text:
        raise ValueError(f"unsupported Grafana variable in {expr!r}")
    return text


# ---------------------------------------------------------------------------------------- PromQL

AGGREGATIONS: frozenset[str] = frozenset(
    {
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    }
)  # fmt: skip

FUNCTIONS: frozenset[str] = frozenset(
    {
        "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
        "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp",
        "floor", "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile",
        "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters",
        "double_exponential_smoothing", "hour", "idelta", "increase", "info", "irate", "label_join",
        "label_replace", "ln", "log2", "log10", "minute", "month", "predict_linear", "rate",
        "resets", "round", "scalar", "sgn", "sort", "sort_desc", "sort_by_label",
        "sort_by_label_desc", "sqrt", "time", "timestamp", "vector", "year", "avg_over_time",
        "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "quantile_over_time",
        "stddev_over_time", "stdvar_over_time", "last_over_time", "present_over_time",
        "mad_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "cos", "cosh", "sin",
        "sinh", "tan", "tanh", "deg", "rad", "pi", "start", "end",
    }
)  # fmt: skip

KEYWORDS: frozenset[str] = frozenset(
    {
        "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
        "and", "or", "unless", "atan2", "inf", "nan",
    }
)  # fmt: skip

NOT_METRICS: frozenset[str] = AGGREGATIONS | FUNCTIONS | KEYWORDS

# Range-vector functions that assume a monotonic counter.
COUNTER_FUNCTIONS: frozenset[str] = frozenset({"rate", "irate", "increase", "resets"})

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*=\s*(?:"((?:\\.|[^"\\])*)"|\'((?:\\.|[^\'\\])*)\')')
_COMMENT = re.compile(r"#[^\n]*")
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
_DURATION = re.compile(r"(?<![\w.])(?:\d+(?:ms|[smhdwy]))+(?![\w.])")
_NUMBER = re.compile(r"(?<![\w.])(?:0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)(?![\w.])")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def _strip(expr: str) -> str:
    """The expression without what cannot name a metric: strings, comments, Grafana variables, label
    matchers, range windows, grouping label lists, durations and numbers."""
    text = _STRING.sub(" ", expr)
    text = _COMMENT.sub(" ", text)
    text = _VARIABLE.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(r" \1 ", text)
    text = _DURATION.sub(" ", text)
    return _NUMBER.sub(" ", text)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: bare selectors (``foo``, ``foo{...}``,
    ``foo[5m]``) and ``{__name__="foo"}``; functions, aggregations, keywords, label names (in
    ``{...}`` and ``by (...)``), strings, durations and numbers excluded."""
    names: set[str] = set()
    for block in _MATCHERS.findall(_COMMENT.sub(" ", expr)):
        for match in _NAME_MATCHER.finditer(block):
            names.add(match[1] if match[1] is not None else match[2])
    for token in _IDENTIFIER.findall(_strip(expr)):
        if token.lower() not in NOT_METRICS:
            names.add(token)
    return names


def _call_arguments(expr: str, functions: frozenset[str]) -> list[tuple[str, str]]:
    """(function, argument text) for every call of one of ``functions`` (strings left in place)."""
    masked = _STRING.sub(lambda m: " " * len(m[0]), expr)
    found: list[tuple[str, str]] = []
    for match in re.finditer(r"\b([A-Za-z_]\w*)\s*\(", masked):
        name = match[1]
        if name not in functions:
            continue
        depth, start = 1, match.end()
        for index in range(start, len(masked)):
            if masked[index] == "(":
                depth += 1
            elif masked[index] == ")":
                depth -= 1
                if depth == 0:
                    found.append((name, expr[start:index]))
                    break
        else:
            raise ValueError(f"unbalanced parentheses after {name}( in {expr!r}")
    return found


def counter_function_arguments(expr: str) -> list[tuple[str, str]]:
    """(function, argument) for every rate()/irate()/increase()/resets() call of the expression."""
    return _call_arguments(expr, COUNTER_FUNCTIONS)


def range_windows(expr: str) -> list[str]:
    """The text inside every ``[...]`` of the expression (range and subquery windows)."""
    return [m[0][1:-1] for m in _RANGE.finditer(_STRING.sub(" ", expr))]
