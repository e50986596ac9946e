"""Migrations run on SQLite and PostgreSQL, round-trip, and agree with the models.

Every revision is stepped on its own, on both databases: up, down one revision, up again, with the
schema after each step compared to what it was (docs/OPERATIONS.md, "Database migrations"). And every
``upgrade()`` only expands the schema, so the release before it keeps working on the new schema while
the new one rolls out (or after it was rolled back), unless its docstring declares a contract step.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy import inspect

from data import db
from data.models import Base, exists_on_dialect

TABLES = {
    "raw_market_data",
    "processed_market_data",
    "technical_indicators",
    "data_quarantine",
    "candle_gaps",
    "pipeline_runs",
    "signals",
    "ml_predictions",
    "order_intents",
    "trading_accounts",
    "trading_orders",
    "trading_positions",
    "trading_fills",
    "signal_outcomes",
    "quality_events",
    "feature_drift",
    "mcp_audit",
}
VERSIONS = db.MIGRATIONS_DIR / "versions"


def diff(url: str) -> list[object]:
    with db.get_engine(url).connect() as conn:
        dialect = conn.dialect.name
        ctx = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "include_object": lambda obj, *_: exists_on_dialect(obj, dialect),
            },
        )
        return list(compare_metadata(ctx, Base.metadata))


def tables(url: str) -> set[str]:
    return set(inspect(db.get_engine(url)).get_table_names()) - {"alembic_version"}


def test_upgrade_downgrade_upgrade_round_trip(db_url: str) -> None:
    db.upgrade(db_url)
    assert tables(db_url) == TABLES
    assert db.current_revision(db_url) == db.head_revision()
    db.downgrade(db_url, "base")
    assert tables(db_url) == set()
    assert db.current_revision(db_url) is None
    db.upgrade(db_url)
    assert tables(db_url) == TABLES


def test_models_and_migrations_agree(db_url: str) -> None:
    db.upgrade(db_url)
    assert diff(db_url) == []


def test_gin_index_exists_only_on_postgresql(db_url: str) -> None:
    db.upgrade(db_url)
    names = {ix["name"] for ix in inspect(db.get_engine(db_url)).get_indexes("processed_market_data")}
    expected = db_url.startswith("postgresql")
    assert ("ix_processed_market_data_features_gin" in names) is expected


def test_migration_diff_detects_a_drift(db_url: str) -> None:
    """The agreement test can fail: a column missing from the database is reported."""
    db.upgrade(db_url)
    with db.get_engine(db_url).begin() as conn:
        conn.exec_driver_sql("ALTER TABLE technical_indicators DROP COLUMN value")
    assert any("value" in str(item) for item in diff(db_url))


# --- each revision on its own: up, down one, up again ----------------------------------------------


def revisions() -> list[Script]:
    """The revisions, oldest first; the history is linear (one head, each revision's parent the one
    before it)."""
    script = ScriptDirectory.from_config(db.alembic_config("sqlite://"))
    ordered = list(reversed(list(script.walk_revisions())))
    assert script.get_heads() == [ordered[-1].revision]
    for parent, child in zip([None, *ordered], ordered, strict=False):
        assert child.down_revision == (parent.revision if parent else None), child.revision
    return ordered


def schema(url: str) -> dict[str, Any]:
    """Everything a migration may change, comparable between two points of the history: per table its
    columns (name, type, nullability, server default), primary key, indexes, unique constraints and
    foreign keys; on PostgreSQL also its enum types and sequences (a downgrade that leaves one behind
    fails the next upgrade)."""
    inspector = inspect(db.get_engine(url))
    tables: dict[str, Any] = {}
    for table in inspector.get_table_names():
        if table == "alembic_version":
            continue
        tables[table] = {
            "columns": sorted(
                (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                for c in inspector.get_columns(table)
            ),
            "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
            "indexes": sorted(
                (str(ix["name"]), repr(ix["column_names"]), bool(ix["unique"]))
                for ix in inspector.get_indexes(table)
            ),
            "unique": sorted(
                (str(u["name"]), repr(u["column_names"])) for u in inspector.get_unique_constraints(table)
            ),
            "foreign_keys": sorted(
                (str(fk["name"]), repr(fk["constrained_columns"]), fk["referred_table"])
                for fk in inspector.get_foreign_keys(table)
            ),
        }
    found: dict[str, Any] = {"tables": tables}
    if url.startswith("postgresql"):
        found["enums"] = sorted(str(e["name"]) for e in inspector.get_enums())  # type: ignore[attr-defined]
        found["sequences"] = sorted(inspector.get_sequence_names())
    return found


def test_every_revision_steps_up_down_and_up_again(db_url: str) -> None:
    """For each revision in turn: upgrade to it, downgrade one revision (to exactly the schema before
    it), upgrade again (to exactly the schema it made). A downgrade that forgets an index, a column or
    a PostgreSQL type, or an upgrade that cannot run twice, fails here with the revision's name."""
    steps = revisions()
    assert len(steps) >= 8
    before = schema(db_url)
    assert before["tables"] == {}
    for rev in steps:
        previous = rev.down_revision
        assert isinstance(previous, str | None)
        db.upgrade(db_url, rev.revision)
        assert db.current_revision(db_url) == rev.revision
        after = schema(db_url)
        assert after != before, f"{rev.revision} changed nothing"

        db.downgrade(db_url, previous or "base")
        assert db.current_revision(db_url) == previous, rev.revision
        assert schema(db_url) == before, f"downgrade of {rev.revision} does not restore {previous or 'base'}"

        db.upgrade(db_url, rev.revision)
        assert db.current_revision(db_url) == rev.revision
        assert schema(db_url) == after, f"{rev.revision} upgraded again differs from its first upgrade"
        before = after
    assert db.current_revision(db_url) == db.head_revision()
    assert set(before["tables"]) == TABLES
    assert diff(db_url) == []


