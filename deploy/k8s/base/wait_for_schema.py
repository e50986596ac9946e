"""The init container wait-for-schema: hold a pod until the database schema is ready for its image.

Mounted from the ConfigMap mlsignals-schema-gate and run in the pod's own image (so "head" is the
head of the migrations this very code ships), before the worker, stream, exporter or MCP server:

    python -P /opt/mlsignals/schema-gate/wait_for_schema.py [--once]

Ready when the database's Alembic revision is this image's head, or a revision this image does not
know: a newer one, i.e. a rollback to an older release after the migration Job of a newer one ran
(migrations are expand/contract, so the older code runs on it; docs/KUBERNETES.md). Not ready, and
waiting (every 5 s; ``--once``: exit 1), while the database is unreachable, empty, or at an older
revision of this image's history: the migration Job has not run (or failed). Prints the revisions,
never the database URL.
"""

from __future__ import annotations

import sys
import time


def ready() -> tuple[bool, str]:
    from alembic.script import ScriptDirectory

    from core.settings import get_settings
    from data import db

    url = get_settings().database_url
    script = ScriptDirectory.from_config(db.alembic_config(url))
    head = script.get_current_head()
    known = {revision.revision for revision in script.walk_revisions()}
    try:
        current = db.current_revision(url)
    except Exception as exc:  # noqa: BLE001  (any failure to read the revision means: not yet)
        return False, f"database not reachable ({type(exc).__name__}); this image needs {head}"
    if current == head:
        return True, f"schema at {head}, this image's head"
    if current is not None and current not in known:
        return True, f"schema at {current}, newer than this image's head {head} (a rollback): running on it"
    return False, f"schema at {current or 'nothing'}, this image needs {head}: waiting for the migration Job"


def main(argv: list[str]) -> int:
    once = "--once" in argv
    while True:
        ok, why = ready()
        print(why, flush=True)
        if ok:
            return 0
        if once:
            return 1
        time.sleep(5)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
