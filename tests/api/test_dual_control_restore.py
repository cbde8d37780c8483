"""A restore goes through dual control: a backup-operator's always, anyone's by policy.

A backup-operator's restore waits for a custodian's approval whatever the key's
policy says; a custodian's waits when the key's policy (or, into a new name,
the source key's) names ``restore``. Nothing is restored until the approval.
"""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.runtime import Runtime
from domain.clock import AdjustableClock
from tests.api._access import add_principal, bearer
from tests.api._support import assert_error, create, snapshot
from tests.api.test_backups import configure_targets, take


@pytest.fixture
def backup_id(client: TestClient, tmp_path: Path) -> str:
    """Key k, backed up once."""
    configure_targets(client, tmp_path / "targets")
    create(client, "k")
    found: str = take(client, "k")["backup_id"]
    return found


@pytest.fixture
def people(client: TestClient) -> dict[str, dict[str, str]]:
    """A backup-operator, two custodians and an admin, each with a token."""
    roles = {
        "olga": ["backup-operator"],
        "carl": ["custodian"],
        "cleo": ["custodian"],
        "adam": ["admin"],
    }
    return {
        name: bearer(add_principal(client, name, granted)["token"])
        for name, granted in roles.items()
    }


def _state(client: TestClient, name: str = "k") -> tuple[Any, Any]:
    """What a restore changes: the key's view and its history's length."""
    found = snapshot(client, name)
    return found.view, found.history_count


def _bundle(runtime: Runtime, backup_id: str) -> str:
    """The backup's bundle, base64 as a restore takes an upload."""
    return base64.b64encode(runtime.backups.read_bundle(backup_id)).decode("ascii")


def _ask(
    client: TestClient,
    who: dict[str, str],
    path: str = "/v1/keys/k/restore",
    **body: Any,
) -> dict[str, Any]:
    response = client.post(path, json=body, headers=who)
    assert response.status_code == 202, response.text
    approval: dict[str, Any] = response.json()["approval"]
    assert approval["status"] == "pending"
    assert approval["action"] == "restore"
    return approval


def _approve(
    client: TestClient, approval: dict[str, Any], who: dict[str, str], **body: Any
) -> Any:
    return client.post(
        f"/v1/approvals/{approval['id']}/approve", json=body, headers=who
    )


def test_a_backup_operators_restore_waits_for_a_custodian(
    client: TestClient,
    runtime: Runtime,
    backup_id: str,
    people: dict[str, dict[str, str]],
) -> None:
    """Without any key policy, the request restores nothing; the approval restores."""
    before = _state(client)
    approval = _ask(client, people["olga"], backup_id=backup_id)
    assert _state(client) == before
    assert approval["arguments"]["backup_id"] == backup_id
    assert set(approval["arguments"]) == {
        "backup_id",
        "digest",
        "key",
        "into",
        "source_public_key",
        "expected_version",
    }

    approved = _approve(client, approval, people["carl"])

    assert approved.status_code == 200, approved.text
    assert approved.json()["approval"]["status"] == "approved"
    assert approved.json()["result"]["restored_from"]["backup_id"] == backup_id
    history = client.get("/v1/keys/k/history").json()["events"]
    assert history[-1]["actor"]["principal"] == "carl"
    assert history[-1]["type"] == "keyledger.key.RestoredInPlace"


def test_an_approved_restore_runs_exactly_once(
    client: TestClient,
    runtime: Runtime,
    backup_id: str,
    people: dict[str, dict[str, str]],
) -> None:
    """A second approval of the same request is 409 and restores nothing more."""
    approval = _ask(client, people["olga"], backup_id=backup_id, into="k-copy")
    assert _approve(client, approval, people["carl"]).status_code == 200
    restored = _state(client, "k-copy")
    assert restored[0] is not None

    again = _approve(client, approval, people["cleo"])

    assert_error(again, 409, "APPROVAL_NOT_PENDING")
    assert _state(client, "k-copy") == restored
    restores = [
        e
        for e in runtime.service.events(limit=10_000)
        if e["type"] == "keyledger.key.Restored"
    ]
    assert len(restores) == 1


def _refused_approval(
    client: TestClient,
    approval: dict[str, Any],
    who: dict[str, str],
    status: int,
    code: str,
) -> dict[str, Any]:
    """An approval refused with ``code``: the key unchanged, the request pending."""
    before = _state(client)
    details = assert_error(_approve(client, approval, who), status, code)
    assert _state(client) == before
    assert client.get(f"/v1/approvals/{approval['id']}").json()["status"] == "pending"
    return details


@pytest.mark.parametrize(
    ("approver", "grant", "code"),
    [
        pytest.param("otto", None, "FORBIDDEN", id="error: another backup-operator"),
        pytest.param("adam", None, "FORBIDDEN", id="error: an admin"),
        pytest.param(
            "carl", ["key:manage"], "KEY_NOT_GRANTED", id="error: no restore grant"
        ),
    ],
)
def test_only_a_custodian_with_restore_on_the_key_approves_a_restore(
    client: TestClient,
    backup_id: str,
    people: dict[str, dict[str, str]],
    approver: str,
    grant: list[str] | None,
    code: str,
) -> None:
    """Without key:manage and backup:restore on the key, an approver is refused."""
    people["otto"] = bearer(add_principal(client, "otto", ["backup-operator"])["token"])
    if grant is not None:
        granted = client.post(
            f"/v1/principals/{approver}/grants",
            json={"keys": "k", "permissions": grant},
        )
        assert granted.status_code == 200, granted.text
    approval = _ask(client, people["olga"], backup_id=backup_id)

    details = _refused_approval(client, approval, people[approver], 403, code)

    if grant is not None:
        assert details == {"permission": "backup:restore", "key": "k"}


