"""The Celery application, its queues and the names of every task.

Senders use :func:`send` with a task *name*, so a service never imports
another service's task code: the name and its JSON arguments are the
contract. Messages are hints; the database is the source of truth, and every
task is idempotent (DESIGN.md, invariants).
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from services.settings import Settings, get_settings

Q_DB = "db"
Q_ARCHIVE = "archive"
Q_CURATOR = "curator"
Q_GATEWAY = "gateway"
QUEUES = (Q_DB, Q_ARCHIVE, Q_CURATOR, Q_GATEWAY)

# task names: the contract between services
T_REGISTER_INSTANCES = "pacs.db.register_instances"
T_ARCHIVE_ACCEPT = "pacs.archive.accept_objects"
T_CURATE_INSTANCES = "pacs.curator.curate_instances"
T_SERIES_METADATA = "pacs.curator.series_metadata"

ROUTES = {"pacs.db.*": {"queue": Q_DB}, "pacs.archive.*": {"queue": Q_ARCHIVE},
          "pacs.curator.*": {"queue": Q_CURATOR}, "pacs.gateway.*": {"queue": Q_GATEWAY}}


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("pacs", set_as_current=False)
    conf: dict[str, Any] = dict(
        broker_url=settings.effective_broker_url,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES],
        task_default_queue=Q_DB,
        task_routes=ROUTES,
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    if settings.effective_broker_url.startswith("filesystem://"):
        folder = settings.broker_folder
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        conf["broker_transport"] = "services.broker:Transport"  # messages that appear whole
        conf["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": 0.05,  # kombu's default of 1 s is one batch a second
        }
    elif settings.effective_broker_url.startswith(("redis://", "rediss://")):
        # A message whose worker died unacknowledged comes back after this long;
        # the sweepers re-derive lost work from the database well before that.
        conf["broker_transport_options"] = {"visibility_timeout": 300}
    app.conf.update(conf)
    return app


_app: Celery | None = None


def celery_app() -> Celery:
    """The process-wide Celery application."""
    global _app
    if _app is None:
        _app = make_celery()
    return _app


def send(name: str, *args: Any) -> None:
    """Enqueue task ``name`` with JSON arguments on its queue."""
    app = celery_app()
    app.send_task(name, args=list(args), queue=_queue_for(name))


def _queue_for(name: str) -> str:
    for pattern, route in ROUTES.items():
        if name.startswith(pattern[:-1]):
            return route["queue"]
    return Q_DB


def queue_depths(settings: Settings | None = None) -> dict[str, int | None]:
    """Messages waiting per queue (None where the broker cannot tell)."""
    settings = settings or get_settings()
    url = settings.effective_broker_url
    depths: dict[str, int | None] = {}
    if url.startswith("filesystem://"):
        folder = settings.broker_folder / "queue"
        names = [p.name for p in folder.glob("*.msg")] if folder.exists() else []
        for q in QUEUES:
            depths[q] = sum(1 for n in names if n.endswith(f".{q}.msg"))
        return depths
    try:
        with celery_app().connection_for_write() as conn:
            channel = conn.default_channel
            for q in QUEUES:
                try:
                    depths[q] = channel.queue_declare(queue=q, passive=True).message_count
                except Exception:  # noqa: BLE001 - a missing queue is empty
                    depths[q] = 0
    except Exception:  # noqa: BLE001 - broker down: unknown
        depths = {q: None for q in QUEUES}
    return depths
