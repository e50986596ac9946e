"""The chaos suite's switches: the full suite only with MLSIG_CHAOS_FULL=1 (``make chaos``), and the
summary tables printed at the end of the run."""

from __future__ import annotations

import os

import pytest

from tests.chaos.harness import SUMMARIES


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get("MLSIG_CHAOS_FULL") == "1":
        return
    skip = pytest.mark.skip(reason="the full chaos suite runs with `make chaos` (MLSIG_CHAOS_FULL=1)")
    for item in items:
        if "chaos_full" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for path in SUMMARIES:
        terminalreporter.write_sep("=", f"chaos summary: {path}")
        terminalreporter.write_line(path.read_text())
