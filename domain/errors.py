"""Domain errors: one base class, each refusal with a stable machine-readable code.

Errors carry only non-secret identifiers (key names, version numbers, states) in
``details``; the API turns them into the error envelope in exactly one place.
"""

from __future__ import annotations

from typing import Any


class KeyledgerError(Exception):
    """Base of every refusal the product reports to a caller."""

    code = "KEYLEDGER_ERROR"

    def __init__(self, message: str, *, code: str | None = None, **details: Any):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details


class InvalidArgumentError(KeyledgerError):
    """A well-formed request whose values break a rule (HTTP 422)."""

    code = "INVALID_ARGUMENT"


class KeyNotFoundError(KeyledgerError):
    """No key has that name (HTTP 404)."""

    code = "KEY_NOT_FOUND"


class VersionNotFoundError(KeyledgerError):
    """The key has no such version (HTTP 404)."""

    code = "VERSION_NOT_FOUND"


class KeyLifecycleError(KeyledgerError):
    """A lifecycle rule refuses the action; nothing is recorded (HTTP 409)."""

    code = "INVALID_TRANSITION"


class KeyExistsError(KeyLifecycleError):
    """A key with that name already exists (HTTP 409)."""

    code = "KEY_EXISTS"


class ExpectedVersionMismatchError(KeyLifecycleError):
    """The caller's ``expected_version`` is not the key's stream version (HTTP 409)."""

    code = "EXPECTED_VERSION_MISMATCH"


class ConcurrentModificationError(KeyLifecycleError):
    """Another command on the same key was recorded first (HTTP 409)."""

    code = "CONCURRENT_MODIFICATION"


class BackupNotFoundError(KeyledgerError):
    """No backup has that id (HTTP 404)."""

    code = "BACKUP_NOT_FOUND"


class BackupRefusedError(KeyLifecycleError):
    """A backup, verification, restore or prune is refused; nothing is recorded (409).

    A bundle that fails verification is ``BUNDLE_INVALID`` with a fixed message
    (no oracle on what failed); the other codes name the rule.
    """

    code = "BACKUP_REFUSED"


class MaterialUnreadableError(KeyledgerError):
    """A version's kept material could not be unwrapped: a server fault (HTTP 500).

    The wrong key-encryption key, or a damaged material row. It never says which,
    and it carries no bytes.
    """

    code = "MATERIAL_UNREADABLE"


class LedgerUnavailableError(KeyledgerError):
    """The ledger could not durably record the event; the action did not happen."""

    code = "LEDGER_UNAVAILABLE"


class StoreIsReplicaError(KeyledgerError):
    """This store follows a primary as a replica and was never promoted.

    Serving it as a primary would append to a copy of someone else's ledger and
    fork it. ``details`` name the source and the replica's state.
    """

    code = "STORE_IS_A_REPLICA"


class UnknownEventTypeError(KeyledgerError):
    """The ledger holds an event type this release cannot read (HTTP 500).

    Written by a newer release, most likely. Nothing that would read past it
    goes on: not a start, not a rebuild, not a command on its stream.
    ``details`` name the type and, where known, its first position.
    """

    code = "UNKNOWN_EVENT_TYPE"


class LedgerBrokenError(KeyledgerError):
    """Verification found the ledger broken, so no evidence is exported (HTTP 409).

    ``details`` carry the first broken position and its reason code.
    """

    code = "LEDGER_BROKEN"


class PrincipalNotFoundError(KeyledgerError):
    """No principal (or token) has that name or id (HTTP 404)."""

    code = "PRINCIPAL_NOT_FOUND"


class AuthenticationError(KeyledgerError):
    """A token that was once valid no longer is: expired or revoked (HTTP 401).

    Unknown tokens are not this error: they get the generic ``INVALID_TOKEN``, so
    a caller cannot tell a guessed token from a mistyped one.
    """

    code = "INVALID_TOKEN"


class PrimaryFencedError(KeyLifecycleError):
    """A newer epoch names another signing key: this instance is fenced (HTTP 409).

    An old primary that has seen the promotion of another ledger must not write
    again, or history would fork; it may only follow the new primary. ``details``
    name the epoch, the key id that signs it and the epoch's position.
    """

    code = "PRIMARY_FENCED"
