"""``keyledger audit`` and the recording of evidence handed out on the command line.

An auditor with shell access to the service's data folder asks the same questions
as ``/v1/audit/...``; each read, export and report is on the ledger before it is
shown or written, attributed to the user who ran it.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from backup.key import BackupKey
from domain.clock import SystemClock, format_time
from ledger.service import CommandContext, KeyService, load_local_secrets
from scripts.cli import main
from tests.conftest import ADMIN

PERIOD = ["--from", "2020-01-01T00:00:00Z", "--to", "2029-01-01T00:00:00Z"]


def _open(store_url: str, data_dir: Path) -> KeyService:
    signer, kek, _ = load_local_secrets(data_dir)
    return KeyService.open(
        database_url=store_url, signer=signer, kek=kek, clock=SystemClock()
    )


@pytest.fixture
def options(store_url: str, tmp_path: Path) -> list[str]:
    """Keys ``a`` (rotated twice) and ``b``; the CLI options naming their ledger."""
    data_dir = tmp_path / "data"
    service = _open(store_url, data_dir)
    BackupKey.load_or_create(data_dir)
    try:
        context = CommandContext(ADMIN, "req-setup")
        service.create_key(context, name="a")
        service.create_key(context, name="b")
        service.rotate(context, "a")
        service.rotate(context, "a")
    finally:
        service.close()
    return ["--data-dir", str(data_dir), "--database-url", store_url]


def _entries(store_url: str, options: list[str]) -> list[dict[str, Any]]:
    service = _open(store_url, Path(options[1]))
    try:
        return service.events(limit=1000)
    finally:
        service.close()


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_audit_events_filters_and_records_the_read(
    options: list[str], store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["audit", "events", "--key", "a", "--type", "keyledger.key.Rotated", *options]
    )

    assert code == 0
    found = _lines(capsys.readouterr().out)
    assert [(e["type"], e["stream_version"]) for e in found] == [
        ("keyledger.key.Rotated", 2),
        ("keyledger.key.Rotated", 3),
    ]
    read = _entries(store_url, options)[-1]
    assert read["type"] == "keyledger.access.AuditTrailRead"
    assert read["payload"]["route"] == "cli: keyledger audit events"
    assert read["payload"]["key"] == "a"
    assert ["types", "keyledger.key.Rotated"] in read["payload"]["query"]
    assert read["actor"]["principal"].startswith("cli:")


def test_audit_activity_pages_with_after_and_limit(
    options: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "activity", ADMIN.principal, *options]) == 0
    everything = _lines(capsys.readouterr().out)
    assert [e["position"] for e in everything] == [1, 2, 3, 4]

    first = everything[0]["position"]
    paged = ["--after", str(first), "--limit", "2"]
    assert main(["audit", "activity", ADMIN.principal, *paged, *options]) == 0
    assert [e["position"] for e in _lines(capsys.readouterr().out)] == [2, 3]


def test_audit_key_state_at_a_position_and_a_time(
    options: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "key-state", "a", "--position", "3", *options]) == 0
    at_three = json.loads(capsys.readouterr().out)
    assert at_three["primary_version"] == 2
    assert at_three["as_of_position"] == 3

    later = format_time(SystemClock().now() + timedelta(seconds=1))
    assert main(["audit", "key-state", "a", "--at", later, *options]) == 0
    assert json.loads(capsys.readouterr().out)["primary_version"] == 3


def test_audit_verify_range_exits_by_the_result(
    options: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "verify-range", "2", "4", *options]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["ok"] is True
    assert found["range"] == {"from_position": 2, "to_position": 4}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["events", "--outcome", "maybe"], "INVALID_OUTCOME", id="bad outcome"
        ),
        pytest.param(["events", "--from", "yesterday"], "INVALID_TIME", id="bad time"),
        pytest.param(
            ["key-state", "nope", "--position", "2"], "KEY_NOT_FOUND", id="no key"
        ),
        pytest.param(
            ["key-state", "a", "--position", "0"], "--position is 1", id="position 0"
        ),
        pytest.param(["verify-range", "5", "2"], "INVALID_RANGE", id="backwards range"),
        pytest.param(["activity", "x", "--limit", "0"], "--limit 1", id="limit 0"),
    ],
)
def test_bad_audit_queries_exit_2_and_record_nothing_shown(
    options: list[str],
    store_url: str,
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = _entries(store_url, options)

    code = main(["audit", *argv, *options])

    assert code == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""
    after = _entries(store_url, options)
    # a refused query records nothing; asking for a key that does not exist
    # is a read of the trail like any other, recorded as asked, showing nothing
    assert len(after) - len(before) == (1 if message == "KEY_NOT_FOUND" else 0)
    assert all(
        e["type"] == "keyledger.access.AuditTrailRead" for e in after[len(before) :]
    )


def test_cli_export_and_report_are_recorded_before_they_are_written(
    options: list[str], store_url: str, tmp_path: Path
) -> None:
    archive, page = tmp_path / "e.zip", tmp_path / "r.html"

    assert main(["export", *PERIOD, "--out", str(archive), *options]) == 0
    assert main(["report", *PERIOD, "--out", str(page), *options]) == 0

    exported = [
        e
        for e in _entries(store_url, options)
        if e["type"] == "keyledger.access.EvidenceExported"
    ]
    assert [e["payload"]["scope"]["cli"] for e in exported] == [
        "keyledger export",
        "keyledger report",
    ]
    import hashlib

    assert (
        exported[0]["payload"]["sha256"]
        == hashlib.sha256(archive.read_bytes()).hexdigest()
    )
    assert (
        exported[1]["payload"]["sha256"]
        == hashlib.sha256(page.read_bytes()).hexdigest()
    )
    assert exported[0]["payload"]["entries"] == 4


def test_cli_export_over_an_existing_file_records_nothing(
    options: list[str], store_url: str, tmp_path: Path
) -> None:
    kept = tmp_path / "kept.zip"
    kept.write_bytes(b"mine")
    before = _entries(store_url, options)

    assert main(["export", *PERIOD, "--out", str(kept), *options]) == 2

    assert kept.read_bytes() == b"mine"
    assert _entries(store_url, options) == before
