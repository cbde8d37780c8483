"""Checking stored ledger entries and checkpoints, online or offline from an export.

This module is the one place where entries are re-hashed, linked, checked
against their signatures and matched with checkpoints: ``ledger.verify`` runs it
over the database, and ``keyledger verify-export`` runs it over an export
archive. It imports only the Python standard library and ``cryptography``, so an
auditor can copy it out of an export and run it alone::

    python offline.py EXPORT.zip [--checkpoint CHECKPOINT.json] [--json]

Exit status: 0 when everything holds, 1 when something is broken (the first
broken position and its reason code are printed), 2 when a file cannot be read.
Reason codes of the chain are those of ``ledger.verify``; an export adds
``MANIFEST_INVALID``, ``FILE_MISSING``, ``FILE_UNLISTED``,
``FILE_DIGEST_MISMATCH``, ``MANIFEST_MISMATCH``, ``VIEW_MISMATCH``,
``OUT_OF_SCOPE`` and ``STREAM_GAP``. Position 0 names the archive itself rather
than an entry.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import csv
import hashlib
import io
import json
import os
import sys
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

ENTRY_FORMAT = 1
GENESIS_HASH = "0" * 64
ENTRY_SIGNING_CONTEXT = b"keyledger/entry/v1\n"
CHECKPOINT_SIGNING_CONTEXT = b"keyledger/checkpoint/v1\n"
MANIFEST_SIGNING_CONTEXT = b"keyledger/export-manifest/v1\n"
EXPORT_FORMAT = "keyledger-export/1"
USAGE_TYPE = "keyledger.usage.KeyUsed"

MANIFEST_FILE = "manifest.json"
MANIFEST_SIGNATURE_FILE = "manifest.sig"
ENTRIES_FILE = "entries.jsonl"
CHECKPOINTS_FILE = "checkpoints.json"
CSV_VIEW_FILE = "views/entries.csv"
JSONL_VIEW_FILE = "views/entries.jsonl"
VERIFIER_FILE = "verifier/offline.py"

_MAX_SAFE_INTEGER = 2**53 - 1

# Entries that change who may sign (``domain.epochs``; repeated here so this file
# stays standalone). An announced key may sign from the next position on; from a
# promotion on, only the promoted key may sign.
SIGNER_ANNOUNCED_TOPIC = "keyledger.ledger.SignerAnnounced"
PROMOTED_TOPIC = "keyledger.ledger.Promoted"


# Entry format and signing messages ----------------------------------------------


def entry_hash(entry_bytes: bytes) -> str:
    """The hex SHA-256 of an entry's stored bytes."""
    return hashlib.sha256(entry_bytes).hexdigest()


def entry_signing_message(hash_hex: str) -> bytes:
    """What an entry's Ed25519 signature covers."""
    return ENTRY_SIGNING_CONTEXT + bytes.fromhex(hash_hex)


def checkpoint_document(
    *, position: int, hash_hex: str, recorded_at: str, kid: str
) -> dict[str, Any]:
    """The signed statement of a checkpoint: the head at ``position``."""
    return {
        "format": ENTRY_FORMAT,
        "position": position,
        "hash": hash_hex,
        "recorded_at": recorded_at,
        "kid": kid,
    }


def checkpoint_signing_message(document: Mapping[str, Any]) -> bytes:
    """What a checkpoint's signature covers: its canonical document."""
    return CHECKPOINT_SIGNING_CONTEXT + canonical_document(dict(document))


def manifest_signing_message(manifest_bytes: bytes) -> bytes:
    """What an export manifest's signature covers: the SHA-256 of its exact bytes."""
    return MANIFEST_SIGNING_CONTEXT + hashlib.sha256(manifest_bytes).digest()


def canonical_document(value: Any) -> bytes:
    """RFC 8785 canonical JSON of a document of strings, safe integers and booleans.

    Enough for checkpoint documents without the ``rfc8785`` package: members are
    sorted by UTF-16 code units, strings escaped as ECMAScript does, integers
    written in decimal.

    Raises:
        TypeError: ``value`` holds a float or an integer outside +-(2^53 - 1).
    """
    return _canonical(value).encode("utf-8")


def _canonical(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        if abs(value) > _MAX_SAFE_INTEGER:
            raise TypeError(f"integer {value} is outside the safe JSON domain")
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_canonical(item) for item in value) + "]"
    if isinstance(value, Mapping):
        names = sorted(value, key=lambda name: name.encode("utf-16-be"))
        return (
            "{"
            + ",".join(
                f"{_canonical(name)}:{_canonical(value[name])}" for name in names
            )
            + "}"
        )
    raise TypeError(f"{type(value).__name__} is not allowed in a signed document")


