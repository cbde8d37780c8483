"""Uses of keys: each encrypt, decrypt, rewrap or data-key request is one record.

A use is its own aggregate with a single event, on a stream of its own, so that
recording uses never moves a key's stream version (and never races a lifecycle
command's ``expected_version``). The record names the key, the operation, the
versions used and the outcome counts; it never holds plaintext, ciphertext, data
keys or material, and contexts only as fingerprints.

The TOPIC strings are a stored format: never rename them.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Literal, get_args

from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic

Operation = Literal["encrypt", "decrypt", "rewrap", "datakey"]
OPERATIONS: tuple[str, ...] = get_args(Operation)

_CONTEXT_FINGERPRINT = b"keyledger/context/v1\n"
MAX_CONTEXT_FINGERPRINTS = 16


def context_fingerprint(context: bytes) -> str:
    """A domain-separated SHA-256 fingerprint of a caller's context.

    Limitation: a context with little entropy (a user id, say) can be found from
    its fingerprint by guessing; callers should not use secrets as context.
    """
    return "sha256:" + hashlib.sha256(_CONTEXT_FINGERPRINT + context).hexdigest()


class KeyUse(Aggregate):
    """One request that used a key, as recorded before it was answered."""

    class KeyUsed(Aggregate.Created):
        """A key was used (or the use was refused) for ``items`` items."""

        TOPIC = "keyledger.usage.KeyUsed"
        key_name: str
        key_id: str
        operation: str
        items: int
        succeeded: int
        outcomes: dict[str, int]
        versions_decrypted: list[int]
        versions_encrypted: list[int]
        contexts: int
        context_fingerprints: list[str]
        compromised_use: bool
        compromised_versions: list[int]

    def __init__(
        self,
        key_name: str,
        key_id: str,
        operation: str,
        items: int,
        succeeded: int,
        outcomes: dict[str, int],
        versions_decrypted: list[int],
        versions_encrypted: list[int],
        contexts: int,
        context_fingerprints: list[str],
        compromised_use: bool,
        compromised_versions: list[int],
    ) -> None:
        self.key_name = key_name
        self.key_id = key_id
        self.operation = operation
        self.items = items
        self.succeeded = succeeded
        self.outcomes = outcomes
        self.versions_decrypted = versions_decrypted
        self.versions_encrypted = versions_encrypted
        self.contexts = contexts
        self.context_fingerprints = context_fingerprints
        self.compromised_use = compromised_use
        self.compromised_versions = compromised_versions

    @classmethod
    def record(
        cls,
        *,
        key_name: str,
        key_id: str,
        operation: str,
        outcomes: dict[str, int],
        versions_decrypted: Iterable[int] = (),
        versions_encrypted: Iterable[int] = (),
        contexts: Iterable[bytes] = (),
        compromised_versions: Iterable[int] = (),
        now: datetime,
    ) -> KeyUse:
        """A new record of one request; ``outcomes`` counts items by code ("ok").

        At most ``MAX_CONTEXT_FINGERPRINTS`` distinct context fingerprints are
        kept (the smallest, so the choice is reproducible); ``contexts`` says how
        many distinct contexts there were.
        """
        if operation not in OPERATIONS:
            raise ValueError(f"Unknown key operation {operation!r}.")
        if any(count < 1 for count in outcomes.values()) or not outcomes:
            raise ValueError("Outcome counts are positive and there is at least one.")
        fingerprints = sorted({context_fingerprint(c) for c in contexts})
        compromised = sorted(set(compromised_versions))
        return cls._create(
            cls.KeyUsed,
            id=uuid.uuid4(),
            key_name=key_name,
            key_id=key_id,
            operation=operation,
            items=sum(outcomes.values()),
            succeeded=outcomes.get("ok", 0),
            outcomes=dict(sorted(outcomes.items())),
            versions_decrypted=sorted(set(versions_decrypted)),
            versions_encrypted=sorted(set(versions_encrypted)),
            contexts=len(fingerprints),
            context_fingerprints=fingerprints[:MAX_CONTEXT_FINGERPRINTS],
            compromised_use=bool(compromised),
            compromised_versions=compromised,
            timestamp=now,
        )


# The library registers an explicit TOPIC only when it first writes the event; a
# process that only reads must know it too.
get_topic(KeyUse.KeyUsed)