# --- expand/contract ---------------------------------------------------------------------------------

# Operations an upgrade() may not run, unless its module docstring has a line starting "Contract:":
# each would break the release before it, which still runs while the new one rolls out.
DESTRUCTIVE = {
    "drop_table",
    "drop_column",
    "drop_index",
    "drop_constraint",
    "alter_column",
    "rename_table",
    "execute",
}


def _calls(function: ast.FunctionDef) -> list[ast.Call]:
    return [n for n in ast.walk(function) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]


def expand_violations(source: str) -> list[str]:
    """What in ``upgrade()`` of a migration's ``source`` is not an expansion of the schema."""
    tree = ast.parse(source)
    if re.search(r"^Contract:", ast.get_docstring(tree) or "", re.M):
        return []
    [upgrade] = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "upgrade"]
    found = []
    for call in _calls(upgrade):
        name = call.func.attr  # type: ignore[attr-defined]
        if name in DESTRUCTIVE:
            found.append(f"line {call.lineno}: {name}")
        if name == "add_column":
            column = next((a for a in call.args if isinstance(a, ast.Call)), None)
            keywords = {k.arg: k.value for k in (column.keywords if column else [])}
            nullable = keywords.get("nullable")
            not_null = isinstance(nullable, ast.Constant) and nullable.value is False
            if not_null and "server_default" not in keywords:
                found.append(f"line {call.lineno}: add_column NOT NULL without a server_default")
    return found


@pytest.mark.parametrize("path", sorted(VERSIONS.glob("*.py")), ids=lambda p: p.stem)
def test_every_upgrade_only_expands_the_schema(path: Path) -> None:
    assert expand_violations(path.read_text()) == []


def test_the_expand_check_catches_a_destructive_upgrade() -> None:
    head = '"""a revision\n\nRevision ID: x\n"""\n'
    body = (
        "def upgrade():\n"
        "    op.drop_column('signals', 'confidence')\n"
        "    with op.batch_alter_table('t') as batch:\n"
        "        batch.add_column(sa.Column('n', sa.Integer(), nullable=False))\n"
        "        batch.add_column(sa.Column('m', sa.Integer(), server_default='1', nullable=False))\n"
        "        batch.add_column(sa.Column('o', sa.Integer(), nullable=True))\n"
        "def downgrade():\n"
        "    op.drop_table('t')\n"
    )
    assert expand_violations(head + body) == [
        "line 6: drop_column",
        "line 8: add_column NOT NULL without a server_default",
    ]
    contract = '"""drop the old column\n\nContract: nothing reads signals.confidence since 0042.\n"""\n'
    assert expand_violations(contract + body) == []


def test_an_older_schema_is_refused_and_a_newer_one_used(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Expand/contract: after an application rollback across a migration, the older release runs on
    the newer schema (a revision it does not know); a schema behind this release must be upgraded."""
    from sqlalchemy import text
    from typer.testing import CliRunner

    from cli.main import app
    from core.errors import ConfigError

    db.upgrade(db_url, "0007")
    if not db_url.startswith("sqlite"):  # SQLite upgrades itself; a server is upgraded by an operator
        with pytest.raises(ConfigError, match=r"schema is at 0007, not 0008: run `mlsignals db upgrade`"):
            db.ready_engine(db_url)
    db.upgrade(db_url)
    with db.get_engine(db_url).begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099_from_a_newer_release'"))
    assert db.ready_engine(db_url) is db.get_engine(db_url)
    assert db.current_revision(db_url) == "0099_from_a_newer_release"  # untouched

    monkeypatch.setenv("MLSIG_DATABASE_URL", db_url)
    result = CliRunner().invoke(app, ["db", "upgrade"])
    assert result.exit_code == 2, result.output
    assert "a revision this release does not know" in " ".join(result.output.split())
    assert "Traceback" not in result.output
