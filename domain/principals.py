"""Principals: who may call the service, with which roles, through which tokens.

A principal is its own stream. Its roles and every token issued to it are
events, so an auditor can list each credential and privilege change (PCI DSS
10.2.1.5) from the ledger alone. A token itself is never recorded: only its
SHA-256 digest, which is enough to recognise it and useless to present.

Event topics are a stored format (``keyledger.access.*``): never rename them.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic

from domain.access import Permission, Role
from domain.clock import format_time
from domain.errors import (
    InvalidArgumentError,
    KeyLifecycleError,
    PrincipalNotFoundError,
)
from domain.keys import validate_text

_NAME = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
_PRINCIPAL_NAMESPACE = uuid.UUID("3b0f7d8e-5a41-4c9a-8e2d-1f6b7c9a0d43")

# Names the service itself acts under; no principal may take them.
RESERVED_NAMES = frozenset({"system", "bootstrap-admin", "local-admin"})


class PrincipalLifecycleError(KeyLifecycleError):
    """A rule about principals or tokens refuses the change (HTTP 409)."""

    code = "PRINCIPAL_CONFLICT"


def validate_principal_name(name: object) -> str:
    """Return ``name`` if it is a valid principal name, else raise (422).

    1 to 64 lower-case ASCII letters, digits, ``.``, ``_``, ``@`` or ``-``,
    starting with a letter or digit: safe in paths, CSV cells and logs.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgumentError(
            "A principal name is 1 to 64 of a-z 0-9 . _ @ -, "
            "starting with a letter or digit.",
            code="INVALID_PRINCIPAL_NAME",
        )
    if name in RESERVED_NAMES:
        raise InvalidArgumentError(
            f"The name {name!r} is reserved for the service itself.",
            code="INVALID_PRINCIPAL_NAME",
        )
    return name


def parse_roles(values: object) -> frozenset[Role]:
    """The roles named in ``values``; an unknown role is 422 ``INVALID_ROLE``."""
    if not isinstance(values, list | tuple | set | frozenset):
        raise InvalidArgumentError("Roles are a list of names.", code="INVALID_ROLE")
    known = {role.value for role in Role}
    unknown = sorted(str(value) for value in values if value not in known)
    if unknown:
        raise InvalidArgumentError(
            f"Unknown role(s): {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}.",
            code="INVALID_ROLE",
            roles=unknown,
        )
    return frozenset(Role(value) for value in values)


# What a per-key grant may allow: the permissions that act on one key.
KEY_SCOPED = frozenset(
    {
        Permission.KEY_READ,
        Permission.KEY_MANAGE,
        Permission.KEY_USE,
        Permission.BACKUP_READ,
        Permission.BACKUP_MANAGE,
        Permission.BACKUP_RESTORE,
    }
)
_PATTERN = re.compile(r"(\*|[A-Za-z0-9][A-Za-z0-9._-]{0,63}\*?)")


def validate_key_pattern(pattern: object) -> str:
    """A key name, a name prefix ending in ``*``, or ``*`` for every key (else 422)."""
    if not isinstance(pattern, str) or not _PATTERN.fullmatch(pattern):
        raise InvalidArgumentError(
            "Grant keys by a name, or a name prefix ending in '*' ('*' for all).",
            code="INVALID_KEY_PATTERN",
        )
    return pattern


def parse_grant_permissions(values: object) -> frozenset[Permission]:
    """The key-scoped permissions named in ``values``; others are 422."""
    allowed = {permission.value for permission in KEY_SCOPED}
    if not isinstance(values, list | tuple) or not values:
        raise InvalidArgumentError(
            "A grant names one or more permissions.", code="INVALID_PERMISSION"
        )
    wrong = sorted(str(value) for value in values if value not in allowed)
    if wrong:
        raise InvalidArgumentError(
            f"Not a per-key permission: {', '.join(wrong)}; "
            f"per-key: {', '.join(sorted(allowed))}.",
            code="INVALID_PERMISSION",
            permissions=wrong,
        )
    return frozenset(Permission(value) for value in values)


def key_matches(pattern: str, key: str) -> bool:
    if pattern.endswith("*"):
        return key.startswith(pattern[:-1])
    return key == pattern


