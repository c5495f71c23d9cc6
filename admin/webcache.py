"""``pacs curate`` and ``pacs webcache``: building the web cache by hand,
and looking after it."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from admin._common import JsonOpt, err, fail, out, print_json, ready, settings_or_exit

webcache_app = typer.Typer(help="The web cache: wavelet files, thumbnails, series metadata.", no_args_is_help=True)


def curate(
    study_uid: Annotated[Optional[str], typer.Argument(help="the study to curate")] = None,
    all_studies: Annotated[bool, typer.Option("--all", help="every study")] = False,
    force: Annotated[bool, typer.Option("--force", help="redo what is done already")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Build the web cache of a study (or of all) now, in this process."""
    from sqlalchemy import select

    from curator.curate import build_series_document
    from curator.curate import curate as curate_one
    from curator.webcache import FAILED, QUEUED
    from dbserver.models import Instance, Series, Study
    from services.db import unit_of_work
    from services.errors import PacsError
    from services.uids import check_uid

    settings = settings_or_exit()
    ready(settings)
    if bool(study_uid) == all_studies:
        fail("name one study, or --all", 2)
    query = select(Instance.sop_instance_uid, Series.series_instance_uid).join(
        Series, Instance.series_fk == Series.id).join(Study, Series.study_fk == Study.id)
    if study_uid:
        try:
            check_uid(study_uid, "Study Instance UID")
        except PacsError as exc:
            fail(str(exc), 2)
        query = query.where(Study.study_instance_uid == study_uid)
    with unit_of_work(settings) as session:
        rows = session.execute(query.order_by(Series.id, Instance.instance_number, Instance.id)).all()
    if not rows:
        fail(f"no study {study_uid}" if study_uid else "no studies")
    outcomes: dict[str, list[str]] = {}
    errors: dict[str, str] = {}
    with Progress(TextColumn("curating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err) as progress:
        task = progress.add_task("curate", total=len(rows))
        for uid, _ in rows:
            result = curate_one(settings, uid, force=force)
            # still queued: the archive could not be read now (the curator's sweeper asks again later)
            state = FAILED if result.state == QUEUED else result.state
            outcomes.setdefault(state, []).append(uid)
            if state == FAILED:
                errors[uid] = result.error
            progress.advance(task)
    for series_uid in sorted({s for _, s in rows}):
        build_series_document(settings, series_uid)
    if as_json:
        print_json({"outcomes": {k: len(v) for k, v in sorted(outcomes.items())}, "instances": outcomes,
                    "errors": errors})
        if errors:
            raise typer.Exit(1)
        return
    out.print(", ".join(f"{len(v)} {k}" for k, v in sorted(outcomes.items())))
    if errors:
        for uid, error in errors.items():
            out.print(f"  [red]{uid}[/red]: {escape(error)}", highlight=False)
        raise typer.Exit(1)


@webcache_app.command("usage")
def usage(as_json: JsonOpt = False) -> None:
    """What the web cache holds, against its limit."""
    from curator.webcache import usage as webcache_usage

    settings = settings_or_exit()
    ready(settings)
    data = webcache_usage(settings)
    if as_json:
        print_json(data)
        return
    limit = f"{data['limit_bytes'] / 1e6:.1f} MB" if data["limit_bytes"] else "no limit"
    out.print(f"web cache {data['path']}: {data['bytes'] / 1e6:.1f} MB of {limit}, "
              f"{data['series_documents']} series documents")
    out.print("instances: " + ", ".join(f"{k}={v}" for k, v in data["instances"].items()))


@webcache_app.command("evict")
def evict(to: Annotated[Optional[int], typer.Option("--to", help="bytes to keep (default: the low water mark)")]
          = None, as_json: JsonOpt = False) -> None:
    """Evict least recently used entries now (they are rebuilt from the archive on demand)."""
    from curator.webcache import evict as webcache_evict

    settings = settings_or_exit()
    ready(settings)
    if to is not None and to < 0:
        fail("--to is a number of bytes, 0 or more", 2)
    if to is None and settings.webcache_max_bytes:
        to = int(settings.webcache_max_bytes * settings.webcache_low_water)
    if to is None:
        fail("the web cache has no limit (PACS_WEBCACHE_MAX_BYTES=0): say --to BYTES", 2)
    result = webcache_evict(settings, to)
    if as_json:
        print_json(result)
        return
    out.print(f"evicted {result['evicted']} entries, {result['freed_bytes'] / 1e6:.1f} MB freed")


@webcache_app.command("verify")
def verify(as_json: JsonOpt = False) -> None:
    """Check every web-cache file; broken ones are rebuilt by the curator."""
    from curator.webcache import verify as webcache_verify

    settings = settings_or_exit()
    ready(settings)
    result = webcache_verify(settings)
    if as_json:
        print_json(result)
    else:
        out.print(f"checked {result['checked']}, {len(result['broken'])} broken")
        for item in result["broken"]:
            out.print(f"  [red]{item.get('sop_instance_uid') or item.get('series_instance_uid')}[/red]: "
                      f"{item['problem']}")
    if result["broken"]:
        raise typer.Exit(1)
