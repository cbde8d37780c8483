"""Roles and the permissions they carry.

Every route names the one permission it needs; a principal holds roles, and a
role is a fixed set of permissions. Keeping the table here, in one place, lets
the route matrix test and the README be checked against the same source.
"""

from __future__ import annotations

from enum import StrEnum


class Permission(StrEnum):
    """What a route lets its caller do."""

    KEY_READ = "key:read"  # metadata, versions, history of keys
    KEY_MANAGE = "key:manage"  # lifecycle commands
    KEY_USE = "key:use"  # encrypt, decrypt, rewrap, data keys
    BACKUP_READ = "backup:read"  # backup status and records
    BACKUP_MANAGE = "backup:manage"  # take and verify backups, backup policies
    BACKUP_RESTORE = "backup:restore"  # restore a key from a backup
    LEDGER_READ = "ledger:read"  # the feed, head, checkpoints, verification
    LEDGER_CHECKPOINT = "ledger:checkpoint"  # sign a checkpoint on request
    AUDIT_READ = "audit:read"  # audit queries and exports
    REPLICATION = "replication"  # the feed and wrapped material for replicas
    ADMIN = "admin"  # principals, tokens, targets, default policies, scheduler


class Role(StrEnum):
    ADMIN = "admin"
    CUSTODIAN = "custodian"
    BACKUP_OPERATOR = "backup-operator"
    SERVICE = "service"
    AUDITOR = "auditor"
    REPLICA = "replica"


P = Permission

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(
        {P.ADMIN, P.KEY_READ, P.BACKUP_READ, P.LEDGER_READ, P.LEDGER_CHECKPOINT}
    ),
    Role.CUSTODIAN: frozenset(
        {P.KEY_READ, P.KEY_MANAGE, P.BACKUP_READ, P.BACKUP_RESTORE}
    ),
    Role.BACKUP_OPERATOR: frozenset(
        {P.KEY_READ, P.BACKUP_READ, P.BACKUP_MANAGE, P.BACKUP_RESTORE}
    ),
    Role.SERVICE: frozenset({P.KEY_USE}),
    # Reads only: signing a checkpoint is a command (it appends to the ledger).
    Role.AUDITOR: frozenset({P.KEY_READ, P.BACKUP_READ, P.LEDGER_READ, P.AUDIT_READ}),
    Role.REPLICA: frozenset({P.REPLICATION}),
}

ALL_ROLES: frozenset[Role] = frozenset(Role)


def permissions_of(roles: frozenset[Role]) -> frozenset[Permission]:
    """Every permission any of the roles carries."""
    granted: set[Permission] = set()
    for role in roles:
        granted |= ROLE_PERMISSIONS[role]
    return frozenset(granted)
