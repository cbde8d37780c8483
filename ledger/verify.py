"""Ledger verification: re-hash every stored entry, check every link and signature.

Verification never trusts a stored hash: it hashes the stored entry bytes and
compares. It reports the first broken position and a reason code, because the
auditor owns that question. Reason codes are stable:

``GAP``                 a position is missing
``POSITION_MISMATCH``   the entry names another position than the row it is in
``MALFORMED_ENTRY``     the stored bytes are not a ledger entry
``COLUMN_MISMATCH``     the row's stream, version or type differ from the entry's
``BROKEN_LINK``         the entry's ``prev_hash`` is not the previous entry's hash
``HASH_MISMATCH``       the stored hash is not the hash of the stored bytes
``UNKNOWN_SIGNING_KEY`` the entry names a key id the verifier does not trust (trusted
                        keys are the ones given, and keys announced on the ledger
                        by a trusted key, from the entry after their announcement)
``KEY_RETIRED``         the entry is signed by a key retired by a promotion
``BAD_SIGNATURE``       the signature does not verify
``TIME_REGRESSION``     the recorded time is earlier than the previous entry's
``CHECKPOINT_INVALID``  a checkpoint's signature does not verify
``CHECKPOINT_MISMATCH`` a checkpoint names another hash than the entry it covers
``TRUNCATED``           the ledger's head is behind a signed checkpoint
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger.offline import Failure, StoredEntry, VerificationReport, verify_chain
from ledger.store import LedgerRecorder, checkpoint_table

__all__ = ["Failure", "VerificationReport", "verify_ledger", "verify_rows"]

PAGE = 2000


def verify_ledger(
    recorder: LedgerRecorder, public_keys: Mapping[str, Ed25519PublicKey]
) -> VerificationReport:
    """Verify the whole ledger behind ``recorder`` against trusted ``public_keys``."""
    checkpoints = recorder.query(
        "SELECT position, hash, recorded_at, kid, signature FROM "
        f"{checkpoint_table(recorder.events_table_name)} ORDER BY position"
    )
    return verify_rows(_pages(recorder), checkpoints, public_keys)


def _pages(recorder: LedgerRecorder) -> Iterator[dict[str, Any]]:
    after = 0
    while True:
        rows = recorder.query(
            "SELECT notification_id, originator_id, originator_version, topic, state, "
            f"entry_hash, signature, kid FROM {recorder.events_table_name} "
            "WHERE notification_id > %s ORDER BY notification_id LIMIT %s",
            (after, PAGE),
        )
        yield from rows
        if len(rows) < PAGE:
            return
        after = rows[-1]["notification_id"]


def verify_rows(
    rows: Iterable[Mapping[str, Any]],
    checkpoints: Iterable[Mapping[str, Any]],
    public_keys: Mapping[str, Ed25519PublicKey],
    *,
    workers: int | None = None,
) -> VerificationReport:
    """Verify stored rows given in position order, then the checkpoints over them.

    The checks themselves are ``ledger.offline``'s, the same an auditor runs on
    an export: the chain is walked in order, signatures are checked in parallel
    batches on ``workers`` threads, and the first failure by position wins.
    """
    return verify_chain(
        (stored_entry(row) for row in rows),
        checkpoints,
        public_keys,
        workers=workers,
    )


def stored_entry(row: Mapping[str, Any]) -> StoredEntry:
    """A row of the events table as the checks see it."""
    return StoredEntry(
        position=int(row["notification_id"]),
        entry_bytes=_as_bytes(row["state"]),
        hash=str(row["entry_hash"]),
        signature=_as_bytes(row["signature"]) or b"",
        kid=str(row["kid"]),
        stream_id=_stream(row["originator_id"]),
        stream_version=row["originator_version"],
        type=row["topic"],
    )


def _as_bytes(value: Any) -> bytes | None:
    """Stored binary columns as bytes; None for anything else (a retyped column)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return None


def _stream(value: Any) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return str(value)  # a retyped column: reported as COLUMN_MISMATCH