def parse_entry(entry_bytes: bytes) -> dict[str, Any]:
    """Parse stored entry bytes as a ledger entry of a known format.

    Duplicate names are not searched for here: the hash covers the exact bytes
    and the signature covers the hash, so bytes that differ from what was signed
    fail those checks whatever they contain.

    Raises:
        ValueError: the bytes are not a JSON object of a known entry format.
    """
    entry = json.loads(entry_bytes)
    if not isinstance(entry, dict) or entry.get("format") != ENTRY_FORMAT:
        raise ValueError("not a ledger entry of a known format")
    return entry


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: ``ed25519:`` and 16 hex digits."""
    raw = public_key.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def verify_signature(
    public_key: Ed25519PublicKey, signature: bytes, message: bytes
) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``message``."""
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


# Reports ------------------------------------------------------------------------


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


@dataclass(frozen=True)
class StoredEntry:
    """One stored entry as found: its row's columns and its exact bytes.

    ``entry_bytes`` is None when the row does not hold bytes (then ``problem``
    says why). ``stream_id``, ``stream_version`` and ``type`` are the row's own
    columns; when given they must agree with the entry.
    """

    position: int
    entry_bytes: bytes | None
    hash: str
    signature: bytes
    kid: str
    stream_id: str | None = None
    stream_version: int | None = None
    type: str | None = None
    problem: str = "the entry is not stored as bytes"


# The chain --------------------------------------------------------------------


_BATCH = 256


@dataclass(frozen=True)
class _Signed:
    position: int
    kid: str
    signature: bytes
    hash: str


@dataclass
class ChainResult:
    """The outcome of walking entries: a report and the hash at every position."""

    report: VerificationReport
    hashes: dict[int, str]
    entries: list[dict[str, Any]]
    keys: KeyBook | None = None


class KeyBook:
    """The keys trusted along the chain: the given roots, then announced keys.

    A key announced at position p (in an entry signed by a key trusted there)
    may sign from p + 1; a promotion at position p, signed by the promoted key,
    retires every other key after p.
    """

    def __init__(self, roots: Mapping[str, Ed25519PublicKey]) -> None:
        self.keys: dict[str, Ed25519PublicKey] = dict(roots)
        self.valid_from: dict[str, int] = dict.fromkeys(roots, 0)
        self.retired_after: dict[str, int] = {}

    def follow(
        self, position: int, kid: str, entry: Mapping[str, Any]
    ) -> Failure | None:
        """Take in an announcement or a promotion; a Failure if it is malformed."""
        kind = entry.get("type")
        payload = entry.get("payload")
        if kind not in (SIGNER_ANNOUNCED_TOPIC, PROMOTED_TOPIC):
            return None
        if not isinstance(payload, dict) or not isinstance(payload.get("kid"), str):
            return Failure(position, "MALFORMED_ENTRY", f"{kind} names no key")
        named = payload["kid"]
        if kind == SIGNER_ANNOUNCED_TOPIC:
            try:
                key = serialization.load_pem_public_key(
                    str(payload.get("public_key_pem")).encode("ascii")
                )
            except (ValueError, TypeError, UnicodeEncodeError):
                key = None
            if not isinstance(key, Ed25519PublicKey) or key_id(key) != named:
                return Failure(
                    position, "MALFORMED_ENTRY", f"the announced key is not {named}"
                )
            if named not in self.keys:
                self.keys[named] = key
                self.valid_from[named] = position + 1
            return None
        if kid != named:
            return Failure(
                position,
                "MALFORMED_ENTRY",
                f"a promotion to {named} must be signed by it, not by {kid}",
            )
        for other in self.keys:
            if other != named:
                self.retired_after.setdefault(other, position)
        return None

    def check(self, item: _Signed) -> Failure | None:
        public_key = self.keys.get(item.kid)
        if public_key is None or self.valid_from.get(item.kid, 0) > item.position:
            return Failure(item.position, "UNKNOWN_SIGNING_KEY", f"kid={item.kid}")
        if item.position > self.retired_after.get(item.kid, item.position):
            return Failure(item.position, "KEY_RETIRED", f"kid={item.kid}")
        if not verify_signature(
            public_key, item.signature, entry_signing_message(item.hash)
        ):
            return Failure(item.position, "BAD_SIGNATURE", f"kid={item.kid}")
        return None


