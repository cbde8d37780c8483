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
``UNKNOWN_SIGNING_KEY`` the entry names a key id the verifier does not trust
``BAD_SIGNATURE``       the signature does not verify
``TIME_REGRESSION``     the recorded time is earlier than the previous entry's
``CHECKPOINT_INVALID``  a checkpoint's signature does not verify
``CHECKPOINT_MISMATCH`` a checkpoint names another hash than the entry it covers
``TRUNCATED``           the ledger's head is behind a signed checkpoint
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger.entry import (
    GENESIS_HASH,
    checkpoint_document,
    checkpoint_signing_message,
    entry_hash,
    entry_signing_message,
    parse_entry,
)
from ledger.signing import verify_signature
from ledger.store import LedgerRecorder, checkpoint_table

PAGE = 2000


@dataclass(frozen=True)
class Failure:
    """The first thing found wrong: where, which rule, and a short explanation."""

    position: int
    reason: str
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {"position": self.position, "reason": self.reason, "detail": self.detail}


@dataclass
class VerificationReport:
    """What a verification found. ``ok`` only when every check held."""

    checked: int = 0
    head_position: int = 0
    head_hash: str = GENESIS_HASH
    checkpoints_checked: int = 0
    latest_checkpoint: int | None = None
    signing_keys: dict[str, int] = field(default_factory=dict)
    first_failure: Failure | None = None

    @property
    def ok(self) -> bool:
        return self.first_failure is None

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "head": {"position": self.head_position, "hash": self.head_hash},
            "checkpoints_checked": self.checkpoints_checked,
            "latest_checkpoint": self.latest_checkpoint,
            "signing_keys": self.signing_keys,
            "first_failure": self.first_failure.as_json()
            if self.first_failure
            else None,
        }


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

    The chain (positions, links, hashes, times) is walked in order; signatures,
    the costly part, are checked in batches on ``workers`` threads (default: one
    per CPU), since Ed25519 verification releases the GIL. The first failure by
    position is reported whichever check found it.
    """
    checkpoints = list(checkpoints)
    report = VerificationReport()
    wanted = {int(checkpoint["position"]) for checkpoint in checkpoints}
    hashes_at: dict[int, str] = {}
    previous_hash, previous_time = GENESIS_HASH, ""
    chain_failure: Failure | None = None
    batch: list[_Signed] = []
    pending: list[Future[Failure | None]] = []
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        for row in rows:
            position = report.checked + 1
            chain_failure, entry = _check_row(row, position, previous_hash)
            if chain_failure is None and entry["recorded_at"] < previous_time:
                chain_failure = Failure(
                    position,
                    "TIME_REGRESSION",
                    f"recorded at {entry['recorded_at']}, before {previous_time}",
                )
            if chain_failure is not None:
                break
            report.checked = position
            previous_hash, previous_time = entry["_hash"], entry["recorded_at"]
            kid = str(row["kid"])
            report.signing_keys[kid] = report.signing_keys.get(kid, 0) + 1
            signature = _as_bytes(row["signature"]) or b""
            batch.append(_Signed(position, kid, signature, previous_hash))
            if len(batch) == _BATCH:
                pending.append(pool.submit(_check_signatures, batch, public_keys))
                batch = []
            if position in wanted:
                hashes_at[position] = previous_hash
        pending.append(pool.submit(_check_signatures, batch, public_keys))
        signature_failures = [f for f in (job.result() for job in pending) if f]
    first = min(
        [*signature_failures, *([chain_failure] if chain_failure else [])],
        key=lambda failure: failure.position,
        default=None,
    )
    if first is not None:
        report.first_failure = first
        report.checked = min(report.checked, first.position - 1)
        return report
    report.head_position, report.head_hash = report.checked, previous_hash
    report.first_failure = _check_checkpoints(
        checkpoints, hashes_at, report, public_keys
    )
    return report


_BATCH = 256


@dataclass(frozen=True)
class _Signed:
    position: int
    kid: str
    signature: bytes
    hash: str


def _check_signatures(
    batch: list[_Signed], public_keys: Mapping[str, Ed25519PublicKey]
) -> Failure | None:
    for item in batch:
        public_key = public_keys.get(item.kid)
        if public_key is None:
            return Failure(item.position, "UNKNOWN_SIGNING_KEY", f"kid={item.kid}")
        if not verify_signature(
            public_key, item.signature, entry_signing_message(item.hash)
        ):
            return Failure(item.position, "BAD_SIGNATURE", f"kid={item.kid}")
    return None


def _check_row(
    row: Mapping[str, Any], position: int, previous_hash: str
) -> tuple[Failure | None, dict[str, Any]]:
    stored_position = int(row["notification_id"])
    if stored_position != position:
        return Failure(
            position, "GAP", f"next stored position is {stored_position}"
        ), {}
    state = _as_bytes(row["state"])
    if state is None:
        return Failure(
            position, "MALFORMED_ENTRY", "the entry is not stored as bytes"
        ), {}
    try:
        entry = parse_entry(state)
    except (ValueError, UnicodeDecodeError) as error:
        return Failure(position, "MALFORMED_ENTRY", str(error)), {}
    if entry.get("position") != position:
        return (
            Failure(
                position,
                "POSITION_MISMATCH",
                f"entry says position {entry.get('position')}",
            ),
            entry,
        )
    if (
        _stream(row["originator_id"]) != entry.get("stream_id")
        or row["originator_version"] != entry.get("stream_version")
        or row["topic"] != entry.get("type")
    ):
        return (
            Failure(position, "COLUMN_MISMATCH", "row columns differ from the entry"),
            entry,
        )
    if entry.get("prev_hash") != previous_hash:
        return (
            Failure(position, "BROKEN_LINK", "prev_hash is not the previous hash"),
            entry,
        )
    computed = entry_hash(state)
    if computed != row["entry_hash"]:
        return (
            Failure(position, "HASH_MISMATCH", "stored hash differs from the bytes"),
            entry,
        )
    entry["_hash"] = computed
    return None, entry


def _check_checkpoints(
    checkpoints: Iterable[Mapping[str, Any]],
    hashes_at: Mapping[int, str],
    report: VerificationReport,
    public_keys: Mapping[str, Ed25519PublicKey],
) -> Failure | None:
    for checkpoint in checkpoints:
        position = int(checkpoint["position"])
        document = checkpoint_document(
            position=position,
            hash_hex=str(checkpoint["hash"]),
            recorded_at=str(checkpoint["recorded_at"]),
            kid=str(checkpoint["kid"]),
        )
        public_key = public_keys.get(str(checkpoint["kid"]))
        if public_key is None or not verify_signature(
            public_key,
            bytes(checkpoint["signature"]),
            checkpoint_signing_message(document),
        ):
            return Failure(position, "CHECKPOINT_INVALID", f"checkpoint at {position}")
        if position > report.head_position:
            return Failure(
                report.head_position + 1,
                "TRUNCATED",
                f"head is at {report.head_position} but a signed checkpoint "
                f"covers position {position}",
            )
        if hashes_at.get(position) != checkpoint["hash"]:
            return Failure(
                position,
                "CHECKPOINT_MISMATCH",
                f"checkpoint hash differs from the entry at {position}",
            )
        report.checkpoints_checked += 1
        report.latest_checkpoint = position
    return None


def _as_bytes(value: Any) -> bytes | None:
    """Stored binary columns as bytes; None for anything else (a retyped column)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return None


def _stream(value: Any) -> str:
    return str(uuid.UUID(str(value)))
