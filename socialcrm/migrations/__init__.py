"""The shipped Alembic migrations, and the newest revision read from their files.

``code_head`` needs neither Alembic nor SQLAlchemy: a command that only reads the database
(``socialcrm queue``) checks with it that the database is at the code's schema.
"""

from __future__ import annotations

import re
from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parent
_REVISION_RE = re.compile(r"^(down_)?revision(?:\s*:[^=]*)?\s*=\s*[\"']([^\"']*)[\"']", re.M)


def code_head() -> str | None:
    """The newest migration's revision, read from the migration files without Alembic
    (None when the files do not form one straight line, so Alembic decides)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        found = dict((bool(down), rev) for down, rev in _REVISION_RE.findall(path.read_text()))
        if False not in found:
            return None
        revisions.add(found[False])
        if found.get(True):
            parents.add(found[True])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None