def verify_entries(
    rows: Iterable[StoredEntry],
    public_keys: Mapping[str, Ed25519PublicKey],
    *,
    workers: int | None = None,
    contiguous: bool = True,
    first_position: int = 1,
    previous_hash: str | None = GENESIS_HASH,
    present: frozenset[int] = frozenset(),
    keep_hashes: Iterable[int] | None = None,
    keep_entries: bool = False,
    book: KeyBook | None = None,
) -> ChainResult:
    """Check entries given in position order; report the first failure by position.

    The chain (positions, links, hashes, times) is walked in order; signatures,
    the costly part, are checked in batches on ``workers`` threads (default: one
    per CPU), since Ed25519 verification releases the GIL.

    Args:
        rows: the entries, in the order they were stored or exported.
        public_keys: the trusted signing keys by key id.
        contiguous: positions MUST follow each other from ``first_position``;
            otherwise they only ascend, and links are checked between
            neighbours that are adjacent.
        previous_hash: the hash before ``first_position``; None when unknown
            (an export that starts after position 1).
        present: every position the rows hold, if known; a position that is
            missing here but present later is reported as out of order.
        keep_hashes: positions whose hashes are kept (None: all of them).
        keep_entries: keep the parsed entries, for views.
        book: the keys trusted so far, when the walk continues an earlier one
            (a replica's batches); announcements found are added to it.
    """
    report = VerificationReport()
    wanted = None if keep_hashes is None else set(keep_hashes)
    hashes: dict[int, str] = {}
    kept: list[dict[str, Any]] = []
    checked_positions: list[int] = []
    last_position, last_time = first_position - 1, ""
    chain_failure: Failure | None = None
    batch: list[_Signed] = []
    pending: list[Future[Failure | None]] = []
    book = book if book is not None else KeyBook(public_keys)
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        for row in rows:
            if contiguous or row.position <= last_position:
                position = last_position + 1
            else:
                position = row.position
            link = previous_hash if position == last_position + 1 else None
            chain_failure, entry = _check_row(row, position, link, present)
            if chain_failure is None:
                recorded_at = entry.get("recorded_at")
                if not isinstance(recorded_at, str):
                    chain_failure = Failure(
                        position, "MALFORMED_ENTRY", "the entry has no recorded time"
                    )
                elif recorded_at < last_time:
                    chain_failure = Failure(
                        position,
                        "TIME_REGRESSION",
                        f"recorded at {recorded_at}, before {last_time}",
                    )
            if chain_failure is None:
                chain_failure = book.follow(position, row.kid, entry)
            if chain_failure is not None:
                break
            report.checked += 1
            if not contiguous:
                checked_positions.append(position)
            last_position, last_time = position, entry["recorded_at"]
            previous_hash = entry["_hash"]
            report.signing_keys[row.kid] = report.signing_keys.get(row.kid, 0) + 1
            batch.append(_Signed(position, row.kid, row.signature, previous_hash))
            if len(batch) == _BATCH:
                pending.append(pool.submit(_check_signatures, batch, book))
                batch = []
            if wanted is None or position in wanted:
                hashes[position] = previous_hash
            if keep_entries:
                kept.append(entry)
        pending.append(pool.submit(_check_signatures, batch, book))
        signature_failures = [f for f in (job.result() for job in pending) if f]
    first = min(
        [*signature_failures, *([chain_failure] if chain_failure else [])],
        key=lambda failure: failure.position,
        default=None,
    )
    if first is not None:
        report.first_failure = first
        if contiguous:
            report.checked = min(report.checked, first.position - first_position)
        else:
            report.checked = sum(1 for p in checked_positions if p < first.position)
        return ChainResult(report, hashes, kept, book)
    report.head_position = last_position if report.checked else 0
    report.head_hash = previous_hash or GENESIS_HASH
    return ChainResult(report, hashes, kept, book)


def verify_chain(
    rows: Iterable[StoredEntry],
    checkpoints: Iterable[Mapping[str, Any]],
    public_keys: Mapping[str, Ed25519PublicKey],
    *,
    workers: int | None = None,
) -> VerificationReport:
    """Verify a whole ledger from position 1, then every checkpoint over it."""
    checkpoints = list(checkpoints)
    wanted = {int(checkpoint["position"]) for checkpoint in checkpoints}
    result = verify_entries(rows, public_keys, workers=workers, keep_hashes=wanted)
    report = result.report
    if report.first_failure is not None:
        return report
    trusted = result.keys.keys if result.keys else public_keys
    for checkpoint in checkpoints:
        failure = check_checkpoint_signature(checkpoint, trusted)
        position = int(checkpoint["position"])
        if failure is None and position > report.head_position:
            failure = Failure(
                report.head_position + 1,
                "TRUNCATED",
                f"head is at {report.head_position} but a signed checkpoint "
                f"covers position {position}",
            )
        if failure is None and result.hashes.get(position) != checkpoint["hash"]:
            failure = Failure(
                position,
                "CHECKPOINT_MISMATCH",
                f"checkpoint hash differs from the entry at {position}",
            )
        if failure is not None:
            report.first_failure = failure
            return report
        report.checkpoints_checked += 1
        report.latest_checkpoint = position
    return report


def check_checkpoint_signature(
    checkpoint: Mapping[str, Any], public_keys: Mapping[str, Ed25519PublicKey]
) -> Failure | None:
    """CHECKPOINT_INVALID unless the checkpoint is signed by a trusted key."""
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
    return None


def _check_signatures(batch: list[_Signed], book: KeyBook) -> Failure | None:
    for item in batch:
        failure = book.check(item)
        if failure is not None:
            return failure
    return None


