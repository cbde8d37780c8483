"""Restoring keys from backups: in place, as a new key, and into a fresh ledger.

Every refusal (a rollback, a destroyed version brought back, a tampered,
truncated or foreign bundle) is a 409 that records nothing and changes nothing.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from api.runtime import Runtime
from backup.bundle import build_bundle
from domain.clock import AdjustableClock
from ledger.material import KeyEncryptionKey
from ledger.service import CommandContext, KeyService
from ledger.signing import LedgerSigner, public_key_pem
from tests.api._access import add_principal, bearer
from tests.api._support import (
    assert_error,
    assert_refused,
    create,
    get_key,
    post_ok,
    snapshot,
)
from tests.api.test_backups import configure_targets, take
from tests.api.test_transit import assert_vault_error
from tests.conftest import ADMIN, T0


@pytest.fixture
def folders(client: TestClient, tmp_path: Path) -> dict[str, Path]:
    return configure_targets(client, tmp_path / "targets")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encrypt(client: TestClient, name: str, text: bytes) -> str:
    body = post_ok(client, f"/v1/keys/{name}/encrypt", {"plaintext": b64(text)})
    ciphertext: str = body["ciphertext"]
    return ciphertext


def decrypt(client: TestClient, name: str, ciphertext: str) -> bytes:
    body = post_ok(client, f"/v1/keys/{name}/decrypt", {"ciphertext": ciphertext})
    return base64.b64decode(body["plaintext"])


def bundle_bytes(folders: dict[str, Path], backup: dict[str, Any]) -> bytes:
    return (folders["dc1"] / backup["backup"]["copies"][0]["object"]).read_bytes()


def restore(client: TestClient, name: str, **body: Any) -> Any:
    return client.post(f"/v1/keys/{name}/restore", json=body)


def test_restore_as_a_new_key_decrypts_what_the_source_encrypted(
    client: TestClient, folders: dict[str, Path]
) -> None:
    """A key restored under a new name opens the source's ciphertexts."""
    create(client, "k1")
    post_ok(client, "/v1/keys/k1/rotate")
    ciphertext = encrypt(client, "k1", b"payroll")
    backup = take(client, "k1")

    response = restore(client, "k1", backup_id=backup["backup_id"], into="k1-copy")

    assert response.status_code == 200, response.text
    assert [r["type"] for r in response.json()["receipts"]] == [
        "keyledger.key.Restored"
    ]
    assert response.json()["restored_from"]["backup_id"] == backup["backup_id"]
    copy, source = get_key(client, "k1-copy"), get_key(client, "k1")
    assert [v["fingerprint"] for v in copy["versions"]] == [
        v["fingerprint"] for v in source["versions"]
    ]
    assert copy["primary_version"] == 2
    assert decrypt(client, "k1-copy", ciphertext) == b"payroll"


def test_restore_in_place_puts_back_states_and_material(
    client: TestClient, runtime: Runtime, folders: dict[str, Path]
) -> None:
    """Restoring over the same key returns its states and rewrites its material."""
    create(client, "k1")
    post_ok(client, "/v1/keys/k1/rotate")
    runtime.service.ledger.execute(
        [("DELETE FROM key_material WHERE version = %s", (1,))]
    )
    post_ok(client, "/v1/keys/k1/versions/1/disable")

    second = take(client, "k1")
    post_ok(client, "/v1/keys/k1/versions/1/enable")
    post_ok(client, "/v1/keys/k1/versions/1/disable")
    response = restore(client, "k1", backup_id=second["backup_id"])

    assert response.status_code == 200, response.text
    assert [r["type"] for r in response.json()["receipts"]] == [
        "keyledger.key.RestoredInPlace"
    ]
    assert get_key(client, "k1")["versions"][0]["state"] == "disabled"


def test_restore_over_newer_versions_is_refused_and_changes_nothing(
    client: TestClient, runtime: Runtime, folders: dict[str, Path]
) -> None:
    """A bundle older than the key's newest version is 409, with nothing moved."""
    create(client, "k1")
    backup = take(client, "k1")
    post_ok(client, "/v1/keys/k1/rotate")
    post_ok(client, "/v1/keys/k1/versions/1/disable")
    ciphertext = encrypt(client, "k1", b"newer")
    material = runtime.service.ledger.query(
        "SELECT version, wrapped FROM key_material ORDER BY version"
    )

    details = assert_refused(
        client,
        "k1",
        lambda: restore(client, "k1", backup_id=backup["backup_id"]),
        409,
        "RESTORE_WOULD_ROLL_BACK",
    )

    assert (details["latest"], details["backup_latest"]) == (2, 1)
    after = runtime.service.ledger.query(
        "SELECT version, wrapped FROM key_material ORDER BY version"
    )
    assert after == material
    assert [v["version"] for v in material] == [1, 2]
    assert decrypt(client, "k1", ciphertext) == b"newer"
    assert get_key(client, "k1")["primary_version"] == 2


