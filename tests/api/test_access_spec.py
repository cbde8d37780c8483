"""The roles as issue 5 states them, checked against the role table and over HTTP.

``test_access_matrix`` derives what each route expects from ``ROLE_PERMISSIONS``
itself, so a wrong role table would pass it. This file writes the rules down
independently, in permission names as the API shows them, and exercises a few
representative routes per role with real tokens.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.runtime import Runtime
from domain.access import ROLE_PERMISSIONS, Role
from tests.api._access import add_principal, bearer
from tests.api.test_backups import configure_targets, take

# What no role but the one named may hold, and what each role must hold.
COMMANDS = {"key:manage", "key:use", "backup:restore", "backup:manage", "admin"}

# role: (must hold, must never hold); "*" in never means "anything else".
RULES: dict[str, tuple[set[str], set[str]]] = {
    # Reads every key's metadata, history, backup status, exports and verification;
    # never material (key:use, replication), never commands: signing a checkpoint
    # on request is one (it appends to the ledger); an auditor keeps the head's
    # latest checkpoint instead (GET /v1/ledger/head).
    "auditor": (
        {"key:read", "backup:read", "audit:read", "ledger:read"},
        COMMANDS | {"replication", "ledger:checkpoint"},
    ),
    # Crypto use of the keys it is granted; nothing else.
    "service": ({"key:use"}, {"*"}),
    # The feed and material replication only.
    "replica": ({"replication"}, {"*"}),
    # Backups and their verification; restores, but only through an approval
    # (checked over HTTP below); no key lifecycle, use or administration.
    "backup-operator": (
        {"backup:manage", "backup:read"},
        {"key:manage", "key:use", "admin", "replication", "audit:read"},
    ),
    # Key lifecycle; never key use, administration or replication.
    "custodian": ({"key:manage", "key:read"}, {"key:use", "admin", "replication"}),
    # Principals, tokens, roles, targets and default policies; no key lifecycle,
    # key use, restores or replication.
    "admin": (
        {"admin"},
        {"key:manage", "key:use", "backup:restore", "backup:manage", "replication"},
    ),
}


def _held(role: str) -> set[str]:
    return {permission.value for permission in ROLE_PERMISSIONS[Role(role)]}


@pytest.mark.parametrize("role", sorted(RULES))
def test_the_role_table_follows_the_issues_rules(role: str) -> None:
    """Each role holds what the issue gives it and nothing the issue withholds."""
    must, never = RULES[role]
    held = _held(role)
    assert must <= held, f"{role} lacks {sorted(must - held)}"
    if never == {"*"}:
        assert held == must, f"{role} holds more: {sorted(held - must)}"
    else:
        assert not held & never, f"{role} holds {sorted(held & never)}"


def test_every_role_of_the_issue_is_in_the_table() -> None:
    """No role is missing or added beside the six the issue names."""
    assert {role.value for role in ROLE_PERMISSIONS} == set(RULES)


@pytest.fixture
def setup(client: TestClient, runtime: Runtime, tmp_path: Path) -> dict[str, Any]:
    """Key k with a backup, and a token per role (the service granted k)."""
    configure_targets(client, tmp_path / "targets")
    assert client.post("/v1/keys", json={"name": "k"}).status_code == 201
    backup_id = take(client, "k")["backup_id"]
    tokens = {
        role: bearer(add_principal(client, f"p-{role}", [role])["token"])
        for role in RULES
    }
    granted = client.post(
        "/v1/principals/p-service/grants",
        json={"keys": "k", "permissions": ["key:use"]},
    )
    assert granted.status_code == 200, granted.text
    return {"tokens": tokens, "backup_id": backup_id}


PLAINTEXT = {"plaintext": base64.b64encode(b"x").decode()}
ENCRYPT = ("POST", "/v1/keys/k/encrypt", PLAINTEXT)
ROTATE = ("POST", "/v1/keys/k/rotate", {})
ADD_PRINCIPAL = ("POST", "/v1/principals", {"name": "new", "roles": ["auditor"]})
TAKE_BACKUP = ("POST", "/v1/keys/k/backups", {})
READ_KEY = ("GET", "/v1/keys/k", None)
FEED = ("GET", "/v1/events", None)
MATERIAL = ("GET", "/v1/replication/material?versions=x:1", None)
TARGET = (
    "PUT",
    "/v1/backup-targets/extra",
    {"kind": "dir", "location": "x", "options": {"path": "/nonexistent"}},
)

# role: [(method, path, body), allowed]; allowed means neither 401 nor 403.
ROUTES: dict[str, list[tuple[tuple[str, str, Any], bool]]] = {
    "auditor": [
        (READ_KEY, True),
        (("GET", "/v1/keys/k/history", None), True),
        (("GET", "/v1/backup-status", None), True),
        (("GET", "/v1/audit/events", None), True),
        (("GET", "/v1/ledger/verify", None), True),
        (("GET", "/v1/exports?keys=k", None), True),
        (ENCRYPT, False),
        (ROTATE, False),
        (TAKE_BACKUP, False),
        (ADD_PRINCIPAL, False),
        (MATERIAL, False),
        (("POST", "/v1/ledger/checkpoints", {}), False),
    ],
    "service": [
        (ENCRYPT, True),
        (READ_KEY, False),
        (ROTATE, False),
        (FEED, False),
        (TAKE_BACKUP, False),
    ],
    "replica": [
        (FEED, True),
        (MATERIAL, True),
        (READ_KEY, False),
        (ENCRYPT, False),
        (ROTATE, False),
    ],
    "backup-operator": [
        (TAKE_BACKUP, True),
        (("GET", "/v1/backup-status", None), True),
        (ROTATE, False),
        (ENCRYPT, False),
        (ADD_PRINCIPAL, False),
        (("GET", "/v1/audit/events", None), False),
    ],
    "custodian": [
        (ROTATE, True),
        (READ_KEY, True),
        (ENCRYPT, False),
        (ADD_PRINCIPAL, False),
        (TARGET, False),
        (MATERIAL, False),
    ],
    "admin": [
        (ADD_PRINCIPAL, True),
        (TARGET, True),
        (("POST", "/v1/backup-policy", {"copies": 1, "locations": 1}), True),
        (ROTATE, False),
        (ENCRYPT, False),
        (MATERIAL, False),
    ],
}


@pytest.mark.parametrize("role", sorted(ROUTES))
def test_representative_routes_answer_each_role_as_the_issue_says(
    client: TestClient,
    setup: dict[str, Any],
    role: str,
    subtests: pytest.Subtests,
) -> None:
    """Allowed routes are neither 401 nor 403; withheld ones are 403 FORBIDDEN."""
    headers = setup["tokens"][role]
    for (method, path, body), allowed in ROUTES[role]:
        with subtests.test(msg=f"{method} {path}"):
            response = client.request(method, path, json=body, headers=headers)
            if allowed:
                assert response.status_code not in (401, 403), response.text
                assert response.status_code < 500, response.text
            else:
                assert response.status_code == 403, response.text
                assert response.json()["error"]["code"] == "FORBIDDEN"


def test_a_backup_operator_restores_only_through_a_custodians_approval(
    client: TestClient, setup: dict[str, Any]
) -> None:
    """A backup-operator's restore is 202 pending; a custodian's approval runs it."""
    tokens = setup["tokens"]
    asked = client.post(
        "/v1/keys/k/restore",
        json={"backup_id": setup["backup_id"], "into": "k-copy"},
        headers=tokens["backup-operator"],
    )
    assert asked.status_code == 202, asked.text
    assert client.get("/v1/keys/k-copy").status_code == 404
    approval = asked.json()["approval"]["id"]

    approved = client.post(
        f"/v1/approvals/{approval}/approve", headers=tokens["custodian"]
    )

    assert approved.status_code == 200, approved.text
    assert client.get("/v1/keys/k-copy").status_code == 200