def _check_row(
    row: StoredEntry, position: int, previous_hash: str | None, present: frozenset[int]
) -> tuple[Failure | None, dict[str, Any]]:
    if row.position != position:
        if row.position < position or position in present:
            return Failure(
                position,
                "POSITION_MISMATCH",
                f"the entry at position {row.position} is out of order",
            ), {}
        return Failure(position, "GAP", f"next stored position is {row.position}"), {}
    if row.entry_bytes is None:
        return Failure(position, "MALFORMED_ENTRY", row.problem), {}
    try:
        entry = parse_entry(row.entry_bytes)
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
        (row.stream_id is not None and row.stream_id != entry.get("stream_id"))
        or (
            row.stream_version is not None
            and row.stream_version != entry.get("stream_version")
        )
        or (row.type is not None and row.type != entry.get("type"))
    ):
        return (
            Failure(position, "COLUMN_MISMATCH", "row columns differ from the entry"),
            entry,
        )
    if previous_hash is not None and entry.get("prev_hash") != previous_hash:
        return (
            Failure(position, "BROKEN_LINK", "prev_hash is not the previous hash"),
            entry,
        )
    computed = entry_hash(row.entry_bytes)
    if computed != row.hash:
        return (
            Failure(position, "HASH_MISMATCH", "stored hash differs from the bytes"),
            entry,
        )
    entry["_hash"] = computed
    return None, entry


# Comparing two ledgers -----------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """Where two ledgers (or exports) agree, and the first position where they fork."""

    left_head: int
    right_head: int
    agreed_through: int
    fork_at: int | None

    def describe(self) -> str:
        if self.fork_at is not None:
            return (
                f"FORK at position {self.fork_at}: the ledgers agree through "
                f"{self.agreed_through} and hold different entries from "
                f"{self.fork_at} (heads {self.left_head} and {self.right_head})"
            )
        shorter = min(self.left_head, self.right_head)
        if self.left_head == self.right_head:
            return f"identical through position {shorter}"
        which = "left" if self.left_head < self.right_head else "right"
        return (
            f"no fork: the {which} ledger (head {shorter}) is a prefix of the other "
            f"(head {max(self.left_head, self.right_head)})"
        )


def compare_hashes(
    left: Iterable[tuple[int, str]], right: Iterable[tuple[int, str]]
) -> Comparison:
    """Compare (position, hash) pairs given in position order.

    Entries are hash-linked, so the first position both hold with different
    hashes is where the histories fork (for exports that skip positions, the
    fork lies at or before it).
    """
    left_iter, right_iter = iter(left), iter(right)
    left_item, right_item = next(left_iter, None), next(right_iter, None)
    left_head = right_head = agreed = 0
    while left_item is not None and right_item is not None:
        if left_item[0] < right_item[0]:
            left_head = left_item[0]
            left_item = next(left_iter, None)
            continue
        if right_item[0] < left_item[0]:
            right_head = right_item[0]
            right_item = next(right_iter, None)
            continue
        if left_item[1] != right_item[1]:
            for position, _ in left_iter:
                left_head = position
            for position, _ in right_iter:
                right_head = position
            return Comparison(
                max(left_head, left_item[0]),
                max(right_head, right_item[0]),
                agreed,
                left_item[0],
            )
        agreed = left_head = right_head = left_item[0]
        left_item, right_item = next(left_iter, None), next(right_iter, None)
    for item, rest, side in ((left_item, left_iter, 0), (right_item, right_iter, 1)):
        last = item[0] if item is not None else None
        for position, _ in rest:
            last = position
        if last is not None:
            if side == 0:
                left_head = last
            else:
                right_head = last
    return Comparison(left_head, right_head, agreed, None)


# Export archives ----------------------------------------------------------------


def export_line(row: StoredEntry) -> bytes:
    """One line of ``entries.jsonl``: the entry's bytes exactly as stored, in base64."""
    assert row.entry_bytes is not None
    return (
        json.dumps(
            {
                "position": row.position,
                "entry": base64.b64encode(row.entry_bytes).decode("ascii"),
                "hash": row.hash,
                "signature": row.signature.hex(),
                "kid": row.kid,
                "stream_id": row.stream_id,
                "stream_version": row.stream_version,
                "type": row.type,
            },
            separators=(",", ":"),
        ).encode("ascii")
        + b"\n"
    )


def parse_export_lines(data: bytes) -> list[StoredEntry]:
    """The stored entries of ``entries.jsonl``; a line that cannot be read stays
    in place as an entry without bytes, so the chain reports it by position."""
    rows: list[StoredEntry] = []
    for line in data.splitlines():
        expected = rows[-1].position + 1 if rows else 1
        try:
            item = json.loads(line)
            position = item["position"]
            if not isinstance(position, int) or isinstance(position, bool):
                raise ValueError("position is not an integer")
            entry_bytes = base64.b64decode(item["entry"], validate=True)
            signature = bytes.fromhex(item["signature"])
            version = item.get("stream_version")
            rows.append(
                StoredEntry(
                    position=position,
                    entry_bytes=entry_bytes,
                    hash=str(item["hash"]),
                    signature=signature,
                    kid=str(item["kid"]),
                    stream_id=item.get("stream_id"),
                    stream_version=version if isinstance(version, int) else None,
                    type=item.get("type"),
                )
            )
        except (ValueError, KeyError, TypeError, binascii.Error) as error:
            position = item.get("position") if isinstance(item, dict) else None
            rows.append(
                StoredEntry(
                    position=position if isinstance(position, int) else expected,
                    entry_bytes=None,
                    hash="",
                    signature=b"",
                    kid="",
                    problem=f"unreadable line in {ENTRIES_FILE}: {error}",
                )
            )
    return rows


