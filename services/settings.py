"""One settings object for every service and command.

Every value comes from the environment (prefix ``PACS_``), optionally from a
TOML file named by ``PACS_CONFIG_FILE``, else from the defaults below (those of
DESIGN.md). A bad value fails at start with a message naming the variable:
see :func:`load_settings`.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from services.errors import ConfigurationError

DuplicatePolicy = Literal["keep-first", "overwrite", "reject"]
TransferMode = Literal["auto", "local", "http"]
ValidationPolicy = Literal["quarantine", "coerce"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PACS_", extra="ignore", validate_default=True
    )

    # --- where things live -------------------------------------------------
    data_dir: Path = Path("./pacs-data")
    database_url: str = ""  # "" → SQLite in the data folder
    broker_url: str = ""  # "" → server-less filesystem transport in the data folder
    spool_dir: Path | None = None  # default DATA_DIR/spool
    cache_dir: Path | None = None  # archive cache tier, default DATA_DIR/archive/cache
    webcache_dir: Path | None = None  # curator's web cache, default DATA_DIR/webcache
    webcache_url: str = ""  # s3://bucket/prefix: the web cache in object storage instead of WEBCACHE_DIR

    # --- S3-compatible object storage (any store given as s3://…) --------------
    s3_endpoint_url: str = ""  # "" → AWS; MinIO, Ceph RGW…: their URL
    s3_region: str = ""
    s3_access_key_id: str = ""  # "" → boto3's chain (AWS_* variables, instance profile)
    s3_secret_access_key: str = ""

    # --- DICOM -------------------------------------------------------------
    dicom_host: str = "0.0.0.0"
    dicom_port: int = Field(11112, ge=1, le=65535)
    dicom_ae_title: str = "PACS"
    dicom_require_known_ae: bool = False
    dicom_max_pdu: int = Field(4 * 1024 * 1024, ge=0)
    gateway_processes: int = Field(2, ge=1, le=64)
    duplicate_policy: DuplicatePolicy = "keep-first"

    # --- HL7 ---------------------------------------------------------------
    hl7_port: int = Field(2575, ge=1, le=65535)
    hl7_max_message_bytes: int = Field(1024 * 1024, ge=1024)
    hl7_idle_seconds: float = Field(300.0, gt=0)
    # character set of messages whose MSH-18 names none (HL7 table 0211, e.g. 8859/1);
    # "" → UTF-8, else ISO 8859-1 when the bytes are not UTF-8
    hl7_default_charset: str = ""
    hl7_facility: str = "PACS"  # MSH-4 of what we send
    # reports to the RIS: retried with exponential backoff up to this long between attempts
    hl7_retry_max_seconds: float = Field(300.0, gt=0)
    hl7_send_timeout_seconds: float = Field(10.0, gt=0)

    # --- HIS/RIS validation -----------------------------------------------
    validation_policy: ValidationPolicy = "quarantine"
    # an external RIS asked by Modality Worklist C-FIND (empty AE title: none)
    ris_mwl_ae: str = ""
    ris_mwl_host: str = "127.0.0.1"
    ris_mwl_port: int = Field(104, ge=1, le=65535)
    ris_mwl_issuer: str = ""  # issuer of its Patient IDs when it names none; default its AE title
    ris_retry_seconds: float = Field(15.0, gt=0)  # pending studies asked again this often
    # the Issuer of Patient ID (a RIS domain) of images that carry none, unless
    # their node names one (pacs node add --issuer); "" → none
    default_issuer_of_patient_id: str = Field("", max_length=64)

    # --- other ports -------------------------------------------------------
    http_port: int = Field(8080, ge=1, le=65535)
    archive_host: str = "127.0.0.1"
    archive_port: int = Field(8081, ge=1, le=65535)
    archive_url: str = ""  # "" → http://ARCHIVE_HOST:ARCHIVE_PORT

    # --- web cache (curator) -----------------------------------------------
    webcache_max_bytes: int = Field(50 * 1024**3, ge=0)  # 0: no limit
    webcache_low_water: float = Field(0.9, gt=0, le=1)  # eviction brings usage down to this share
    curator_sweep_seconds: float = Field(2.0, gt=0)  # how often new instances are looked for
    curator_requeue_seconds: float = Field(300.0, gt=0)  # queued work not done this long is asked again
    curator_lossy_psnr: float = Field(0.0, ge=0)  # 0: lossless web copies (default); else lossy, marked so

    # --- behaviour ---------------------------------------------------------
    transfer_mode: TransferMode = "auto"
    study_stable_seconds: float = Field(60.0, ge=0)
    spool_resend_seconds: float = Field(30.0, gt=0)
    sweep_interval_seconds: float = Field(5.0, gt=0)
    # an archive inbox file untouched this long is taken up by the archive's
    # sweep (its announcement was lost): archive.store.sweep_inbox
    archive_inbox_stale_seconds: float = Field(3600.0, gt=0)
    worker_concurrency: int = Field(1, ge=1, le=64)
    # archive and index workers yield the CPU to the DICOM listeners during a
    # burst: a modality waits on the acknowledgement, nobody on the index
    worker_nice: int = Field(5, ge=0, le=19)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("dicom_ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        value = value.strip()
        if not 1 <= len(value) <= 16 or "\\" in value or not value.isprintable():
            raise ValueError("an AE title is 1 to 16 printable characters, no backslash")
        return value

    @field_validator("hl7_default_charset")
    @classmethod
    def _check_charset(cls, value: str) -> str:
        from services.mllp import codec  # noqa: PLC0415 - mllp is light, settings load first

        codec(value)
        return value.strip()

    @field_validator("webcache_url")
    @classmethod
    def _check_store_url(cls, value: str) -> str:
        value = value.strip()
        if value and not (value.startswith("s3://") and len(value) > len("s3://")
                          and not value[len("s3://"):].startswith("/")):
            raise ValueError("an object store location is s3://BUCKET or s3://BUCKET/PREFIX")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = os.environ.get("PACS_CONFIG_FILE")
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    # --- derived values ----------------------------------------------------
    @property
    def data_path(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_path / 'pacs.db'}"

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_folder(self) -> Path:
        return self.data_path / "broker"

    @property
    def spool_path(self) -> Path:
        return (self.spool_dir or self.data_path / "spool").expanduser().resolve()

    @property
    def cache_path(self) -> Path:
        return (self.cache_dir or self.data_path / "archive" / "cache").expanduser().resolve()

    @property
    def webcache_path(self) -> Path:
        return (self.webcache_dir or self.data_path / "webcache").expanduser().resolve()

    @property
    def webcache_location(self) -> str:
        """Where the web cache is: its s3:// URL, else its folder."""
        return self.webcache_url or str(self.webcache_path)

    @property
    def archive_inbox_path(self) -> Path:
        """Where a local handoff links spool files for the archive to take."""
        return self.cache_path.parent / "inbox"

    @property
    def effective_archive_url(self) -> str:
        return (self.archive_url or f"http://{self.archive_host}:{self.archive_port}").rstrip("/")


def _explain(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "?"
        value = os.environ.get(f"PACS_{field.upper()}")
        shown = f" (got {value!r})" if value is not None else ""
        lines.append(f"PACS_{field.upper()}: {err['msg']}{shown}")
    return "invalid settings:\n  " + "\n  ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Build and validate the settings; raise :class:`ConfigurationError` naming
    each bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigurationError(_explain(exc)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, loaded once."""
    return load_settings()
