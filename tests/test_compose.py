"""docker-compose.yml describes the cluster of DESIGN.md: one container per
service, each running ``pacs serve NAME`` against healthy Postgres and Redis,
with health checks, named volumes, required secrets and only real settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from services.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

# services of DESIGN.md that `pacs serve` runs today
PACS_SERVICES = ("gateway", "archive", "dbserver", "curator")
BACKING_SERVICES = ("postgres", "redis")

# ${VAR:?message}: compose refuses to start when VAR is unset or empty
REQUIRED_VAR = re.compile(r"\$\{[A-Z][A-Z0-9_]*:\?[^}]+\}")
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$")
URL_CREDENTIALS = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@:]+:(?P<password>[^@]+)@")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...]
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): str(value) for key, value in env.items()}


def command(service: dict) -> list[str]:
    cmd = service.get("command")
    return cmd.split() if isinstance(cmd, str) else list(cmd or [])


def test_every_service_runs_pacs_serve(compose):
    services = compose["services"]
    for name in PACS_SERVICES:
        assert name in services, f"service {name} missing from docker-compose.yml"
        assert command(services[name]) == ["pacs", "serve", name]
    for name in BACKING_SERVICES:
        assert name in services


def test_services_share_one_image_built_from_deploy_dockerfile(compose):
    services = compose["services"]
    images = {services[name].get("image") for name in PACS_SERVICES}
    assert images == {"pacs-cluster:latest"}
    for name in PACS_SERVICES:
        build = services[name]["build"]
        assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"^USER (?!root\b|0\b)\S+", text, re.M), "image must run as a non-root user"
    assert re.search(r'^CMD \["pacs", "serve", "gateway"\]', text, re.M)


def test_services_wait_for_healthy_postgres_and_redis(compose):
    services = compose["services"]
    for name in PACS_SERVICES:
        depends = services[name].get("depends_on")
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for backing in BACKING_SERVICES:
            assert depends.get(backing, {}).get("condition") == "service_healthy", (name, backing)


def test_every_service_has_a_healthcheck(compose):
    for name, service in compose["services"].items():
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no healthcheck"
        test = check["test"]
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name


def test_healthchecks_probe_the_service_ports(compose):
    services = compose["services"]
    gateway = " ".join(services["gateway"]["healthcheck"]["test"])
    assert "11112" in gateway
    archive = " ".join(services["archive"]["healthcheck"]["test"])
    assert "8081/healthz" in archive
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert "ping" in services["redis"]["healthcheck"]["test"]


def test_redis_keeps_queued_messages(compose):
    redis = compose["services"]["redis"]
    cmd = command(redis)
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_secrets_are_required_variables(compose):
    checked = 0
    for name, service in compose["services"].items():
        for key, value in environment(service).items():
            if SECRET_KEY.search(key):
                assert REQUIRED_VAR.fullmatch(value), f"{name}: {key} must be ${{VAR:?...}}"
                checked += 1
            match = URL_CREDENTIALS.match(value)
            if match:
                assert REQUIRED_VAR.fullmatch(match["password"]), f"{name}: {key} embeds a password"
                checked += 1
    # the Postgres password and every PACS_DATABASE_URL
    assert checked >= 1 + len(PACS_SERVICES)


def test_database_and_broker_urls(compose):
    for name in PACS_SERVICES:
        env = environment(compose["services"][name])
        assert env["PACS_DATABASE_URL"].startswith("postgresql://")
        assert "@postgres:" in env["PACS_DATABASE_URL"] or "@postgres/" in env["PACS_DATABASE_URL"]
        assert env["PACS_BROKER_URL"].startswith("redis://redis:6379/")


def test_gateway_and_archive_hand_over_by_http(compose):
    # they have separate volumes, so a hard link cannot work
    services = compose["services"]
    for name in ("gateway", "archive"):
        assert environment(services[name])["PACS_TRANSFER_MODE"] == "http"
    assert environment(services["gateway"])["PACS_ARCHIVE_URL"] == "http://archive:8081"
    assert "11112:11112" in [str(port) for port in services["gateway"]["ports"]]


def test_named_volumes_are_declared(compose):
    declared = set(compose.get("volumes") or {})
    used = set()
    for service in compose["services"].values():
        for volume in service.get("volumes") or []:
            source = volume["source"] if isinstance(volume, dict) else volume.split(":", 1)[0]
            if not source.startswith(("/", ".", "~")):
                used.add(source)
    assert used <= declared, f"undeclared volumes: {used - declared}"
    services = compose["services"]

    def mounted(name: str, path: str) -> bool:
        targets = [volume.split(":")[1] for volume in services[name].get("volumes", [])]
        return any(path == target or path.startswith(target.rstrip("/") + "/") for target in targets)

    assert mounted("gateway", environment(services["gateway"])["PACS_SPOOL_DIR"])
    assert mounted("archive", environment(services["archive"])["PACS_CACHE_DIR"])
    assert mounted("curator", environment(services["curator"])["PACS_WEBCACHE_DIR"])
    assert mounted("postgres", "/var/lib/postgresql/data")

def test_environment_names_only_real_settings(compose):
    fields = {f"PACS_{field.upper()}" for field in Settings.model_fields}
    named = set()
    for name in PACS_SERVICES:
        env = environment(compose["services"][name])
        for key in env:
            assert key in fields, f"{name}: {key} is not a setting of services.settings.Settings"
            named.add(key)
    assert {"PACS_DATABASE_URL", "PACS_BROKER_URL", "PACS_DATA_DIR"} <= named