VIEW_COLUMNS = (
    "position",
    "recorded_at",
    "type",
    "subject",
    "stream_id",
    "stream_version",
    "actor_principal",
    "actor_token_id",
    "request_id",
    "payload",
    "hash",
    "kid",
)

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def view_record(row: StoredEntry, entry: Mapping[str, Any]) -> dict[str, Any]:
    """One entry flattened for spreadsheets and SIEM tools."""
    actor = entry.get("actor") if isinstance(entry.get("actor"), dict) else {}
    assert isinstance(actor, dict)
    return {
        "position": row.position,
        "recorded_at": entry.get("recorded_at"),
        "type": entry.get("type"),
        "subject": entry.get("subject"),
        "stream_id": entry.get("stream_id"),
        "stream_version": entry.get("stream_version"),
        "actor_principal": actor.get("principal"),
        "actor_token_id": actor.get("token_id"),
        "request_id": entry.get("request_id"),
        "payload": json.dumps(entry.get("payload"), ensure_ascii=False, sort_keys=True),
        "hash": row.hash,
        "kid": row.kid,
    }


def csv_cell(value: Any) -> str:
    """A CSV cell that no spreadsheet runs as a formula and that stays on one line.

    A text starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return gets a
    leading apostrophe; control characters, line and paragraph separators and
    bidirectional controls are written as visible ``\\uXXXX`` escapes.
    """
    if value is None:
        return ""
    text = str(value)
    if text.startswith(_FORMULA_STARTS):
        text = "'" + text
    return "".join(
        f"\\u{ord(char):04x}"
        if ord(char) < 0x20
        or 0x7F <= ord(char) < 0xA0
        or char in "\u2028\u2029"
        or char in _BIDI_CONTROLS
        else char
        for char in text
    )


def render_views(
    items: Sequence[tuple[StoredEntry, Mapping[str, Any]]],
) -> dict[str, bytes]:
    """The CSV (UTF-8 with BOM) and JSON Lines views of exported entries."""
    records = [view_record(row, entry) for row, entry in items]
    text = io.StringIO()
    writer = csv.writer(text, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writerow(VIEW_COLUMNS)
    for record in records:
        writer.writerow([csv_cell(record[name]) for name in VIEW_COLUMNS])
    lines = [
        json.dumps(record, ensure_ascii=False)
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
        + "\n"
        for record in records
    ]
    return {
        CSV_VIEW_FILE: text.getvalue().encode("utf-8-sig"),
        JSONL_VIEW_FILE: "".join(lines).encode("utf-8"),
    }


class UnreadableError(Exception):
    """The export or the checkpoint file cannot be read at all."""


def read_archive(path: Path) -> tuple[dict[str, bytes], list[str]]:
    """The member files of an export (a zip file, or the folder it was unpacked
    into) by name, and the names that occur more than once.

    Raises:
        UnreadableError: the path is neither a readable zip file nor a folder.
    """
    files: dict[str, bytes] = {}
    duplicates: list[str] = []
    try:
        if path.is_dir():
            for member in sorted(path.rglob("*")):
                if member.is_file():
                    files[member.relative_to(path).as_posix()] = member.read_bytes()
            return files, duplicates
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                if info.filename in files:
                    duplicates.append(info.filename)
                files[info.filename] = archive.read(info)
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError) as error:
        raise UnreadableError(f"cannot read {path}: {error}") from error
    return files, duplicates


def load_checkpoint(data: bytes) -> dict[str, Any]:
    """A checkpoint an auditor kept: the JSON of ``GET /v1/ledger/head`` or of
    ``POST /v1/ledger/checkpoints``, or the bare checkpoint object.

    Raises:
        UnreadableError: the data holds no checkpoint.
    """
    try:
        document = json.loads(data)
        if isinstance(document, dict) and isinstance(document.get("checkpoint"), dict):
            document = document["checkpoint"]
        return _checkpoint_record(document)
    except (ValueError, KeyError, TypeError) as error:
        raise UnreadableError(f"not a keyledger checkpoint: {error}") from None


def _checkpoint_record(item: Any) -> dict[str, Any]:
    position = item["position"]
    if not isinstance(position, int) or isinstance(position, bool) or position < 1:
        raise ValueError("a checkpoint's position is a positive integer")
    return {
        "position": position,
        "hash": str(item["hash"]),
        "recorded_at": str(item["recorded_at"]),
        "kid": str(item["kid"]),
        "signature": bytes.fromhex(str(item["signature"])),
    }


