"""``pacs``: the administration command line.

Every command is thin: it loads the settings, calls the same service layer
the services use, and prints a table or (``--json``) JSON. Errors print a
one-line message and exit non-zero.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from admin import ris, webcache
from admin._common import JsonOpt, err, fail as _fail, out, print_json as _print_json, print_table, ready as _ready
from admin._common import rows as _rows, settings_or_exit as _settings, study_or_fail as _study_or_fail
from services.errors import PacsError
from services.settings import Settings

app = typer.Typer(help="PACS Cluster administration.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
node_app = typer.Typer(help="Known DICOM nodes (modalities, workstations).", no_args_is_help=True)
study_app = typer.Typer(help="Studies in the index.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(ris.ris_app, name="ris")
app.add_typer(ris.quarantine_app, name="quarantine")
app.add_typer(ris.report_app, name="report")
app.add_typer(ris.hl7_app, name="hl7")
app.add_typer(webcache.webcache_app, name="webcache")
app.command("curate")(webcache.curate)
app.add_typer(node_app, name="node")
app.add_typer(study_app, name="study")

SERVICES = ("gateway", "archive", "dbserver", "curator")


# --- running the cluster --------------------------------------------------------
@app.command()
def up() -> None:
    """Start every service on this machine; Ctrl-C stops them all."""
    from dbserver.users import ensure_first_admin
    from services.runtime import setup_logging
    from services.supervisor import Child, Supervisor, python_argv

    settings = _settings()
    setup_logging(settings, "pacs-up")
    settings.data_path.mkdir(parents=True, exist_ok=True)
    _ready(settings)
    password = ensure_first_admin(settings)
    lines = [
        f"[bold]PACS Cluster[/bold] — data in {settings.data_path}",
        f"  database   {_redact(settings.effective_database_url)}",
        f"  broker     {_redact(settings.effective_broker_url)}",
        f"  gateway    DICOM {settings.dicom_ae_title} on port {settings.dicom_port} "
        f"({settings.gateway_processes} listener processes), HL7 MLLP on port {settings.hl7_port}",
        f"  archive    {settings.effective_archive_url} (cache tier {settings.cache_path})",
        "  dbserver   worker on queue db",
        f"  curator    worker on queue curator (web cache {settings.webcache_location})",
    ]
    if password:
        lines.append(f"[yellow]First start: user 'admin', password {password}[/yellow] "
                     f"(also in {settings.data_path / 'initial-admin-password'})")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        lines.append("[yellow]Running as root: fine for a trial; in production run the services "
                     "as an unprivileged user (the container image does).[/yellow]")
    for line in lines:
        out.print(line, soft_wrap=True)  # a path or port never split across lines
    sys.stdout.flush()
    children = [Child(name, python_argv("serve", name)) for name in SERVICES]
    Supervisor(children, report=lambda msg: err.print(f"[yellow]{msg}[/yellow]")).run()
    out.print("all services stopped")


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url


@app.command()
def serve(
    name: Annotated[str, typer.Argument(help="gateway, archive, dbserver or curator")],
    listener: Annotated[Optional[int], typer.Option(hidden=True)] = None,
    listen_fd: Annotated[Optional[int], typer.Option(hidden=True)] = None,
) -> None:
    """Run one service in the foreground (what each container runs)."""
    from services.runtime import start_service

    if name not in SERVICES:
        _fail(f"unknown service {name!r}; one of: {', '.join(SERVICES)}", 2)
    try:
        settings = start_service(name if listener is None else f"{name}-{listener}")
    except PacsError as exc:
        _fail(str(exc), 2)
    if name == "gateway" and listener is not None and listen_fd is not None:
        from gateway import service

        service.serve_listener(settings, listener, listen_fd)
    else:
        importlib.import_module(f"{name}.service").serve(settings)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring the schema to the newest revision."""
    from dbserver.schema import upgrade

    rev = upgrade(_settings())
    out.print(f"schema at revision {rev}")


# --- status -------------------------------------------------------------------------
def _usage(path: Path) -> dict[str, int]:
    files = size = 0
    if path.is_dir():
        for dirpath, _dirs, names in os.walk(path):
            for name in names:
                if name.endswith(".dcm"):
                    try:
                        size += os.stat(os.path.join(dirpath, name)).st_size
                        files += 1
                    except OSError:
                        pass
    return {"files": files, "bytes": size}


