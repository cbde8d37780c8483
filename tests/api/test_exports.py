"""GET /v1/exports: the evidence archive over HTTP, its scopes and its refusals."""

from __future__ import annotations

import io
import zipfile
from datetime import timedelta

from fastapi.testclient import TestClient

from domain.clock import AdjustableClock, format_time
from ledger import offline
from ledger.service import KeyService
from tests.api._support import assert_error, create, post_ok
from tests.conftest import T0


def _files(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _workload(client: TestClient, clock: AdjustableClock) -> None:
    create(client, "alpha")
    post_ok(client, "/v1/keys/alpha/rotate")
    clock.advance(timedelta(hours=1))
    create(client, "beta")
    post_ok(client, "/v1/keys/alpha/rotate")


def test_export_of_a_time_range_is_a_verifiable_zip(
    client: TestClient, clock: AdjustableClock
) -> None:
    """A time range comes back as a named zip that verifies offline."""
    _workload(client, clock)

    response = client.get(
        "/v1/exports", params={"from": format_time(T0), "to": "2030-01-01T00:00:00Z"}
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["content-disposition"].startswith(
        'attachment; filename="keyledger-export-'
    )
    report = offline.verify_export(_files(response.content))
    assert report.ok and report.entries == 4


def test_export_of_keys_holds_only_those_keys(
    client: TestClient, clock: AdjustableClock
) -> None:
    """?keys= exports the named keys' whole histories."""
    _workload(client, clock)

    response = client.get("/v1/exports", params={"keys": "beta"})

    assert response.status_code == 200
    report = offline.verify_export(_files(response.content))
    assert report.ok and (report.first_position, report.entries) == (3, 1)


def test_export_of_an_empty_range_is_valid_and_empty(
    client: TestClient, clock: AdjustableClock
) -> None:
    """A range with nothing in it is a valid export of no entries."""
    _workload(client, clock)

    response = client.get("/v1/exports", params={"from": "2030-01-01T00:00:00+02:00"})

    assert response.status_code == 200
    report = offline.verify_export(_files(response.content))
    assert report.ok and report.entries == 0


def test_export_over_a_tampered_ledger_is_refused(
    client: TestClient, clock: AdjustableClock, service: KeyService
) -> None:
    """409 LEDGER_BROKEN names the first broken position and its reason."""
    _workload(client, clock)
    table = service.ledger.events_table_name
    if type(service.ledger).__name__.startswith("Postgres"):
        service.ledger.execute([(f"ALTER TABLE {table} DISABLE TRIGGER USER", ())])
    else:
        service.ledger.execute([(f"DROP TRIGGER {table}_no_update", ())])
    service.ledger.execute(
        [(f"UPDATE {table} SET entry_hash = %s WHERE notification_id = 2", ("0" * 64,))]
    )

    details = assert_error(client.get("/v1/exports"), 409, "LEDGER_BROKEN")

    assert details == {"position": 2, "reason": "HASH_MISMATCH"}


def test_export_over_a_truncated_ledger_is_refused_as_truncated(
    client: TestClient, clock: AdjustableClock, service: KeyService
) -> None:
    """The tail deleted behind a kept checkpoint: every export is 409 TRUNCATED."""
    _workload(client, clock)
    checkpoint = client.post("/v1/ledger/checkpoints")
    assert checkpoint.status_code == 201, checkpoint.text
    assert checkpoint.json()["checkpoint"]["position"] == 4
    table = service.ledger.events_table_name
    if type(service.ledger).__name__.startswith("Postgres"):
        service.ledger.execute([(f"ALTER TABLE {table} DISABLE TRIGGER USER", ())])
    else:
        service.ledger.execute([(f"DROP TRIGGER {table}_no_delete", ())])
    service.ledger.execute([(f"DELETE FROM {table} WHERE notification_id > 2", ())])

    for params in ({}, {"keys": "alpha"}, {"to": format_time(T0 + timedelta(1))}):
        details = assert_error(
            client.get("/v1/exports", params=params), 409, "LEDGER_BROKEN"
        )
        assert details == {"position": 3, "reason": "TRUNCATED"}


def test_export_refuses_bad_scopes(client: TestClient, clock: AdjustableClock) -> None:
    """Bad times, mixed scopes, unknown keys and missing tokens are refused."""
    _workload(client, clock)

    assert_error(
        client.get("/v1/exports", params={"from": "2026-03-01T00:00:00"}),
        422,
        "INVALID_TIME",
    )
    assert_error(
        client.get(
            "/v1/exports", params={"from": "2026-03-02T00:00:00Z", "to": "2026-03-01Z"}
        ),
        422,
        "INVALID_TIME",
    )
    assert_error(
        client.get("/v1/exports", params={"keys": "alpha", "to": "2026-03-02T00:00Z"}),
        422,
        "INVALID_EXPORT_SCOPE",
    )
    assert_error(
        client.get("/v1/exports", params={"keys": "alpha,"}), 422, "INVALID_KEY_NAME"
    )
    assert_error(
        client.get("/v1/exports", params={"keys": "alpha,nope"}), 404, "KEY_NOT_FOUND"
    )
    assert_error(
        client.get("/v1/exports", headers={"Authorization": ""}), 401, "MISSING_TOKEN"
    )
