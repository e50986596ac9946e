"""``mlsignals db …``: schema migrations."""

from __future__ import annotations

import typer

from cli.common import clean_errors, console, settings
from core.errors import MLSignalsError

app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)


@app.command()
@clean_errors
def upgrade(revision: str = typer.Option("head", help="Target revision.")) -> None:
    """Upgrade the schema of the configured database (MLSIG_DATABASE_URL) to REVISION."""
    from data import db

    url = settings().database_url
    current = db.current_revision(url)
    if current is not None and current not in db.known_revisions():
        raise MLSignalsError(
            f"the database schema is at {current}, a revision this release does not know (a newer "
            f"release migrated it): nothing to upgrade; this release runs on it (expand/contract)"
        )
    db.upgrade(url, revision)
    console.print(f"schema at {db.current_revision(url)} ({db.normalise_url(url).split('@')[-1]})")


@app.command()
@clean_errors
def downgrade(revision: str = typer.Option(..., help="Target revision, e.g. base.")) -> None:
    """Downgrade the schema to REVISION (``base`` drops every table)."""
    from data import db

    url = settings().database_url
    db.downgrade(url, revision)
    console.print(f"schema at {db.current_revision(url) or 'base'}")


@app.command()
@clean_errors
def current() -> None:
    """Print the schema revision of the configured database and the newest one available."""
    from data import db

    url = settings().database_url
    console.print(f"current: {db.current_revision(url) or 'base'}  head: {db.head_revision()}")