def test_restore_repairs_lost_material(
    client: TestClient, runtime: Runtime, folders: dict[str, Path]
) -> None:
    """A version whose material row was lost decrypts again after a restore."""
    create(client, "k1")
    ciphertext = encrypt(client, "k1", b"ledger")
    backup = take(client, "k1")
    runtime.service.ledger.execute([("DELETE FROM key_material", ())])

    response = restore(client, "k1", backup_id=backup["backup_id"])

    assert response.status_code == 200, response.text
    assert decrypt(client, "k1", ciphertext) == b"ledger"


def test_restore_never_brings_back_a_destroyed_version(
    client: TestClient, runtime: Runtime, folders: dict[str, Path]
) -> None:
    """A backup made before a destruction cannot revive it, in place or by copy."""
    create(client, "k1")
    post_ok(client, "/v1/keys/k1/rotate")
    backup = take(client, "k1")
    post_ok(client, "/v1/keys/k1/versions/1/schedule-destruction", {"days": 7})
    runtime.clock.advance(timedelta(days=7))  # type: ignore[attr-defined]
    post_ok(client, "/v1/scheduler/run")

    for into in (None, "k1-copy"):
        body = {"backup_id": backup["backup_id"], "into": into}
        assert_refused(
            client,
            into or "k1",
            lambda body=body: restore(client, "k1", **body),  # type: ignore[misc]
            409,
            "RESTORE_WOULD_UNDESTROY",
        )


