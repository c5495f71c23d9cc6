"""Service heartbeats: each service process records that it is alive, so
``pacs status`` can tell what runs, on any host."""

from __future__ import annotations

import json
import os
import socket
from datetime import timedelta

from sqlalchemy import delete, select

from dbserver.models import ServiceHeartbeat, utcnow
from services.db import run_in_transaction, unit_of_work
from services.settings import Settings
from services.sqlutil import upsert
from services.worker import ticker

INTERVAL = 3.0
ALIVE_WITHIN = timedelta(seconds=12)


def beat(settings: Settings, service: str, detail: dict | None = None) -> None:
    now = utcnow()
    row = {"service": service, "host": socket.gethostname(), "pid": os.getpid(),
           "detail": json.dumps(detail or {}), "started_at": now, "seen_at": now}

    def work(session) -> None:  # noqa: ANN001
        upsert(session, ServiceHeartbeat.__table__, [row], ["service", "host", "pid"], ["seen_at", "detail"])
        session.execute(delete(ServiceHeartbeat).where(ServiceHeartbeat.seen_at < now - timedelta(hours=1)))

    run_in_transaction(work, settings)


def start_heartbeat(settings: Settings, service: str, detail: dict | None = None) -> None:
    beat(settings, service, detail)
    ticker(f"{service}-heartbeat", INTERVAL, lambda: beat(settings, service, detail))


def running_here(host: str, pid: int) -> bool:
    """False only when the process was on this host and is gone."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def alive(settings: Settings) -> list[dict]:
    """Processes seen recently (and, on this host, still running): service,
    host, pid, seen_at, detail."""
    with unit_of_work(settings) as session:
        rows = session.scalars(select(ServiceHeartbeat).where(
            ServiceHeartbeat.seen_at >= utcnow() - ALIVE_WITHIN).order_by(ServiceHeartbeat.service))
        return [{"service": r.service, "host": r.host, "pid": r.pid, "seen_at": r.seen_at.isoformat(),
                 "detail": json.loads(r.detail or "{}")} for r in rows if running_here(r.host, r.pid)]
