"""Database engine and unit of work.

SQLite (the embedded default) runs in WAL mode with a busy timeout so that
several processes can share it; PostgreSQL is reached through psycopg 3.
The service layer owns the transaction: :func:`unit_of_work` opens one,
commits on success, and :func:`run_in_transaction` retries it on
serialization failures and deadlocks.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import Engine, Select, create_engine, event, func, select
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from services.settings import Settings, get_settings

LOG = logging.getLogger(__name__)
T = TypeVar("T")

_engines: dict[str, Engine] = {}


def normalize_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL whatever driver the URL names."""
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def get_engine(settings: Settings | None = None) -> Engine:
    """The engine for the configured database, one per URL and process."""
    settings = settings or get_settings()
    url = normalize_url(settings.effective_database_url)
    engine = _engines.get(url)
    if engine is None:
        if url.startswith("sqlite"):
            settings.data_path.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
            event.listen(engine, "connect", _sqlite_pragmas)

            # pysqlite's own transaction handling defers BEGIN; take the write
            # lock up front so that concurrent writers queue instead of failing.
            @event.listens_for(engine, "begin")
            def _begin(conn) -> None:  # noqa: ANN001
                conn.exec_driver_sql("BEGIN IMMEDIATE")

            event.listen(engine, "connect", _disable_pysqlite_begin, insert=True)
        else:
            engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
        _engines[url] = engine
    return engine


def _disable_pysqlite_begin(dbapi_conn, _record) -> None:  # noqa: ANN001
    dbapi_conn.isolation_level = None


def dispose_engines() -> None:
    """Forget every engine (after a fork, or between tests)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


@contextmanager
def unit_of_work(settings: Settings | None = None) -> Iterator[Session]:
    """One transaction: commit when the block succeeds, roll back otherwise."""
    session = sessionmaker(get_engine(settings), expire_on_commit=False)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _is_retryable(exc: DBAPIError) -> bool:
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate in {"40001", "40P01", "23505"}:  # serialization, deadlock, racing insert
        return True
    return isinstance(exc, OperationalError) and "database is locked" in str(exc)


def run_in_transaction(
    work: Callable[[Session], T], settings: Settings | None = None, attempts: int = 8
) -> T:
    """Run ``work(session)`` in a unit of work, retrying transient conflicts."""
    for attempt in range(1, attempts + 1):
        try:
            with unit_of_work(settings) as session:
                return work(session)
        except DBAPIError as exc:
            if attempt == attempts or not _is_retryable(exc):
                raise
            delay = min(2.0, 0.02 * 2**attempt) * (0.5 + random.random())
            LOG.info("transaction conflict (%s), retry %d in %.2fs", exc.__class__.__name__, attempt, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def first_rows(session: Session, stmt: Select, limit: int | None) -> tuple[list, int]:
    """The first ``limit`` rows of ``stmt`` (all for None) and how many
    matched in all (counted only when the page is full)."""
    rows = list(session.execute(stmt.limit(limit) if limit else stmt))
    if limit is None or len(rows) < limit:
        return rows, len(rows)
    return rows, session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