def _tampered(data: bytes) -> list[bytes]:
    flips = []
    for at in (0, 9, len(data) // 3, len(data) // 2, len(data) - 40, len(data) - 2):
        changed = bytearray(data)
        changed[at] ^= 0x01
        flips.append(bytes(changed))
    return flips


def test_tampered_or_truncated_bundles_are_refused(
    client: TestClient, folders: dict[str, Path]
) -> None:
    """One byte changed anywhere, or a cut bundle, is BUNDLE_INVALID; nothing moves."""
    create(client, "k1")
    data = bundle_bytes(folders, take(client, "k1"))
    broken = [*_tampered(data), data[: len(data) // 2], data[:-1], b""]

    for bad in broken:
        send: Callable[[], Any] = lambda bad=bad: restore(  # noqa: E731
            client, "k1", bundle=b64(bad), into="k1-copy"
        )
        status = 422 if not bad else 409
        code = "INVALID_BUNDLE" if not bad else "BUNDLE_INVALID"
        assert_refused(client, "k1-copy", send, status, code)
    assert restore(client, "k1", bundle=b64(data), into="k1-copy").status_code == 200


def test_a_bundle_from_another_ledger_needs_its_public_key(
    client: TestClient, runtime: Runtime, folders: dict[str, Path], tmp_path: Path
) -> None:
    """A foreign bundle is refused, and restores once the operator gives its key."""
    other_signer = LedgerSigner(Ed25519PrivateKey.generate())
    other = KeyService.open(
        database_url=f"sqlite:///{tmp_path / 'other.sqlite3'}",
        signer=other_signer,
        kek=KeyEncryptionKey(os.urandom(32)),
        clock=AdjustableClock(T0),
    )
    try:
        other.create_key(CommandContext(ADMIN, "req-other"), name="far")
        bundle = build_bundle(
            other, "far", backup_key=runtime.backups.backup_key, backup_id="bkp_x"
        )
    finally:
        other.close()

    assert_refused(
        client,
        "far",
        lambda: restore(client, "far", bundle=b64(bundle.data)),
        409,
        "BUNDLE_FROM_OTHER_LEDGER",
    )
    response = restore(
        client,
        "far",
        bundle=b64(bundle.data),
        source_public_key=public_key_pem(other_signer.public_key),
    )
    assert response.status_code == 200, response.text
    assert get_key(client, "far")["versions"][0]["fingerprint"] == (
        bundle.versions and get_key(client, "far")["versions"][0]["fingerprint"]
    )
    assert encrypt(client, "far", b"back")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        pytest.param({}, 422, "INVALID_RESTORE_SOURCE", id="no source"),
        pytest.param({"bundle": "!!"}, 422, "INVALID_BUNDLE", id="bundle not base64"),
        pytest.param(
            {"backup_id": "bkp_" + "0" * 24}, 404, "BACKUP_NOT_FOUND", id="no backup"
        ),
        pytest.param(
            {"backup_id": "BACKUP", "into": "x"}, 422, "INVALID_FIELD", id="bad id"
        ),
        pytest.param({"into": "k2", "use": 1}, 422, "UNKNOWN_FIELD", id="unknown"),
    ],
)
def test_bad_restore_requests_are_refused(
    client: TestClient,
    folders: dict[str, Path],
    body: dict[str, Any],
    status: int,
    code: str,
) -> None:
    """Malformed restore requests are refused and record nothing."""
    create(client, "k1")
    assert_refused(client, "k1", lambda: restore(client, "k1", **body), status, code)


def test_restore_into_an_existing_other_key_is_refused(
    client: TestClient, folders: dict[str, Path]
) -> None:
    """A bundle never lands on another existing key, nor under a wrong path."""
    create(client, "k1")
    create(client, "k2")
    backup = take(client, "k1")
    assert_refused(
        client,
        "k2",
        lambda: restore(client, "k1", backup_id=backup["backup_id"], into="k2"),
        409,
        "KEY_EXISTS",
    )
    assert_refused(
        client,
        "k2",
        lambda: restore(client, "k2", backup_id=backup["backup_id"]),
        422,
        "BUNDLE_KEY_MISMATCH",
    )
    assert snapshot(client, "k1").view is not None


def _decrypt_refused(client: TestClient, name: str, ciphertext: str, code: str) -> None:
    response = client.post(f"/v1/keys/{name}/decrypt", json={"ciphertext": ciphertext})
    assert_error(response, 409, code)


def test_a_copy_never_brings_back_a_compromised_version(
    client: TestClient, folders: dict[str, Path]
) -> None:
    """A backup from before a compromise is refused into a new name; nothing moves."""
    # given: payments backed up while v1 was enabled, then v1 compromised
    create(client, "payments")
    ciphertext = encrypt(client, "payments", b"card")
    backup = take(client, "payments")
    post_ok(client, "/v1/keys/payments/versions/1/compromise", {"reason": "leaked"})
    source = snapshot(client, "payments")

    # when / then: the copy is refused, by backup id and by bundle
    for body in (
        {"backup_id": backup["backup_id"]},
        {"bundle": b64(bundle_bytes(folders, backup))},
    ):
        details = assert_refused(
            client,
            "payments-http",
            lambda body=body: restore(  # type: ignore[misc]
                client, "payments", into="payments-http", **body
            ),
            409,
            "RESTORE_WOULD_REVIVE_COMPROMISED",
        )
        assert (details["key"], details["version"]) == ("payments", 1)
    assert snapshot(client, "payments") == source
    _decrypt_refused(client, "payments", ciphertext, "VERSION_COMPROMISED")
    assert client.get("/v1/keys/payments-http").status_code == 404


def test_a_copy_never_cancels_a_scheduled_destruction(
    client: TestClient, folders: dict[str, Path]
) -> None:
    """A backup from before a scheduled destruction is refused into a new name."""
    # given: v1 backed up enabled, then disabled and scheduled for destruction
    create(client, "payments")
    ciphertext = encrypt(client, "payments", b"card")
    post_ok(client, "/v1/keys/payments/rotate")
    backup = take(client, "payments")
    post_ok(client, "/v1/keys/payments/versions/1/disable")
    scheduled = take(client, "payments")
    post_ok(client, "/v1/keys/payments/versions/1/schedule-destruction", {"days": 7})
    source = snapshot(client, "payments")

    for older in (backup, scheduled):
        details = assert_refused(
            client,
            "payments-http",
            lambda older=older: restore(  # type: ignore[misc]
                client, "payments", backup_id=older["backup_id"], into="payments-http"
            ),
            409,
            "RESTORE_WOULD_CANCEL_DESTRUCTION",
        )
        assert details["version"] == 1
        assert details["destroy_at"] == source.view["versions"][0]["destroy_at"]
    assert snapshot(client, "payments") == source
    _decrypt_refused(client, "payments", ciphertext, "VERSION_DESTROY_SCHEDULED")


def test_a_backup_taken_after_the_change_copies_the_stricter_states(
    client: TestClient, folders: dict[str, Path]
) -> None:
    """A copy from a backup that holds the compromise and the schedule keeps both."""
    create(client, "payments")
    old = encrypt(client, "payments", b"card")
    post_ok(client, "/v1/keys/payments/rotate")
    post_ok(client, "/v1/keys/payments/rotate")
    post_ok(client, "/v1/keys/payments/versions/1/compromise", {"reason": "leaked"})
    post_ok(client, "/v1/keys/payments/versions/2/disable")
    post_ok(client, "/v1/keys/payments/versions/2/schedule-destruction", {"days": 7})
    backup = take(client, "payments")

    response = restore(
        client, "payments", backup_id=backup["backup_id"], into="payments-http"
    )

    assert response.status_code == 200, response.text
    copy, source = get_key(client, "payments-http"), get_key(client, "payments")
    states = ["state", "compromised", "destroy_at"]
    assert [[v[s] for s in states] for v in copy["versions"]] == [
        [v[s] for s in states] for v in source["versions"]
    ]
    _decrypt_refused(client, "payments-http", old, "VERSION_COMPROMISED")


def test_a_restore_in_place_keeps_compromise_and_scheduled_destruction(
    client: TestClient, folders: dict[str, Path]
) -> None:
    """Over its own key an older backup puts material back, never weaker states."""
    # given: v1 and v2 backed up enabled, then v1 compromised, v2 scheduled
    create(client, "payments")
    first = encrypt(client, "payments", b"v1")
    post_ok(client, "/v1/keys/payments/rotate")
    second = encrypt(client, "payments", b"v2")
    post_ok(client, "/v1/keys/payments/rotate")
    backup = take(client, "payments")
    post_ok(client, "/v1/keys/payments/versions/1/compromise", {"reason": "leaked"})
    post_ok(client, "/v1/keys/payments/versions/2/disable")
    post_ok(client, "/v1/keys/payments/versions/2/schedule-destruction", {"days": 7})
    before = get_key(client, "payments")["versions"]

    response = restore(client, "payments", backup_id=backup["backup_id"])

    assert response.status_code == 200, response.text
    assert get_key(client, "payments")["versions"] == before
    _decrypt_refused(client, "payments", first, "VERSION_COMPROMISED")
    _decrypt_refused(client, "payments", second, "VERSION_DESTROY_SCHEDULED")


def test_a_transit_restore_under_a_new_name_never_revives_a_compromise(
    client: TestClient, vault: TestClient, folders: dict[str, Path]
) -> None:
    """The Vault restore route applies the same rule: 400 with the code, no key."""
    create(client, "payments")
    data = bundle_bytes(folders, take(client, "payments"))
    post_ok(client, "/v1/keys/payments/versions/1/compromise", {"reason": "leaked"})
    head = snapshot(client, "payments-http")

    response = vault.post(
        "/v1/transit/restore/payments-http", json={"backup": b64(data)}
    )

    assert_vault_error(response, 400, "RESTORE_WOULD_REVIVE_COMPROMISED")
    assert snapshot(client, "payments-http") == head


def test_an_approved_restore_is_checked_again_when_it_runs(
    client: TestClient, folders: dict[str, Path]
) -> None:
    """A copy requested before a compromise and approved after it is refused."""
    # given: a backup-operator's copy of payments waits for a custodian
    create(client, "payments")
    backup = take(client, "payments")
    olga = bearer(add_principal(client, "olga", ["backup-operator"])["token"])
    carl = bearer(add_principal(client, "carl", ["custodian"])["token"])
    asked = client.post(
        "/v1/keys/payments/restore",
        json={"backup_id": backup["backup_id"], "into": "payments-http"},
        headers=olga,
    )
    assert asked.status_code == 202, asked.text
    approval = asked.json()["approval"]

    # when: v1 is compromised before the approval
    post_ok(client, "/v1/keys/payments/versions/1/compromise", {"reason": "leaked"})
    copy = snapshot(client, "payments-http")
    approved = client.post(
        f"/v1/approvals/{approval['id']}/approve", json={}, headers=carl
    )

    # then: refused; the request failed and no copy exists
    assert_error(approved, 409, "RESTORE_WOULD_REVIVE_COMPROMISED")
    assert copy.view is None
    assert client.get("/v1/keys/payments-http").status_code == 404
    assert client.get(f"/v1/approvals/{approval['id']}").json()["status"] == "failed"
