"""Small SQL helpers that work on both SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert_ignore(session: Session, table: Table, rows: Sequence[dict[str, Any]],
                  conflict: Sequence[str], returning: str | None = None) -> list[Any]:
    """INSERT … ON CONFLICT (conflict) DO NOTHING, for many rows; with
    ``returning``, that column of the rows this statement inserted."""
    if not rows:
        return []
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table).on_conflict_do_nothing(index_elements=list(conflict))
    if returning is None:
        session.execute(stmt, list(rows))
        return []
    return list(session.scalars(stmt.returning(table.c[returning]), list(rows)))


def upsert(session: Session, table: Table, rows: Sequence[dict[str, Any]],
           conflict: Sequence[str], update: Sequence[str]) -> None:
    """INSERT … ON CONFLICT (conflict) DO UPDATE SET update-columns."""
    if not rows:
        return
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table)
    stmt = stmt.on_conflict_do_update(index_elements=list(conflict),
                                      set_={c: getattr(stmt.excluded, c) for c in update})
    session.execute(stmt, list(rows))