@dataclass
class ExportReport:
    """What verifying an export found. ``ok`` only when every check held."""

    scope: dict[str, Any] | None = None
    entries: int = 0
    first_position: int | None = None
    last_position: int | None = None
    first_recorded_at: str | None = None
    last_recorded_at: str | None = None
    ledger_head: dict[str, Any] | None = None
    checkpoints_checked: int = 0
    checkpoints_matched: int = 0
    signing_keys: dict[str, int] = field(default_factory=dict)
    completeness_proven: bool = False
    completeness: str = ""
    first_failure: Failure | None = None

    @property
    def ok(self) -> bool:
        return self.first_failure is None

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "scope": self.scope,
            "entries": self.entries,
            "positions": [self.first_position, self.last_position],
            "recorded": [self.first_recorded_at, self.last_recorded_at],
            "ledger_head": self.ledger_head,
            "checkpoints_checked": self.checkpoints_checked,
            "checkpoints_matched": self.checkpoints_matched,
            "signing_keys": self.signing_keys,
            "completeness": {
                "proven": self.completeness_proven,
                "statement": self.completeness,
            },
            "first_failure": self.first_failure.as_json()
            if self.first_failure
            else None,
        }


def verify_export(
    files: Mapping[str, bytes],
    *,
    duplicates: Sequence[str] = (),
    outside_checkpoint: Mapping[str, Any] | None = None,
    workers: int | None = None,
) -> ExportReport:
    """Verify an export's member files, without a database or a network.

    The manifest's signature is checked first; then every entry (re-hashed,
    linked, signature checked) with the first broken position winning; then the
    checkpoints, the manifest's claims and file digests, the views, and last the
    outside checkpoint, when one is given.
    """
    report = ExportReport()
    try:
        manifest_bytes = files[MANIFEST_FILE]
        manifest = json.loads(manifest_bytes)
        if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
            raise ValueError(f"not a {EXPORT_FORMAT} manifest")
        scope = manifest["scope"]
        head = manifest["ledger_head"]
        listed = manifest["files"]
        if not isinstance(scope, dict) or not isinstance(listed, dict):
            raise ValueError("the manifest's scope or files are malformed")
        head_position, head_hash = int(head["position"]), str(head["hash"])
    except (KeyError, ValueError, TypeError) as error:
        report.first_failure = Failure(0, "MANIFEST_INVALID", str(error))
        return report
    report.scope, report.ledger_head = scope, head
    archive: list[Failure] = []
    if duplicates:
        archive.append(
            Failure(0, "MANIFEST_INVALID", f"duplicate members: {sorted(duplicates)}")
        )

    # Trust only the keys whose PEM holds the key the kid names.
    public_keys: dict[str, Ed25519PublicKey] = {}
    for item in manifest.get("signing_keys") or []:
        kid, name = str(item.get("kid")), str(item.get("file"))
        try:
            key = serialization.load_pem_public_key(files[name])
        except (KeyError, ValueError, TypeError):
            archive.append(Failure(0, "MANIFEST_INVALID", f"cannot load key {name}"))
            continue
        if not isinstance(key, Ed25519PublicKey) or key_id(key) != kid:
            archive.append(
                Failure(0, "MANIFEST_INVALID", f"{name} does not hold key {kid}")
            )
            continue
        public_keys[kid] = key
    manifest_failure = _check_manifest_signature(files, manifest_bytes, public_keys)

    # The entries, walked as the scope says they were chosen.
    rows = parse_export_lines(files.get(ENTRIES_FILE, b""))
    by_time = scope.get("kind") == "time_range"
    covered = (
        manifest.get("covered") if isinstance(manifest.get("covered"), dict) else {}
    )
    assert isinstance(covered, dict)
    first = covered.get("first_position")
    if not isinstance(first, int):
        first = rows[0].position if rows else 1
    chain = verify_entries(
        rows,
        public_keys,
        workers=workers,
        contiguous=by_time,
        first_position=first if by_time else 1,
        previous_hash=GENESIS_HASH if first == 1 or not by_time else None,
        present=frozenset(row.position for row in rows),
        keep_entries=True,
    )
    report.entries = len(rows)
    report.signing_keys = chain.report.signing_keys
    entry_failures = [chain.report.first_failure] if chain.report.first_failure else []
    items = list(zip(rows, chain.entries, strict=False))
    entry_failures += _check_scope(scope, manifest, items)
    if items:
        report.first_position, report.last_position = (
            rows[0].position,
            items[-1][0].position,
        )
        report.first_recorded_at = items[0][1]["recorded_at"]
        report.last_recorded_at = items[-1][1]["recorded_at"]

    # Checkpoints in the archive: signed, not beyond the head, matching entries.
    checkpoint_failures: list[Failure] = []
    try:
        raw_checkpoints = json.loads(files.get(CHECKPOINTS_FILE, b"[]"))
        checkpoints = [_checkpoint_record(item) for item in raw_checkpoints]
    except (ValueError, KeyError, TypeError) as error:
        checkpoints = []
        checkpoint_failures.append(
            Failure(0, "CHECKPOINT_INVALID", f"{CHECKPOINTS_FILE}: {error}")
        )
    for checkpoint in checkpoints:
        failure, matched = _check_against(
            checkpoint, public_keys, chain.hashes, head_position, head_hash
        )
        if failure is not None:
            checkpoint_failures.append(failure)
            break
        report.checkpoints_checked += 1
        report.checkpoints_matched += matched

    # The manifest's claims, its file digests, and the views.
    archive += _check_claims(manifest, rows, items, checkpoints, chain.hashes)
    archive += _check_digests(files, listed)
    if not entry_failures and set(listed) >= VIEW_FILES:
        for name, data in render_views(items).items():
            if files.get(name) != data:
                archive.append(
                    Failure(0, "VIEW_MISMATCH", f"{name} is not a view of the entries")
                )

    outside: list[Failure] = []
    if outside_checkpoint is None:
        report.completeness = (
            "completeness NOT proven: no outside checkpoint was given. Keep a "
            "checkpoint from GET /v1/ledger/head and pass it with --checkpoint."
        )
    else:
        failure, matched = _check_against(
            outside_checkpoint, public_keys, chain.hashes, head_position, head_hash
        )
        position = int(outside_checkpoint["position"])
        if failure is not None:
            outside.append(failure)
        elif matched and by_time:
            report.completeness_proven = True
            report.completeness = (
                f"consistent with your checkpoint at position {position}: the "
                f"exported chain reaches it unbroken from position {first}"
            )
        elif matched or position == head_position:
            report.completeness = (
                f"consistent with your checkpoint at position {position}, but an "
                "export by key holds only some entries: completeness NOT proven"
            )
        else:
            report.completeness = (
                f"your checkpoint at position {position} lies outside the exported "
                "positions and the ledger head was past it; consistency with it "
                "and completeness NOT proven"
            )

    for group in (
        [manifest_failure] if manifest_failure else [],
        sorted(entry_failures, key=lambda failure: failure.position)[:1],
        checkpoint_failures,
        archive,
        outside,
    ):
        if group:
            report.first_failure = group[0]
            break
    return report


