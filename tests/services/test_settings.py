"""Settings: the defaults of DESIGN.md, the PACS_ environment, a TOML file
named by PACS_CONFIG_FILE, and a clear message naming a bad variable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.errors import ConfigurationError
from services.settings import load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("PACS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_are_those_of_the_design() -> None:
    s = load_settings()
    assert s.dicom_port == 11112 and s.dicom_ae_title == "PACS"
    assert s.hl7_port == 2575
    assert s.http_port == 8080
    assert s.archive_port == 8081
    assert s.data_path == (Path.cwd() / "pacs-data").resolve()
    assert s.effective_database_url == f"sqlite:///{s.data_path / 'pacs.db'}"
    assert s.effective_broker_url.startswith("filesystem://")
    assert s.broker_folder.is_relative_to(s.data_path)
    assert s.study_stable_seconds == 60
    assert s.duplicate_policy == "keep-first"
    assert s.dicom_require_known_ae is False
    assert s.spool_path.is_relative_to(s.data_path) and s.cache_path.is_relative_to(s.data_path)
    assert s.effective_archive_url == "http://127.0.0.1:8081"


def test_environment_with_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PACS_DICOM_PORT", "4242")
    monkeypatch.setenv("PACS_DICOM_AE_TITLE", "HOSPITAL_PACS")
    monkeypatch.setenv("PACS_STUDY_STABLE_SECONDS", "2.5")
    monkeypatch.setenv("PACS_DUPLICATE_POLICY", "overwrite")
    monkeypatch.setenv("PACS_DICOM_REQUIRE_KNOWN_AE", "true")
    monkeypatch.setenv("PACS_DATA_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("PACS_DATABASE_URL", "postgresql://pacs@db:5432/pacs")
    monkeypatch.setenv("DICOM_PORT", "1")  # without the prefix: not ours
    s = load_settings()
    assert s.dicom_port == 4242
    assert s.dicom_ae_title == "HOSPITAL_PACS"
    assert s.study_stable_seconds == 2.5
    assert s.duplicate_policy == "overwrite"
    assert s.dicom_require_known_ae is True
    assert s.data_path == (tmp_path / "elsewhere").resolve()
    assert s.effective_database_url == "postgresql://pacs@db:5432/pacs"


def test_toml_file_and_environment_over_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "pacs.toml"
    config.write_text('dicom_port = 10400\ndicom_ae_title = "FROM_TOML"\nstudy_stable_seconds = 30\n'
                      'duplicate_policy = "reject"\n')
    monkeypatch.setenv("PACS_CONFIG_FILE", str(config))
    s = load_settings()
    assert (s.dicom_port, s.dicom_ae_title, s.study_stable_seconds, s.duplicate_policy) == (
        10400, "FROM_TOML", 30, "reject")
    monkeypatch.setenv("PACS_DICOM_PORT", "10401")
    s = load_settings()
    assert s.dicom_port == 10401, "the environment wins over the file"
    assert s.dicom_ae_title == "FROM_TOML"


def test_bad_value_in_toml_names_the_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "pacs.toml"
    config.write_text('dicom_port = "eleven"\n')
    monkeypatch.setenv("PACS_CONFIG_FILE", str(config))
    with pytest.raises(ConfigurationError, match="PACS_DICOM_PORT"):
        load_settings()


@pytest.mark.parametrize(("variable", "value"), [
    ("PACS_DICOM_PORT", "abc"),
    ("PACS_DICOM_PORT", "70000"),
    ("PACS_HL7_PORT", "0"),
    ("PACS_DUPLICATE_POLICY", "keep-last"),
    ("PACS_STUDY_STABLE_SECONDS", "-1"),
    ("PACS_DICOM_AE_TITLE", "A_TITLE_FAR_TOO_LONG"),
    ("PACS_DICOM_REQUIRE_KNOWN_AE", "maybe"),
    ("PACS_WEBCACHE_URL", "/var/lib/webcache"),
    ("PACS_WEBCACHE_URL", "s3://"),
    ("PACS_WEBCACHE_URL", "s3:///prefix"),
])
def test_bad_value_fails_naming_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    message = str(info.value)
    assert variable in message and repr(value) in message, message


def test_every_bad_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_DICOM_PORT", "abc")
    monkeypatch.setenv("PACS_HTTP_PORT", "-5")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert "PACS_DICOM_PORT" in str(info.value) and "PACS_HTTP_PORT" in str(info.value)
