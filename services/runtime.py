"""What every service process does at start: logging, settings, schema."""

from __future__ import annotations

import logging
import sys

from services.settings import Settings, get_settings


def setup_logging(settings: Settings | None = None, name: str = "pacs") -> None:
    settings = settings or get_settings()
    logging.basicConfig(
        level=settings.log_level,
        stream=sys.stderr,
        format=f"%(asctime)s {name}[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("pynetdicom", "httpx", "alembic", "celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def start_service(name: str) -> Settings:
    """Settings, logging and migrations: the start-up step of ``pacs serve``."""
    from dbserver.schema import upgrade

    settings = get_settings()
    setup_logging(settings, name)
    upgrade(settings)
    return settings