VIEW_FILES = frozenset({CSV_VIEW_FILE, JSONL_VIEW_FILE})


def _check_manifest_signature(
    files: Mapping[str, bytes],
    manifest_bytes: bytes,
    public_keys: Mapping[str, Ed25519PublicKey],
) -> Failure | None:
    try:
        signed = json.loads(files[MANIFEST_SIGNATURE_FILE])
        kid = str(signed["kid"])
        signature = bytes.fromhex(str(signed["signature"]))
    except (KeyError, ValueError, TypeError) as error:
        return Failure(0, "MANIFEST_INVALID", f"no readable signature: {error}")
    key = public_keys.get(kid)
    if key is None:
        return Failure(0, "MANIFEST_INVALID", f"signed by an unknown key {kid}")
    if not verify_signature(key, signature, manifest_signing_message(manifest_bytes)):
        return Failure(
            0, "MANIFEST_INVALID", "the manifest's signature does not verify"
        )
    return None


def _check_against(
    checkpoint: Mapping[str, Any],
    public_keys: Mapping[str, Ed25519PublicKey],
    hashes: Mapping[int, str],
    head_position: int,
    head_hash: str,
) -> tuple[Failure | None, bool]:
    """Check a checkpoint against the export; also say whether an entry matched it."""
    failure = check_checkpoint_signature(checkpoint, public_keys)
    if failure is not None:
        return failure, False
    position = int(checkpoint["position"])
    if position > head_position:
        return Failure(
            head_position + 1,
            "TRUNCATED",
            f"the export's ledger head is at {head_position} but a signed "
            f"checkpoint covers position {position}",
        ), False
    expected = hashes.get(position, head_hash if position == head_position else None)
    if expected is not None and expected != checkpoint["hash"]:
        return Failure(
            position,
            "CHECKPOINT_MISMATCH",
            f"checkpoint hash differs from the entry at {position}",
        ), False
    return None, position in hashes


def _check_scope(
    scope: Mapping[str, Any],
    manifest: Mapping[str, Any],
    items: Sequence[tuple[StoredEntry, dict[str, Any]]],
) -> list[Failure]:
    """Entries outside the asked scope, and holes in a key's stream versions."""
    if scope.get("kind") == "time_range":
        low, high = scope.get("from"), scope.get("to")
        for row, entry in items:
            at = entry["recorded_at"]
            if (isinstance(low, str) and at < low) or (
                isinstance(high, str) and at >= high
            ):
                return [Failure(row.position, "OUT_OF_SCOPE", f"recorded at {at}")]
        return []
    streams = manifest.get("streams")
    if scope.get("kind") != "keys" or not isinstance(streams, dict):
        return [Failure(0, "MANIFEST_INVALID", "unknown export scope")]
    wanted = {str(stream_id) for stream_id in streams.values()}
    # Exports that say so also hold the keys' usage entries, each a stream of
    # its own whose subject names the key.
    usage_subjects = (
        {f"key:{name}" for name in streams}
        if manifest.get("usage_included") is True
        else set()
    )
    versions: dict[str, int] = {}
    for row, entry in items:
        stream = str(entry.get("stream_id"))
        usage = (
            entry.get("type") == USAGE_TYPE and entry.get("subject") in usage_subjects
        )
        if stream not in wanted and not usage:
            return [Failure(row.position, "OUT_OF_SCOPE", f"stream {stream}")]
        expected = versions.get(stream, 0) + 1
        if entry.get("stream_version") != expected:
            return [
                Failure(
                    row.position,
                    "STREAM_GAP",
                    f"stream {stream} has version {entry.get('stream_version')} "
                    f"where {expected} was expected",
                )
            ]
        versions[stream] = expected
    return []