@app.command()
def status(as_json: JsonOpt = False) -> None:
    """Services up or down, queue depths, counts, spool and cache usage."""
    from dbserver.queries import counts
    from services.heartbeat import alive
    from services.tasks import queue_depths

    settings = _settings()
    _ready(settings)
    procs = alive(settings)
    services = {name: {"up": any(p["service"] == name for p in procs),
                       "processes": [p for p in procs if p["service"].split("-")[0] == name]}
                for name in SERVICES}
    data = {
        "services": services,
        "queues": queue_depths(settings),
        "counts": counts(settings),
        "spool": _usage(settings.spool_path),
        "cache": _usage(settings.cache_path),
    }
    if as_json:
        _print_json(data)
        return
    table = Table(title="services")
    for col in ("service", "state", "processes"):
        table.add_column(col)
    for name, info in services.items():
        table.add_row(name, "[green]up[/green]" if info["up"] else "[red]down[/red]",
                      ", ".join(f"{p['host']}:{p['pid']}" for p in info["processes"]))
    print_table(table)
    out.print("queues: " + ", ".join(f"{q}={n if n is not None else '?'}" for q, n in data["queues"].items()))
    out.print("index:  " + ", ".join(f"{k}={v}" for k, v in data["counts"].items()))
    out.print(f"spool:  {data['spool']['files']} files, {data['spool']['bytes'] / 1e6:.1f} MB")
    out.print(f"cache:  {data['cache']['files']} files, {data['cache']['bytes'] / 1e6:.1f} MB")


