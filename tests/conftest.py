"""Fixtures: real clusters under ``pacs up``, real PostgreSQL and Redis.

Where PostgreSQL or Redis is down, tests that need them are skipped on a
developer's machine but fail under CI (``PACS_TEST_REQUIRE_SERVICES=1``):
a skipped test is not a pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.settings import Settings
from tests.cluster import (
    Cluster,
    create_pg_database,
    drop_pg_database,
    need_backends,
    pg_url,
    postgres_available,
    require_services,
)


def pytest_configure(config: pytest.Config) -> None:
    """Compile the wavelet coder (numba, cached on disk) once, in the main
    process, before the workers start: on a fresh checkout every worker and
    every cluster's curator would otherwise compile it at the same time."""
    if hasattr(config, "workerinput"):  # an xdist worker: the main process did it
        return
    from curator.service import warm_up
    warm_up()


@pytest.fixture(params=["sqlite", "postgres"])
def make_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Settings]]:
    """Settings on a fresh, migrated database (SQLite, then PostgreSQL), for
    tests that call the services' code in-process; call with overrides
    (``duplicate_policy=…``) to get settings on the same database."""
    from dbserver.schema import upgrade
    from services.db import dispose_engines
    from services.settings import load_settings

    if request.param == "postgres":
        if not postgres_available():
            message = "PostgreSQL not reachable on 127.0.0.1"
            if require_services():
                pytest.fail(message)
            pytest.skip(message)
        name = create_pg_database()
        url = pg_url(name)
    else:
        name = None
        url = f"sqlite:///{tmp_path / 'pacs.db'}"

    def make(**overrides: object) -> Settings:
        values = {"data_dir": tmp_path, "database_url": url, "study_stable_seconds": 60.0,
                  "duplicate_policy": "keep-first"}
        values.update(overrides)
        return load_settings(**values)

    upgrade(make())
    try:
        yield make
    finally:
        dispose_engines()
        if name:
            drop_pg_database(name)


def _cluster(tmp_path: Path, backend: str, **env: str) -> Iterator[Cluster]:
    if backend == "postgres":
        need_backends()
    c = Cluster(tmp_path, backend, extra_env=env)
    try:
        yield c.start()
    finally:
        c.destroy()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """``pacs up`` on the embedded defaults (SQLite, filesystem broker)."""
    yield from _cluster(tmp_path, "embedded")


@pytest.fixture
def pg_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """``pacs up`` on PostgreSQL and Redis, as docker-compose runs it."""
    yield from _cluster(tmp_path, "postgres")


@pytest.fixture(params=["embedded", "postgres"])
def any_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    yield from _cluster(tmp_path, request.param)


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator:
    """Build a cluster with extra settings: ``make_cluster(backend, **env)``;
    not started, destroyed at the end."""
    made: list[Cluster] = []

    def make(backend: str = "embedded", **env: str) -> Cluster:
        if backend == "postgres":
            need_backends()
        c = Cluster(tmp_path / f"c{len(made)}", backend, extra_env=env)
        c.root.mkdir(parents=True, exist_ok=True)
        made.append(c)
        return c

    yield make
    for c in made:
        c.destroy()


@pytest.fixture
def db(make_cluster: Callable[..., Cluster]) -> Iterator[tuple[Cluster, Settings]]:
    """A cluster's PostgreSQL database, migrated; its services are not
    started (for the ``pacs`` commands that work on the database alone)."""
    from dbserver.schema import upgrade
    from services.db import dispose_engines
    from services.settings import load_settings

    c = make_cluster("postgres")
    settings = load_settings(data_dir=c.data_dir, database_url=c.env["PACS_DATABASE_URL"])
    upgrade(settings)
    try:
        yield c, settings
    finally:
        dispose_engines()


@pytest.fixture(scope="session")
def s3_server() -> Iterator:
    """A local S3-compatible server (moto) for the whole run; tests take a
    bucket of their own with ``s3_server.new_bucket()``."""
    from tests.s3 import S3Server
    server = S3Server.start()
    try:
        yield server
    finally:
        server.stop()