def _check_claims(
    manifest: Mapping[str, Any],
    rows: Sequence[StoredEntry],
    items: Sequence[tuple[StoredEntry, dict[str, Any]]],
    checkpoints: Sequence[Mapping[str, Any]],
    hashes: Mapping[int, str],
) -> list[Failure]:
    counts = manifest.get("counts") or {}
    covered = manifest.get("covered")
    claims: list[tuple[str, Any, Any]] = [
        ("entries", counts.get("entries"), len(rows)),
        ("checkpoints", counts.get("checkpoints"), len(checkpoints)),
    ]
    if items:
        claims.append(
            (
                "covered",
                covered,
                {
                    "first_position": items[0][0].position,
                    "last_position": items[-1][0].position,
                    "first_recorded_at": items[0][1]["recorded_at"],
                    "last_recorded_at": items[-1][1]["recorded_at"],
                },
            )
        )
    elif not rows:
        claims.append(("covered", covered, None))
    head = manifest["ledger_head"]
    if rows and rows[-1].position > int(head["position"]):
        claims.append(("ledger_head", head["position"], f">= {rows[-1].position}"))
    for name, claimed, found in claims:
        if claimed != found:
            return [
                Failure(
                    0,
                    "MANIFEST_MISMATCH",
                    f"the manifest says {name} {claimed!r}, "
                    f"the archive holds {found!r}",
                )
            ]
    return []


def _check_digests(
    files: Mapping[str, bytes], listed: Mapping[str, Any]
) -> list[Failure]:
    for name in sorted(
        set(files) - set(listed) - {MANIFEST_FILE, MANIFEST_SIGNATURE_FILE}
    ):
        return [Failure(0, "FILE_UNLISTED", f"{name} is not in the manifest")]
    for name, digest in sorted(listed.items()):
        if name not in files:
            return [Failure(0, "FILE_MISSING", f"{name} is missing")]
        if hashlib.sha256(files[name]).hexdigest() != digest:
            return [Failure(0, "FILE_DIGEST_MISMATCH", f"{name} has changed")]
    return []


# Command line -------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The verifier's options, shared with ``keyledger verify-export``."""
    parser.add_argument("export", help="The export archive (or its unpacked folder).")
    parser.add_argument(
        "--checkpoint",
        help="A checkpoint JSON kept earlier (GET /v1/ledger/head or POST "
        "/v1/ledger/checkpoints), to prove the export consistent with it.",
    )
    parser.add_argument("--json", action="store_true", help="Print the report as JSON.")


def run(args: argparse.Namespace, prog: str = "offline.py") -> int:
    """Verify the export ``args`` name, print the outcome, return the exit status."""
    try:
        outside = None
        if args.checkpoint:
            try:
                outside = load_checkpoint(Path(args.checkpoint).read_bytes())
            except OSError as error:
                raise UnreadableError(
                    f"cannot read {args.checkpoint}: {error}"
                ) from None
        files, duplicates = read_archive(Path(args.export))
    except UnreadableError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 2
    try:
        report = verify_export(files, duplicates=duplicates, outside_checkpoint=outside)
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        # A member shaped unlike anything an export writes: broken, not a crash.
        report = ExportReport(
            first_failure=Failure(0, "MANIFEST_INVALID", f"malformed archive: {error}")
        )
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(describe(report))
    return 0 if report.ok else 1


def describe(report: ExportReport) -> str:
    """The outcome of an export verification, for a person to read."""
    failure = report.first_failure
    if failure is not None:
        where = f"position {failure.position}" if failure.position else "the archive"
        return (
            f"export BROKEN at {where}: {failure.reason} ({failure.detail})\n"
            "do not rely on this export"
        )
    keys = ", ".join(f"{kid} ({count})" for kid, count in report.signing_keys.items())
    if report.entries == 0:
        summary = "export intact and EMPTY: no entries in the requested scope"
    else:
        summary = (
            f"export intact: {report.entries} entries, positions "
            f"{report.first_position}..{report.last_position}, recorded "
            f"{report.first_recorded_at} to {report.last_recorded_at}, signed by "
            f"{keys}"
        )
    head = report.ledger_head or {}
    return (
        f"{summary}\n{report.checkpoints_checked} checkpoints verified "
        f"({report.checkpoints_matched} matched an exported entry); ledger head at "
        f"export time: position {head.get('position')} {head.get('hash')}\n"
        f"{report.completeness}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the offline verifier as a script."""
    parser = argparse.ArgumentParser(
        prog="offline.py",
        description="Verify a keyledger export offline: no database, no network.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