def granted_on_key(
    grants: dict[str, frozenset[Permission]], key: str
) -> frozenset[Permission] | None:
    """What per-key grants allow on ``key``; None when there are no grants at all.

    No grants means the roles apply to every key (but key use: see
    ``permissions_on_key``). Once a principal has a grant, it may act on a key
    only as far as the grants matching that key allow (and never beyond its
    roles: the caller checks both).
    """
    if not grants:
        return None
    allowed: set[Permission] = set()
    for pattern, permissions in grants.items():
        if key_matches(pattern, key):
            allowed |= permissions
    return frozenset(allowed)


def permissions_on_key(
    held: frozenset[Permission], grants: dict[str, frozenset[Permission]], key: str
) -> frozenset[Permission]:
    """What a principal holding ``held`` (through its roles) may do on ``key``.

    Grants narrow the per-key permissions to those the grants matching ``key``
    allow; the others (``admin``, ``ledger:read``, ...) are never narrowed.
    Key use is default-deny: ``key:use`` reaches a key only through a grant
    that covers it, so a ``service`` without grants may use no key at all.
    """
    granted = granted_on_key(grants, key)
    if granted is None:
        return held - {Permission.KEY_USE}
    return (held - KEY_SCOPED) | (held & granted)


def principal_id_for(name: str) -> uuid.UUID:
    """The stream id of the principal called ``name``."""
    return uuid.uuid5(_PRINCIPAL_NAMESPACE, name)


def _role_names(roles: frozenset[Role]) -> list[str]:
    return sorted(role.value for role in roles)