# --- nodes ----------------------------------------------------------------------------
@node_app.command("add")
def node_add(
    ae_title: str, host: str, port: int,
    roles: Annotated[str, typer.Option(help="comma-separated: store,query,move,get,worklist,commit,destination")] = "store",
    description: str = "",
    issuer: Annotated[str, typer.Option(
        help="Issuer of Patient ID (RIS domain) of the images it sends without one")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Add a DICOM node."""
    from dbserver.queries import add_node

    settings = _settings()
    _ready(settings)
    try:
        node = add_node(settings, ae_title, host, port, [r.strip() for r in roles.split(",") if r.strip()],
                        description, issuer)
    except ValueError as exc:
        _fail(str(exc), 2)
    if as_json:
        _print_json(node)
        return
    out.print(f"added {node['ae_title']} at {node['host']}:{node['port']} ({', '.join(node['roles'])})"
              + (f", Patient IDs of {node['issuer_of_patient_id']}" if node["issuer_of_patient_id"] else ""))


@node_app.command("list")
def node_list(as_json: JsonOpt = False) -> None:
    """List the DICOM nodes."""
    from dbserver.queries import list_nodes

    settings = _settings()
    _ready(settings)
    _rows(list_nodes(settings), ["ae_title", "host", "port", "roles", "issuer_of_patient_id", "description"],
          as_json)


@node_app.command("remove")
def node_remove(ae_title: str, as_json: JsonOpt = False) -> None:
    """Remove a DICOM node."""
    from dbserver.queries import remove_node

    settings = _settings()
    _ready(settings)
    if not remove_node(settings, ae_title):
        _fail(f"no node {ae_title!r}")
    if as_json:
        _print_json({"ae_title": ae_title, "removed": True})
        return
    out.print(f"removed {ae_title}")


# --- studies ------------------------------------------------------------------------
@study_app.command("list")
def study_list(as_json: JsonOpt = False,
               limit: Annotated[Optional[int], typer.Option(help="at most this many")] = None) -> None:
    """List studies, newest first."""
    from dbserver.queries import list_studies

    settings = _settings()
    _ready(settings)
    studies = list_studies(settings, limit=limit)
    if as_json:
        _print_json(studies)
        return
    table = Table()
    for col in ("study UID", "patient", "name", "accession", "date", "mod", "series", "inst", "stable"):
        table.add_column(col)
    for s in studies:
        table.add_row(s["study_instance_uid"], s["patient_id"], s["patient_name"], s["accession_number"],
                      s["study_date"], "/".join(s["modalities"]), str(s["num_series"]),
                      str(s["num_instances"]), "yes" if s["stable"] else "no")
    print_table(table)


@study_app.command("show")
def study_show(uid: str, as_json: JsonOpt = False) -> None:
    """One study: its series, instances and every stored copy."""

    settings = _settings()
    _ready(settings)
    study = _study_or_fail(settings, uid)
    if as_json:
        _print_json(study)
        return
    out.print(f"[bold]{study['study_instance_uid']}[/bold]  {study['patient_name']} ({study['patient_id']})  "
              f"acc {study['accession_number']}  {study['study_date']}  stable={study['stable']}")
    detail = study["validation_detail"]
    line = f"  validation: {study['validation_status']}"
    if study["validation_status"] == "pending":  # asking the external RIS worklist
        line += f", {detail.get('attempts', 0)} attempts"
        if detail.get("last_attempt"):
            line += f", last at {detail['last_attempt']}"
        if detail.get("last_error"):
            line += f", last error: {detail['last_error']}"
    elif detail.get("reason"):
        line += f" ({detail['reason']})"
    out.print(line)
    for series in study["series"]:
        out.print(f"  series {series['series_number']} {series['modality']} {series['series_instance_uid']} "
                  f"({series['num_instances']} instances)")
        for inst in series["instances"]:
            tiers = ",".join(f"{c['tier']}{'✓' if c['verified_at'] else '?'}" for c in inst["copies"]) or "—"
            out.print(f"    {inst['sop_instance_uid']}  {inst['sha256'][:16]}…  {tiers}")


# --- export / import ------------------------------------------------------------------
@app.command("export")
def export(
    study_uid: str,
    out_dir: Annotated[Path, typer.Option("--out", help="target folder")],
    force: Annotated[bool, typer.Option("--force", help="export a quarantined or rejected study all the same "
                                                        "(audited)")] = False,
) -> None:
    """Write every instance of a study as DIR/<SOPInstanceUID>.dcm: as stored,
    with the RIS demographics applied where the RIS owns them. A quarantined
    or rejected study is refused unless --force."""
    from dbserver.corrections import outgoing
    from dbserver.validation import HIDDEN
    from services.transfer import fetch
    from services.uids import check_uid

    settings = _settings()
    _ready(settings)
    study = _study_or_fail(settings, study_uid)
    state = study["validation_status"]
    if state in HIDDEN and not force:
        _audit_cli(settings, "export", "study", study_uid, outcome="failure", validation_status=state,
                   error="refused: not decided")
        _fail(f"study {study_uid} is {state}: its demographics disagree with the RIS. Decide it first "
              "(pacs quarantine show, then reconcile, accept or reject), or export it anyway with --force")
    if state in HIDDEN:
        err.print(f"[yellow]study {study_uid} is {state}: exported as forced (audited)[/yellow]")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = failed = 0
    for series in study["series"]:
        for inst in series["instances"]:
            try:
                uid = check_uid(inst["sop_instance_uid"])
                locator = next((c["locator"] for c in inst["copies"] if c["tier"] == "cache"), None)
                data = outgoing(fetch(inst["sha256"], locator, settings), study)
                (out_dir / f"{uid}.dcm").write_bytes(data)
                written += 1
            except PacsError as exc:
                failed += 1
                err.print(f"[red]{inst['sop_instance_uid']}: {exc}[/red]")
    _audit_cli(settings, "export", "study", study_uid, written=written, failed=failed, target=str(out_dir),
               **({"forced": True, "validation_status": state} if state in HIDDEN else {}))
    out.print(f"exported {written} instances to {out_dir}" + (f", {failed} failed" if failed else ""))
    if failed:
        raise typer.Exit(1)


def _audit_cli(settings: Settings, action: str, rtype: str, uid: str, outcome: str = "success",
               **detail: Any) -> None:
    from dbserver.queries import audit_now

    audit_now(settings, action, rtype, uid, outcome=outcome, **detail)


def _walk(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            err.print(f"[yellow]{p}: no such file or folder[/yellow]")
    return files


@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="files and folders")],
    wait: Annotated[float, typer.Option(help="seconds to wait for the archive and index to confirm")] = 300.0,
) -> None:
    """Import DICOM files through the same ingest funnel as C-STORE."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from gateway.ingest import Ingestor, Origin, Outcome

    settings = _settings()
    _ready(settings)
    files = _walk(paths)
    if not files:
        _fail("nothing to import", 2)
    ingestor = Ingestor(f"import-{os.getpid()}", settings, adopt_orphans=False).start()
    stored = already = 0
    failures: list[tuple[Path, str]] = []
    with Progress(TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err) as progress:
        task = progress.add_task("import", total=len(files))
        for f in files:
            try:
                result = ingestor.ingest_file(f, Origin("import", "", str(f)))
                if result.outcome is Outcome.ALREADY_STORED:
                    already += 1
                else:
                    stored += 1
            except (PacsError, OSError) as exc:
                failures.append((f, str(exc)))
            progress.advance(task)
    delivered = ingestor.wait_delivered(wait)
    pending = ingestor.pending_count()
    ingestor.close()
    out.print(f"{stored} stored, {already} already stored, {len(failures)} failed")
    for f, why in failures:
        out.print(f"  [red]{f}[/red]: {why}")
    if not delivered:
        out.print(f"[yellow]{pending} objects are spooled but not yet confirmed by the archive and index; "
                  "a running gateway will deliver them.[/yellow]")
    if failures:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
