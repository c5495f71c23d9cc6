"""The schema: SQLAlchemy 2 models. Alembic migrations in ``migrations/``
are the only way it changes.

Column names mirror DICOM keywords in snake_case. An *object* is one stored
DICOM file, named by its SHA-256; an *instance* row points at the object that
currently represents that SOP Instance; every copy of an object on a tier is
an :class:`ObjectCopy` row (store and remember).
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC timestamps on every backend (SQLite keeps them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):  # noqa: ANN001, ANN201
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):  # noqa: ANN001, ANN201
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        # PostgreSQL answers in its session's time zone, which need not be UTC
        return value.astimezone(timezone.utc) if value is not None else None


UID = String(64)
TS = UTCDateTime()


class Patient(Base):
    __tablename__ = "patients"
    __table_args__ = (UniqueConstraint("patient_id", "issuer_of_patient_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    patient_birth_date: Mapped[str] = mapped_column(String(8), default="")
    patient_sex: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(TS, default=utcnow)
    # set when the HIS/RIS created or changed this patient (ADT, orders, worklist):
    # its demographics then go out with every object of its studies
    ris_updated_at: Mapped[datetime | None] = mapped_column(TS, nullable=True)

    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class PatientPriorId(Base):
    """A Patient ID a patient no longer has: merged into another (ADT^A40)
    or changed (ADT^A47). Kept so that the old identifier still finds the
    patient."""

    __tablename__ = "patient_prior_ids"
    __table_args__ = (Index("ix_patient_prior_ids_key", "patient_id", "issuer_of_patient_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    event: Mapped[str] = mapped_column(String(8))  # A40 | A47
    message_control_id: Mapped[str] = mapped_column(String(64), default="")
    replaced_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class Study(Base):
    __tablename__ = "studies"
    __table_args__ = (
        Index("ix_studies_stable_at_pending", "stable", "stable_at"),
        Index("ix_studies_accession_number", "accession_number"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    study_date: Mapped[str] = mapped_column(String(8), default="")
    study_time: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(64), default="")
    # the images' Issuer of Accession Number Sequence (0008,0051): its Local
    # Namespace Entity ID, else its Universal Entity ID; "" when they name none
    issuer_of_accession_number: Mapped[str] = mapped_column(String(64), default="")
    study_id: Mapped[str] = mapped_column(String(16), default="")
    study_description: Mapped[str] = mapped_column(String(64), default="")
    referring_physician_name: Mapped[str] = mapped_column(String(324), default="")
    modalities_in_study: Mapped[str] = mapped_column(String(256), default="")
    number_of_study_related_series: Mapped[int] = mapped_column(Integer, default=0)
    number_of_study_related_instances: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    last_received_at: Mapped[datetime] = mapped_column(TS, default=utcnow)
    stable_at: Mapped[datetime] = mapped_column(TS, default=utcnow)
    stable: Mapped[bool] = mapped_column(Boolean, default=False)
    # HIS/RIS validation: unverified (no order) | verified | quarantined (mismatch)
    validation_status: Mapped[str] = mapped_column(String(16), default="unverified", index=True)
    validation_detail: Mapped[str] = mapped_column(Text, default="")
    order_fk: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), nullable=True)
    # reading workflow: unread | read | dictated | reported
    reading_status: Mapped[str] = mapped_column(String(16), default="unread")
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    series_description: Mapped[str] = mapped_column(String(64), default="")
    body_part_examined: Mapped[str] = mapped_column(String(16), default="")
    number_of_series_related_instances: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_fk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(UID, default="")
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID, default="")
    number_of_frames: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    columns: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[datetime] = mapped_column(TS, default=utcnow)

    series: Mapped[Series] = relationship(back_populates="instances")


class SupersededObject(Base):
    """An object received for a SOP Instance UID that does not (or no longer)
    represent it: kept aside in the archive, never silently deleted."""

    __tablename__ = "superseded_objects"
    __table_args__ = (UniqueConstraint("sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(32))  # duplicate-kept-first | overwritten | duplicate-rejected
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class ObjectCopy(Base):
    """One copy of one object on one tier."""

    __tablename__ = "object_copies"
    __table_args__ = (UniqueConstraint("sha256", "tier"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    tier: Mapped[str] = mapped_column(String(16))  # cache | longterm
    locator: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    verified_at: Mapped[datetime | None] = mapped_column(TS, nullable=True)
    # set by an explicit purge (dbserver.purge): the archive deletes this copy
    purge_requested_at: Mapped[datetime | None] = mapped_column(TS, nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class Change(Base):
    """The change log: what happened to which resource, in order."""

    __tablename__ = "changes"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    change_type: Mapped[str] = mapped_column(String(32))  # new-instance, new-series, new-study, stable-study, ...
    resource_type: Mapped[str] = mapped_column(String(16))
    resource_uid: Mapped[str] = mapped_column(UID)
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(TS, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str] = mapped_column(String(16), default="")
    resource_uid: Mapped[str] = mapped_column(String(64), default="")
    outcome: Mapped[str] = mapped_column(String(16), default="success")
    detail: Mapped[str] = mapped_column(Text, default="")


class DicomNode(Base):
    __tablename__ = "dicom_nodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    roles: Mapped[str] = mapped_column(String(128), default="store")  # comma-separated
    # the Issuer of Patient ID of images it sends without one (a RIS domain)
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    description: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class ServiceHeartbeat(Base):
    """Each running service process says it is alive every few seconds."""

    __tablename__ = "service_heartbeats"
    __table_args__ = (UniqueConstraint("service", "host", "pid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    service: Mapped[str] = mapped_column(String(32))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    detail: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime] = mapped_column(TS, default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(TS, default=utcnow, index=True)


class Order(Base):
    """An imaging order from the RIS: one requested procedure with its
    scheduled procedure step (PS3.4 Annex K, Modality Worklist). Accession
    numbers are unique within their issuer (the RIS domain)."""

    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("accession_number", "issuer_of_accession_number"),
        Index("ix_orders_scheduled", "status", "scheduled_start"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    accession_number: Mapped[str] = mapped_column(String(16))
    issuer_of_accession_number: Mapped[str] = mapped_column(String(64), default="")
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(UID)  # given to the modality by the worklist
    placer_order_number: Mapped[str] = mapped_column(String(64), default="")
    filler_order_number: Mapped[str] = mapped_column(String(64), default="")
    requested_procedure_id: Mapped[str] = mapped_column(String(16), default="")
    requested_procedure_description: Mapped[str] = mapped_column(String(64), default="")
    # the procedure as a code (HL7 OBR-4.1 and OBR-4.3): the worklist's
    # Requested Procedure and Scheduled Protocol Code Sequences
    procedure_code_value: Mapped[str] = mapped_column(String(16), default="")
    procedure_coding_scheme: Mapped[str] = mapped_column(String(16), default="")
    scheduled_procedure_step_id: Mapped[str] = mapped_column(String(16), default="")
    scheduled_procedure_step_description: Mapped[str] = mapped_column(String(64), default="")
    modality: Mapped[str] = mapped_column(String(16), default="")
    scheduled_station_ae_title: Mapped[str] = mapped_column(String(16), default="")
    scheduled_station_name: Mapped[str] = mapped_column(String(16), default="")
    scheduled_start: Mapped[datetime | None] = mapped_column(TS, nullable=True)
    scheduled_performing_physician_name: Mapped[str] = mapped_column(String(324), default="")
    referring_physician_name: Mapped[str] = mapped_column(String(324), default="")
    status: Mapped[str] = mapped_column(String(16), default="scheduled")  # scheduled | cancelled | completed
    source: Mapped[str] = mapped_column(String(8), default="hl7")  # hl7 | mwl (external RIS worklist) | cli
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(TS, default=utcnow)

    patient: Mapped[Patient] = relationship()


class Hl7Message(Base):
    """Every HL7 message received or sent, raw, with what became of it."""

    __tablename__ = "hl7_messages"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(TS, default=utcnow, index=True)
    direction: Mapped[str] = mapped_column(String(3))  # in | out
    remote: Mapped[str] = mapped_column(String(255), default="")
    message_type: Mapped[str] = mapped_column(String(32), default="")
    message_control_id: Mapped[str] = mapped_column(String(64), default="")
    sending_application: Mapped[str] = mapped_column(String(255), default="")
    sending_facility: Mapped[str] = mapped_column(String(255), default="")
    ack_code: Mapped[str] = mapped_column(String(2), default="")  # AA | AE | AR
    error: Mapped[str] = mapped_column(Text, default="")
    raw: Mapped[str] = mapped_column(Text, default="")  # the text as decoded (NUL shown as \x00)
    # the bytes received, exactly (the MLLP payload, without its framing);
    # NULL for messages we send and for those logged before migration 0010
    raw_bytes: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class RisDomain(Base):
    """One HIS/RIS domain: the assigning authority of its Patient IDs and
    accession numbers, the sending facility (MSH-4) its messages carry, and
    where its reports go (ORU^R01 over MLLP)."""

    __tablename__ = "ris_domains"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issuer: Mapped[str] = mapped_column(String(64), unique=True)
    sending_facility: Mapped[str] = mapped_column(String(255), default="", index=True)
    report_host: Mapped[str] = mapped_column(String(255), default="")
    report_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    receiving_application: Mapped[str] = mapped_column(String(64), default="")
    description: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class Report(Base):
    """A radiology report on a study."""

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="final")  # final (preliminary later)
    author: Mapped[str] = mapped_column(String(324))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class Hl7Outbox(Base):
    """An HL7 message to deliver, kept until the receiver answers AA. A
    sender claims a row with a lease (``lease_until``), so several gateways
    never send the same row at once; the message control ID stays the same
    on every attempt, so a receiver can tell a repeat."""

    __tablename__ = "hl7_outbox"
    __table_args__ = (Index("ix_hl7_outbox_due", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_control_id: Mapped[str] = mapped_column(String(64), unique=True)
    message_type: Mapped[str] = mapped_column(String(32))
    report_fk: Mapped[int | None] = mapped_column(ForeignKey("reports.id"), nullable=True)
    issuer: Mapped[str] = mapped_column(String(64), default="")  # the domain it goes to
    raw: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="waiting")  # waiting | sent | cancelled
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(TS, default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(TS, nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    destination: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(TS, nullable=True)


class WebcacheEntry(Base):
    """The web-cache copy of one instance (curator): its wavelet file and
    thumbnail, or why it has none. ``state``: queued (work asked for),
    done, skipped (no pixel data), failed (with ``error``), evicted (its
    files dropped by the size limit; rebuilt on demand)."""

    __tablename__ = "webcache_entries"
    __table_args__ = (Index("ix_webcache_entries_state", "state", "queued_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sha256: Mapped[str] = mapped_column(String(64))  # the archived object it was made from
    state: Mapped[str] = mapped_column(String(8), default="queued")
    codec_version: Mapped[int] = mapped_column(Integer, default=0)
    wavelet_key: Mapped[str] = mapped_column(String(255), default="")
    wavelet_size: Mapped[int] = mapped_column(BigInteger, default=0)
    thumbnail_key: Mapped[str] = mapped_column(String(255), default="")
    thumbnail_size: Mapped[int] = mapped_column(BigInteger, default=0)
    levels: Mapped[int] = mapped_column(Integer, default=0)
    level_index: Mapped[str] = mapped_column(Text, default="")  # JSON: per level, per frame, offset and size
    lossy: Mapped[bool] = mapped_column(Boolean, default=False)
    # the PACS_CURATOR_LOSSY_PSNR it was made for (0: lossless asked; -1: unknown, made before 0009);
    # a lossy encoding larger than the lossless one is kept lossless (``lossy`` false) all the same
    lossy_psnr: Mapped[float] = mapped_column(Float, default=0.0)
    metadata_json: Mapped[str] = mapped_column(Text, default="")  # DICOM JSON, bulk data as BulkDataURI
    error: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    queued_at: Mapped[datetime | None] = mapped_column(TS, nullable=True)
    curated_at: Mapped[datetime | None] = mapped_column(TS, nullable=True)
    last_access_at: Mapped[datetime] = mapped_column(TS, default=utcnow, index=True)


class WebcacheSeries(Base):
    """The per-series metadata document in the web cache: the DICOM JSON of
    every instance of a series, gzip-compressed, built once it is stable."""

    __tablename__ = "webcache_series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    state: Mapped[str] = mapped_column(String(8), default="done")  # done | evicted
    key: Mapped[str] = mapped_column(String(255), default="")
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    built_at: Mapped[datetime] = mapped_column(TS, default=utcnow)
    last_access_at: Mapped[datetime] = mapped_column(TS, default=utcnow, index=True)