class Principal(Aggregate):
    """A named caller with roles and the tokens it authenticates with."""

    class Created(Aggregate.Created):
        """The principal was created with its first roles."""

        TOPIC = "keyledger.access.PrincipalCreated"
        name: str
        roles: list[str]
        description: str

    class RolesChanged(Aggregate.Event):
        """The principal's roles were replaced."""

        TOPIC = "keyledger.access.RolesChanged"
        roles: list[str]
        previous: list[str]

        def apply(self, aggregate: Principal) -> None:
            aggregate.roles = frozenset(Role(role) for role in self.roles)

    class TokenIssued(Aggregate.Event):
        """A token was issued; only its digest is recorded, never the token."""

        TOPIC = "keyledger.access.TokenIssued"
        token_id: str
        token_sha256: str
        expires_at: str
        label: str

        def apply(self, aggregate: Principal) -> None:
            aggregate.tokens[self.token_id] = {
                "token_id": self.token_id,
                "token_sha256": self.token_sha256,
                "label": self.label,
                "issued_at": format_time(self.timestamp),
                "expires_at": self.expires_at,
                "revoked_at": None,
            }

    class KeyGrantSet(Aggregate.Event):
        """The principal may act on keys matching ``keys`` only with ``permissions``."""

        TOPIC = "keyledger.access.KeyGrantSet"
        keys: str
        permissions: list[str]

        def apply(self, aggregate: Principal) -> None:
            aggregate.grants[self.keys] = frozenset(
                Permission(value) for value in self.permissions
            )

    class KeyGrantRemoved(Aggregate.Event):
        """The grant on ``keys`` was removed."""

        TOPIC = "keyledger.access.KeyGrantRemoved"
        keys: str

        def apply(self, aggregate: Principal) -> None:
            del aggregate.grants[self.keys]

    class TokenRevoked(Aggregate.Event):
        """A token was revoked before it expired."""

        TOPIC = "keyledger.access.TokenRevoked"
        token_id: str
        reason: str

        def apply(self, aggregate: Principal) -> None:
            token = dict(aggregate.tokens[self.token_id])
            token["revoked_at"] = format_time(self.timestamp)
            aggregate.tokens[self.token_id] = token

    def __init__(self, name: str, roles: list[str], description: str) -> None:
        self.name = name
        self.roles = frozenset(Role(role) for role in roles)
        self.description = description
        self.created_at = format_time(self.created_on)
        self.tokens: dict[str, dict[str, Any]] = {}
        self.grants: dict[str, frozenset[Permission]] = {}

    @classmethod
    def create(
        cls, *, name: str, roles: frozenset[Role], description: str, now: datetime
    ) -> Principal:
        validate_principal_name(name)
        validate_text(description, field="description", max_length=1000, required=False)
        if not roles:
            raise InvalidArgumentError(
                "A principal needs at least one role.", code="INVALID_ROLE"
            )
        return cls._create(
            cls.Created,
            id=principal_id_for(name),
            name=name,
            roles=_role_names(roles),
            description=description,
            timestamp=now,
        )

    def change_roles(self, roles: frozenset[Role], *, now: datetime) -> None:
        """Replace the roles; an empty set leaves the principal able to do nothing."""
        if roles == self.roles:
            raise PrincipalLifecycleError(
                f"Principal {self.name!r} already has exactly these roles.",
                code="ROLES_UNCHANGED",
                principal=self.name,
            )
        self.trigger_event(
            self.RolesChanged,
            roles=_role_names(roles),
            previous=_role_names(self.roles),
            timestamp=now,
        )

    def set_grant(
        self, keys: str, permissions: frozenset[Permission], *, now: datetime
    ) -> None:
        """Narrow the principal on keys matching ``keys`` to ``permissions``."""
        validate_key_pattern(keys)
        if self.grants.get(keys) == permissions:
            raise PrincipalLifecycleError(
                f"Principal {self.name!r} already has exactly this grant.",
                code="GRANT_UNCHANGED",
                keys=keys,
            )
        self.trigger_event(
            self.KeyGrantSet,
            keys=keys,
            permissions=sorted(permission.value for permission in permissions),
            timestamp=now,
        )

    def remove_grant(self, keys: str, *, now: datetime) -> None:
        if keys not in self.grants:
            raise PrincipalNotFoundError(
                f"Principal {self.name!r} has no grant on {keys!r}.",
                code="GRANT_NOT_FOUND",
                keys=keys,
            )
        self.trigger_event(self.KeyGrantRemoved, keys=keys, timestamp=now)

    def issue_token(
        self,
        *,
        token_id: str,
        token_sha256: str,
        expires_at: datetime,
        label: str,
        now: datetime,
    ) -> None:
        validate_text(label, field="label", max_length=200, required=False)
        if expires_at <= now:
            raise InvalidArgumentError(
                "A token must expire in the future.", code="INVALID_EXPIRY"
            )
        self.trigger_event(
            self.TokenIssued,
            token_id=token_id,
            token_sha256=token_sha256,
            expires_at=format_time(expires_at),
            label=label,
            timestamp=now,
        )

    def revoke_token(self, token_id: str, *, reason: str, now: datetime) -> None:
        validate_text(reason, field="reason", max_length=1000, required=True)
        token = self.tokens.get(token_id)
        if token is None:
            raise PrincipalNotFoundError(
                f"Principal {self.name!r} has no token {token_id!r}.",
                code="TOKEN_NOT_FOUND",
                token_id=token_id,
            )
        if token["revoked_at"] is not None:
            raise PrincipalLifecycleError(
                f"Token {token_id!r} is already revoked.",
                code="TOKEN_ALREADY_REVOKED",
                token_id=token_id,
            )
        self.trigger_event(
            self.TokenRevoked, token_id=token_id, reason=reason, timestamp=now
        )

    def summary(self) -> dict[str, Any]:
        """The principal as the API shows it: never a token digest."""
        return {
            "name": self.name,
            "roles": _role_names(self.roles),
            "description": self.description,
            "created_at": self.created_at,
            "stream_version": self.version,
            "grants": [
                {"keys": keys, "permissions": sorted(p.value for p in permissions)}
                for keys, permissions in sorted(self.grants.items())
            ],
            "tokens": [
                {name: value for name, value in token.items() if name != "token_sha256"}
                for token in self.tokens.values()
            ],
        }


for _event in (
    Principal.Created,
    Principal.RolesChanged,
    Principal.TokenIssued,
    Principal.TokenRevoked,
    Principal.KeyGrantSet,
    Principal.KeyGrantRemoved,
):
    get_topic(_event)
