"""Principals and their tokens as the service authenticates against them.

Written in the same transaction as the principal's events, so a token works the
moment its ``TokenIssued`` event is recorded and stops the moment its
``TokenRevoked`` event is. Tokens are found by the SHA-256 digest of the token;
the token itself is never stored.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from eventsourcing.persistence import StoredEvent

from domain.principals import Principal

if TYPE_CHECKING:
    from ledger.application import KeyLedger
    from ledger.store import LedgerRecorder, LedgerTransaction, Statement

PRINCIPAL_TOPICS = (
    Principal.Created.TOPIC,
    Principal.RolesChanged.TOPIC,
    Principal.TokenIssued.TOPIC,
    Principal.TokenRevoked.TOPIC,
    Principal.KeyGrantSet.TOPIC,
    Principal.KeyGrantRemoved.TOPIC,
)

DDL = [
    "CREATE TABLE IF NOT EXISTS access_principals ("
    "name TEXT PRIMARY KEY, principal_id TEXT NOT NULL, roles TEXT NOT NULL, "
    "description TEXT NOT NULL, created_at TEXT NOT NULL, "
    "stream_version INTEGER NOT NULL, last_position BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS access_tokens ("
    "token_id TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL UNIQUE, "
    "principal TEXT NOT NULL, label TEXT NOT NULL, issued_at TEXT NOT NULL, "
    "expires_at TEXT NOT NULL, revoked_at TEXT)",
    "CREATE TABLE IF NOT EXISTS access_grants ("
    "principal TEXT NOT NULL, keys TEXT NOT NULL, permissions TEXT NOT NULL, "
    "PRIMARY KEY (principal, keys))",
]


def principal_row(principal: Principal, last_position: int) -> dict[str, Any]:
    return {
        "name": principal.name,
        "principal_id": str(principal.id),
        "roles": ",".join(sorted(role.value for role in principal.roles)),
        "description": principal.description,
        "created_at": principal.created_at,
        "stream_version": principal.version,
        "last_position": last_position,
    }


def token_rows(principal: Principal) -> list[dict[str, Any]]:
    return [
        {
            "token_id": token["token_id"],
            "token_sha256": token["token_sha256"],
            "principal": principal.name,
            "label": token["label"],
            "issued_at": token["issued_at"],
            "expires_at": token["expires_at"],
            "revoked_at": token["revoked_at"],
        }
        for token in principal.tokens.values()
    ]


def grant_rows(principal: Principal) -> list[dict[str, Any]]:
    return [
        {
            "principal": principal.name,
            "keys": keys,
            "permissions": ",".join(sorted(p.value for p in permissions)),
        }
        for keys, permissions in sorted(principal.grants.items())
    ]


def principal_statements(principal: Principal, last_position: int) -> list[Statement]:
    """The writes that make the read side show ``principal`` and its tokens."""
    statements: list[Statement] = [
        ("DELETE FROM access_principals WHERE name = %s", (principal.name,)),
        _insert("access_principals", principal_row(principal, last_position)),
        ("DELETE FROM access_tokens WHERE principal = %s", (principal.name,)),
    ]
    statements += [_insert("access_tokens", row) for row in token_rows(principal)]
    statements.append(
        ("DELETE FROM access_grants WHERE principal = %s", (principal.name,))
    )
    statements += [_insert("access_grants", row) for row in grant_rows(principal)]
    return statements


def _insert(table: str, row: dict[str, Any]) -> Statement:
    columns = ", ".join(row)
    marks = ", ".join(["%s"] * len(row))
    return (f"INSERT INTO {table} ({columns}) VALUES ({marks})", tuple(row.values()))


def expected_tables(
    principals: list[tuple[Principal, int]],
) -> dict[str, list[dict[str, Any]]]:
    """The rows ``snapshot_tables`` should return for the replayed principals."""
    principal_rows = sorted(
        (principal_row(principal, position) for principal, position in principals),
        key=lambda row: row["name"],
    )
    tokens = sorted(
        (row for principal, _ in principals for row in token_rows(principal)),
        key=lambda row: row["token_id"],
    )
    grants = sorted(
        (row for principal, _ in principals for row in grant_rows(principal)),
        key=lambda row: (row["principal"], row["keys"]),
    )
    return {
        "access_principals": principal_rows,
        "access_tokens": tokens,
        "access_grants": grants,
    }


def find_token(ledger: LedgerRecorder, token_sha256: str) -> dict[str, Any] | None:
    """The token with this digest, its principal and the principal's roles."""
    rows = ledger.query(
        "SELECT t.token_id, t.principal, t.expires_at, t.revoked_at, p.roles "
        "FROM access_tokens t JOIN access_principals p ON p.name = t.principal "
        "WHERE t.token_sha256 = %s",
        (token_sha256,),
    )
    return rows[0] if rows else None


