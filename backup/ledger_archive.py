"""The whole-ledger archive: every entry, every checkpoint and all key material.

An archive is one RFC 8785 canonical JSON document ``{"body", "signature"}``
like a bundle: the entries exactly as stored (bytes, hash, signature, key id), the
stored checkpoints plus one signed at the head when the archive was taken, and
every kept version's material wrapped under the backup key. Restoring checks
the signature, walks the whole chain with the same checks an auditor runs
(``ledger.verify``), unwraps every blob, and only then writes anything, into an
empty ledger, in one transaction.

Limitation: the archive is built and checked in memory, so its size is bounded
by RAM; a ledger of millions of entries needs a streamed format.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from backup.bundle import BundleError, digest_of
from backup.key import BackupKey
from domain.clock import format_time
from ledger.entry import canonical_json
from ledger.material import UnwrapError
from ledger.offline import verify_signature
from ledger.store import checkpoint_table
from ledger.verify import verify_rows

if TYPE_CHECKING:
    from ledger.service import KeyService
    from ledger.store import Statement

FORMAT = "keyledger-ledger-archive/1"
SIGNING_CONTEXT = b"keyledger/ledger-archive/v1\n"
MAX_ARCHIVE_BYTES = 1024 * 1024 * 1024


@dataclass(frozen=True)
class Archive:
    """An archive just built: its bytes, digest and the head it covers."""

    data: bytes = field(repr=False)
    digest: str
    head_position: int


@dataclass(frozen=True)
class OpenedArchive:
    """An archive that passed every check, its material unwrapped."""

    body: dict[str, Any]
    materials: dict[tuple[str, int], bytes] = field(repr=False)


def build_archive(service: KeyService, *, backup_key: BackupKey) -> Archive:
    """Archive the whole ledger as it stands, read under the ledger's write lock."""
    ledger = service.ledger
    checkpoints_table = checkpoint_table(ledger.events_table_name)
    with ledger.exclusive() as transaction:
        rows = transaction.query(
            "SELECT notification_id, originator_id, originator_version, topic, state, "
            f"entry_hash, signature, kid FROM {ledger.events_table_name} "
            "ORDER BY notification_id"
        )
        stored = transaction.query(
            "SELECT position, hash, recorded_at, kid, signature "
            f"FROM {checkpoints_table} ORDER BY position"
        )
        material = transaction.query(
            "SELECT key_id, version, wrapped FROM key_material ORDER BY key_id, version"
        )
    if not rows:
        raise BundleError("EMPTY_LEDGER")
    last = rows[-1]
    head = service.app.sequencer.checkpoint(
        last["notification_id"], last["entry_hash"], _recorded_at(last["state"])
    )
    kid = service.signer.kid
    body = {
        "format": FORMAT,
        "ledger_kid": kid,
        "backup_key_id": backup_key.key_id,
        "taken_at": format_time(service.clock.now()),
        "entries": [
            {
                "position": row["notification_id"],
                "stream_id": str(uuid.UUID(str(row["originator_id"]))),
                "stream_version": row["originator_version"],
                "topic": row["topic"],
                "entry": bytes(row["state"]).decode("utf-8"),
                "hash": row["entry_hash"],
                "signature": bytes(row["signature"]).hex(),
                "kid": row["kid"],
            }
            for row in rows
        ],
        "checkpoints": [
            {**row, "signature": bytes(row["signature"]).hex()} for row in stored
        ],
        "head": head.as_json(),
        "material": [
            {
                "key_id": row["key_id"],
                "version": int(row["version"]),
                "wrapped": _rewrap(service, backup_key, row),
            }
            for row in material
        ],
    }
    signature = service.signer.sign(_message(body))
    data = canonical_json({"body": body, "signature": signature.hex()})
    return Archive(data, digest_of(data), int(last["notification_id"]))


