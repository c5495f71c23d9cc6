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

# Into a pipe or a file, lines are written whole (a UID is never cut or
# wrapped at 80 columns); on a terminal, messages wrap at its width.
out = Console()
out.soft_wrap = not out.is_terminal
err = Console(stderr=True)
err.soft_wrap = not err.is_terminal
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
    print_table(table)


def print_table(table: Table) -> None:
    """Print a table at its natural width, however narrow the terminal or
    pipe: a UID, an accession number or a path is never shortened to "…"
    (the terminal wraps a line that is too long)."""
    natural = out.measure(table, options=out.options.update_width(100_000)).maximum
    width = out.width
    out.width = max(width, natural)
    try:
        out.print(table)
    finally:
        out.width = width


def ready(settings: Settings) -> None:
    """Make sure the schema exists before a command reads it."""
    from dbserver.schema import upgrade

    upgrade(settings)