def grants_of(ledger: LedgerRecorder, principal: str) -> dict[str, frozenset[str]]:
    """The principal's per-key grants: key pattern -> permission names."""
    rows = ledger.query(
        "SELECT keys, permissions FROM access_grants WHERE principal = %s",
        (principal,),
    )
    return {row["keys"]: frozenset(split_roles(row["permissions"])) for row in rows}


def list_principals(ledger: LedgerRecorder) -> list[dict[str, Any]]:
    """Every principal with its roles, in name order."""
    rows = ledger.query(
        "SELECT name, roles, description, created_at, stream_version, last_position "
        "FROM access_principals ORDER BY name"
    )
    return [{**row, "roles": split_roles(row["roles"])} for row in rows]


def split_roles(text: str) -> list[str]:
    return [role for role in text.split(",") if role]


TABLES = ("access_principals", "access_tokens")
_PRINCIPAL_COLUMNS = (
    "name, principal_id, roles, description, created_at, stream_version, last_position"
)
_TOKEN_COLUMNS = (
    "token_id, token_sha256, principal, label, issued_at, expires_at, revoked_at"
)
_PAGE = 500


def replay_principals(
    app: KeyLedger, reader: LedgerTransaction
) -> list[tuple[Principal, int]]:
    """Every principal as its events make it, with the position of its last event."""
    principals: dict[str, Principal] = {}
    last_position: dict[str, int] = {}
    after = 0
    while True:
        rows = reader.query(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            f"FROM {app.ledger.events_table_name} WHERE notification_id > %s "
            f"AND topic IN ({', '.join(['%s'] * len(PRINCIPAL_TOPICS))}) "
            "ORDER BY notification_id LIMIT %s",
            (after, *PRINCIPAL_TOPICS, _PAGE),
        )
        for row in rows:
            stream = str(row["originator_id"])
            stored = StoredEvent(
                uuid.UUID(stream), row["originator_version"], row["topic"], row["state"]
            )
            event: Any = app.mapper.to_domain_event(stored)
            principals[stream] = event.mutate(principals.get(stream))
            last_position[stream] = row["notification_id"]
        if len(rows) < _PAGE:
            return [(principals[s], last_position[s]) for s in principals]
        after = rows[-1]["notification_id"]


def snapshot_tables(
    recorder: LedgerRecorder | LedgerTransaction,
) -> dict[str, list[dict[str, Any]]]:
    """Every row of the access tables, in a stable order."""
    return {
        "access_principals": recorder.query(
            f"SELECT {_PRINCIPAL_COLUMNS} FROM access_principals ORDER BY name"
        ),
        "access_tokens": recorder.query(
            f"SELECT {_TOKEN_COLUMNS} FROM access_tokens ORDER BY token_id"
        ),
        "access_grants": recorder.query(
            "SELECT principal, keys, permissions FROM access_grants "
            "ORDER BY principal, keys"
        ),
    }


def rebuild_statements(principals: list[tuple[Principal, int]]) -> list[Statement]:
    """Empty the access tables and write them again from replayed principals."""
    statements: list[Statement] = [
        ("DELETE FROM access_grants", ()),
        ("DELETE FROM access_tokens", ()),
        ("DELETE FROM access_principals", ()),
    ]
    for principal, last_position in principals:
        statements += principal_statements(principal, last_position)
    return statements
