"""Schema migrations, run as a start-up step by every service and by
``pacs db upgrade``. Concurrent starts are serialized (a PostgreSQL advisory
lock, or a file lock beside the SQLite database)."""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from services.db import get_engine, is_sqlite
from services.settings import Settings, get_settings

MIGRATIONS = Path(__file__).parent / "migrations"
_LOCK_KEY = 0x5041_4353  # "PACS"


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


@contextmanager
def _migration_lock(settings: Settings) -> Iterator[None]:
    engine = get_engine(settings)
    if is_sqlite(engine):
        settings.data_path.mkdir(parents=True, exist_ok=True)
        with open(settings.data_path / ".migrate.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield
    else:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
                conn.commit()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def upgrade(settings: Settings | None = None, revision: str = "head") -> str | None:
    """Bring the schema to ``revision``; return the revision now current."""
    settings = settings or get_settings()
    engine = get_engine(settings)
    with _migration_lock(settings):
        with engine.begin() as conn:
            if current_revision(conn) != head_revision() or revision != "head":
                cfg = _config()
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
        with engine.connect() as conn:
            return current_revision(conn)