def open_archive(
    data: bytes,
    *,
    public_keys: dict[str, Ed25519PublicKey],
    backup_key: BackupKey,
) -> OpenedArchive:
    """Check the archive's signature, every entry and checkpoint, and every blob.

    Raises:
        BundleError: with a reason code (``FROM_OTHER_LEDGER``, ``SIGNATURE``,
            ``CHAIN:<reason>``, ``MATERIAL``, ...); nothing was written.
    """
    if len(data) > MAX_ARCHIVE_BYTES:
        raise BundleError("TOO_LARGE")
    try:
        document = json.loads(data.decode("utf-8"))
        body = document["body"]
        if canonical_json(document) != data or body["format"] != FORMAT:
            raise BundleError("MALFORMED")
        public_key = public_keys.get(body["ledger_kid"])
        if public_key is None:
            raise BundleError("FROM_OTHER_LEDGER")
        if not verify_signature(
            public_key, bytes.fromhex(document["signature"]), _message(body)
        ):
            raise BundleError("SIGNATURE")
        report = verify_rows(
            (_row(entry) for entry in body["entries"]),
            [
                {**item, "signature": bytes.fromhex(item["signature"])}
                for item in [*body["checkpoints"], body["head"]]
            ],
            public_keys,
        )
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise BundleError("MALFORMED") from None
    if not report.ok:
        failure = report.first_failure
        raise BundleError(f"CHAIN:{failure.reason if failure else 'unknown'}")
    if body["backup_key_id"] != backup_key.key_id:
        raise BundleError("OTHER_BACKUP_KEY")
    materials = {}
    for item in body["material"]:
        try:
            materials[(item["key_id"], int(item["version"]))] = backup_key.unwrap(
                base64.b64decode(item["wrapped"], validate=True),
                ledger_kid=body["ledger_kid"],
                key_name=item["key_id"],
                version=int(item["version"]),
            )
        except (UnwrapError, binascii.Error, ValueError, KeyError, TypeError):
            raise BundleError("MATERIAL") from None
    return OpenedArchive(body, materials)


def restore_statements(service: KeyService, opened: OpenedArchive) -> list[Statement]:
    """The writes that put the archive's entries, checkpoints and material back."""
    ledger = service.ledger
    sqlite = ledger.__class__.__name__.startswith("SQLite")
    statements: list[Statement] = []
    for entry in opened.body["entries"]:
        stream = uuid.UUID(entry["stream_id"])
        statements.append(
            (
                f"INSERT INTO {ledger.events_table_name} (notification_id, "
                "originator_id, originator_version, topic, state, entry_hash, "
                "signature, kid, recorded_at) VALUES (%s, %s, %s, %s, %s, %s, %s, "
                "%s, %s)",
                (
                    entry["position"],
                    stream.hex if sqlite else stream,
                    entry["stream_version"],
                    entry["topic"],
                    entry["entry"].encode("utf-8"),
                    entry["hash"],
                    bytes.fromhex(entry["signature"]),
                    entry["kid"],
                    _recorded_at(entry["entry"].encode("utf-8")),
                ),
            )
        )
    for item in [*opened.body["checkpoints"], opened.body["head"]]:
        statements.append(
            (
                f"INSERT INTO {checkpoint_table(ledger.events_table_name)} "
                "(position, hash, recorded_at, kid, signature) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (position) DO NOTHING",
                (
                    item["position"],
                    item["hash"],
                    item["recorded_at"],
                    item["kid"],
                    bytes.fromhex(item["signature"]),
                ),
            )
        )
    for (key_id, version), material in sorted(opened.materials.items()):
        statements.append(service._put_material(key_id, version, material))
    return statements


def _rewrap(service: KeyService, backup_key: BackupKey, row: dict[str, Any]) -> str:
    from backup.bundle import _kept_material

    version = int(row["version"])
    plain = _kept_material(
        service, row["key_id"], row["key_id"], version, {version: row["wrapped"]}
    )
    wrapped = backup_key.wrap(
        plain, ledger_kid=service.signer.kid, key_name=row["key_id"], version=version
    )
    return base64.b64encode(wrapped).decode("ascii")


def _row(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "notification_id": entry["position"],
        "originator_id": entry["stream_id"],
        "originator_version": entry["stream_version"],
        "topic": entry["topic"],
        "state": entry["entry"].encode("utf-8"),
        "entry_hash": entry["hash"],
        "signature": bytes.fromhex(entry["signature"]),
        "kid": entry["kid"],
    }


def _recorded_at(state: Any) -> str:
    recorded: str = json.loads(bytes(state))["recorded_at"]
    return recorded


def _message(body: dict[str, Any]) -> bytes:
    import hashlib

    return SIGNING_CONTEXT + hashlib.sha256(canonical_json(body)).digest()
