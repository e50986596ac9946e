"""The console script starts fast: importing ``cli.main`` loads none of the heavy libraries, and
``--help`` lists every command group (figures: ``python -m benchmarks.bench_cli``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Each takes from a tenth of a second (the settings' pydantic, structlog, Celery, SQLAlchemy) to
# seconds (torch): only the commands that use them import them.
HEAVY = (
    "torch",
    "ccxt",
    "celery",
    "pandas",
    "numpy",
    "sqlalchemy",
    "alembic",
    "pydantic",
    "pydantic_settings",
    "structlog",
    "redis",
    "ml",
    "tasks",
    "trading",
    "worker",
)
GROUPS = ("run", "db", "data", "model", "signals", "trading")


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSIG_")}
    env.update(MLSIG_DATA_DIR=str(tmp_path), COLUMNS="160")
    return env


def loaded_after(code: str, tmp_path: Path) -> set[str]:
    """The top-level packages in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=clean_env(tmp_path),
        cwd=tmp_path,
        timeout=60,
        check=True,
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_importing_the_cli_loads_no_heavy_library(tmp_path: Path) -> None:
    loaded = loaded_after("import cli.main", tmp_path)
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_help_loads_no_heavy_library(tmp_path: Path) -> None:
    code = (
        "import sys\nsys.argv = ['mlsignals', '--help']\nfrom cli.main import app\n"
        "try:\n    app()\nexcept SystemExit:\n    pass"
    )
    loaded = loaded_after(code, tmp_path)
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


@pytest.mark.parametrize("group", ["data", "model", "trading", "signals", "db"])
def test_group_help_loads_no_heavy_library(group: str, tmp_path: Path) -> None:
    """A group's help (its commands' options) is built without importing what the commands use.

    (Typer itself imports pydantic to convert the options' types, so that one is left out here.)
    """
    code = (
        f"import sys\nsys.argv = ['mlsignals', '{group}', '--help']\nfrom cli.main import app\n"
        "try:\n    app()\nexcept SystemExit:\n    pass"
    )
    heavy = set(HEAVY) - {"pydantic"}
    loaded = loaded_after(code, tmp_path)
    assert not loaded & heavy, sorted(loaded & heavy)


def test_help_lists_every_command_group(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("mlsignals")
    done = subprocess.run(
        [str(script), "--help"],
        capture_output=True,
        text=True,
        env=clean_env(tmp_path),
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    listed = {line.strip("│ ").split(" ", 1)[0] for line in done.stdout.splitlines()}
    assert set(GROUPS) <= listed, done.stdout
    assert "ML trading signals every minute" in done.stdout


def test_data_status_on_sqlite_loads_neither_pandas_nor_torch(tmp_path: Path) -> None:
    """``data status`` reads the store with SQL: the data frame and model libraries stay unloaded."""
    code = (
        "from cli.main import app\n"
        "try:\n"
        "    app(['data', 'status', '--json'])\n"
        "except SystemExit as done:\n"
        "    assert not done.code, done.code\n"
    )
    loaded = loaded_after(code, tmp_path)
    assert "sqlalchemy" in loaded  # the probe did run the command
    assert not loaded & {"pandas", "torch", "ccxt", "celery", "ml", "trading", "worker"}