def test_a_requester_cannot_approve_its_own_restore(
    client: TestClient, backup_id: str, people: dict[str, dict[str, str]]
) -> None:
    """Under the key's policy a custodian's restore waits, and not for itself."""
    policy = client.post(
        "/v1/keys/k/dual-control", json={"actions": ["restore"], "ttl_seconds": 600}
    )
    assert policy.status_code == 200, policy.text
    approval = _ask(client, people["carl"], backup_id=backup_id)

    _refused_approval(client, approval, people["carl"], 409, "SELF_APPROVAL")

    assert _approve(client, approval, people["cleo"]).status_code == 200


def test_a_custodians_restore_runs_at_once_without_a_policy(
    client: TestClient, backup_id: str, people: dict[str, dict[str, str]]
) -> None:
    """No policy names restore: a custodian restores directly (200)."""
    response = client.post(
        "/v1/keys/k/restore",
        json={"backup_id": backup_id, "into": "k-copy"},
        headers=people["carl"],
    )
    assert response.status_code == 200, response.text


def test_a_restore_into_a_new_name_follows_the_source_keys_policy(
    client: TestClient, backup_id: str, people: dict[str, dict[str, str]]
) -> None:
    """The copy has no policy yet; the source's, naming restore, makes it wait."""
    policy = client.post(
        "/v1/keys/k/dual-control", json={"actions": ["restore"], "ttl_seconds": 600}
    )
    assert policy.status_code == 200, policy.text

    approval = _ask(client, people["carl"], backup_id=backup_id, into="k-copy")

    assert approval["key"] == "k-copy"
    assert client.get("/v1/keys/k-copy").status_code == 404


def test_an_expired_restore_request_never_runs(
    client: TestClient,
    runtime: Runtime,
    clock: AdjustableClock,
    backup_id: str,
    people: dict[str, dict[str, str]],
) -> None:
    """Without a key policy a restore waits a day at most; then it is Expired."""
    approval = _ask(client, people["olga"], backup_id=backup_id)
    before = _state(client)
    clock.advance(timedelta(days=1))

    late = _approve(client, approval, people["carl"])

    assert_error(late, 409, "APPROVAL_EXPIRED")
    assert _state(client) == before
    types = [e["type"] for e in runtime.service.events(limit=10_000)]
    assert types[-1] == "keyledger.dual_control.Expired"


def test_an_uploaded_bundle_is_approved_only_with_the_same_bundle(
    client: TestClient,
    runtime: Runtime,
    backup_id: str,
    people: dict[str, dict[str, str]],
) -> None:
    """The request names the bundle by digest: another bundle is 409 and waits."""
    bundle = _bundle(runtime, backup_id)
    second_id = take(client, "k")["backup_id"]
    other = _bundle(runtime, second_id)
    approval = _ask(client, people["olga"], bundle=bundle, into="k-copy")
    assert approval["arguments"]["backup_id"] == backup_id != second_id

    wrong = _approve(client, approval, people["carl"], bundle=other)

    assert_error(wrong, 409, "RESTORE_BUNDLE_MISMATCH")
    assert client.get("/v1/keys/k-copy").status_code == 404
    assert client.get(f"/v1/approvals/{approval['id']}").json()["status"] == "pending"
    right = _approve(client, approval, people["carl"], bundle=bundle)
    assert right.status_code == 200, right.text
    assert client.get("/v1/keys/k-copy").status_code == 200


def test_a_vault_restore_by_a_backup_operator_waits_too(
    client: TestClient,
    runtime: Runtime,
    backup_id: str,
    people: dict[str, dict[str, str]],
) -> None:
    """The transit restore answers 202 with the approval in data; nothing restored."""
    bundle = _bundle(runtime, backup_id)
    olga = people["olga"]  # transit takes a Bearer token as well as X-Vault-Token

    response = client.post(
        "/v1/transit/restore/k-copy", json={"backup": bundle}, headers=olga
    )

    assert response.status_code == 202, response.text
    approval = response.json()["data"]["approval"]
    assert approval["action"] == "restore" and approval["key"] == "k-copy"
    assert client.get("/v1/keys/k-copy").status_code == 404
    approved = _approve(client, approval, people["carl"])
    assert approved.status_code == 200, approved.text
    assert client.get("/v1/keys/k-copy").status_code == 200


def test_an_approval_without_a_copy_of_the_bundle_needs_it_sent(
    client: TestClient,
    runtime: Runtime,
    tmp_path: Path,
    backup_id: str,
    people: dict[str, dict[str, str]],
) -> None:
    """With every stored copy gone, approving needs the bundle sent, then restores."""
    bundle = _bundle(runtime, backup_id)
    approval = _ask(client, people["olga"], bundle=bundle, into="k-copy")
    for path in (tmp_path / "targets").rglob("*"):
        if path.is_file():
            path.unlink()

    _refused_approval(client, approval, people["carl"], 409, "RESTORE_BUNDLE_NEEDED")

    sent = _approve(client, approval, people["carl"], bundle=bundle)
    assert sent.status_code == 200, sent.text


def test_a_bundle_that_does_not_verify_records_no_request(
    client: TestClient,
    runtime: Runtime,
    backup_id: str,
    people: dict[str, dict[str, str]],
) -> None:
    """A tampered bundle is refused before a request is recorded: the head stays."""
    data = bytearray(runtime.backups.read_bundle(backup_id))
    data[len(data) // 2] ^= 1
    head = runtime.service.head_position()

    response = client.post(
        "/v1/keys/k/restore",
        json={"bundle": base64.b64encode(bytes(data)).decode("ascii")},
        headers=people["olga"],
    )

    assert_error(response, 409, "BUNDLE_INVALID")
    assert runtime.service.head_position() == head
