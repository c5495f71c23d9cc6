"""What every ``pacs`` command shares: the consoles, settings or a clean
exit, error messages with exit codes, tables and JSON."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from services.errors import PacsError
from services.settings import Settings, get_settings

out = Console()
err = Console(stderr=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def settings_or_exit() -> Settings:
    try:
        return get_settings()
    except PacsError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def study_or_fail(settings: Settings, uid: str) -> dict[str, Any]:
    """The study with its series, instances and copies, or exit: 2 for a
    malformed UID, 1 for an unknown one."""
    from dbserver.queries import show_study

    try:
        study = show_study(settings, uid)
    except PacsError as exc:
        fail(str(exc), 2)
    if study is None:
        fail(f"no study {uid}")
    return study


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def rows(rows: list[dict[str, Any]], columns: list[str], as_json: bool) -> None:
    """Print rows as JSON (every field) or as a table of ``columns``."""
    if as_json:
        print_json(rows)
        return
    table = Table()
    for col in columns:
        table.add_column(col.replace("_", " "))
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    out.print(table)


def ready(settings: Settings) -> None:
    """Make sure the schema exists before a command reads it."""
    from dbserver.schema import upgrade

    upgrade(settings)
