"""The migrations build exactly the schema the models describe, on SQLite
and PostgreSQL, and step down and up again."""

from __future__ import annotations

from collections.abc import Callable

from alembic import command
from alembic.config import Config
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from dbserver.models import Base
from dbserver.schema import MIGRATIONS, head_revision, upgrade
from dbserver.worklist import OrderFields, create_order, find_orders
from services.db import get_engine
from services.settings import Settings


def test_migrations_match_the_models(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    with get_engine(settings).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], diff


def test_orders_survive_a_step_down_and_up(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    create_order(settings, OrderFields(accession_number="OLD-1", patient_id="P-OLD", patient_name="OLD^OTTO",
                                       procedure_code_value="CTCHEST", procedure_coding_scheme="99RIS"))
    engine = get_engine(settings)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0006")
    assert "procedure_code_value" not in {c["name"] for c in inspect(engine).get_columns("orders")}
    assert upgrade(settings) == head_revision()
    [order], _ = find_orders(settings)
    assert (order["accession_number"], order["patient_name"]) == ("OLD-1", "OLD^OTTO")
    assert (order["procedure_code_value"], order["procedure_coding_scheme"]) == ("", "")
