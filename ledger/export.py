"""Compliance exports: a time range or a set of keys as one signed zip archive.

The archive holds the entries exactly as stored, the signed checkpoints over
them, the public signing keys, CSV and JSON Lines views, a copy of the offline
verifier (``ledger/offline.py``) and a manifest with the SHA-256 of every other
member, signed by the ledger key. ``keyledger verify-export`` (or the copied
verifier on its own) checks it without the service.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from domain.clock import format_time
from domain.errors import InvalidArgumentError, LedgerBrokenError
from domain.keys import key_id_for, validate_key_name
from domain.usage import KeyUse
from ledger import offline
from ledger.service import KeyService
from ledger.signing import public_key_pem
from ledger.store import checkpoint_table
from ledger.verify import stored_entry, verify_ledger

PAGE = 2000

_README = """\
keyledger export
================

manifest.json       what was asked, the positions and times covered, counts, the
                    ledger head at export time and the SHA-256 of every member
manifest.sig        the manifest's Ed25519 signature by the ledger key
entries.jsonl       the entries exactly as stored: base64 of the stored bytes,
                    hash, signature, key id, position, stream columns
checkpoints.json    signed checkpoints over the exported entries, and the latest
keys/*.pem          the public signing keys, named by key id
views/entries.csv   a spreadsheet view (cells starting with = + - @ tab or CR
                    carry a leading apostrophe; control characters are escaped)
views/entries.jsonl the same view as JSON Lines, for SIEM tools
verifier/offline.py the offline verifier: needs only Python 3.11+ and the
                    'cryptography' package

Verify:  python verifier/offline.py THIS_ARCHIVE.zip [--checkpoint KEPT.json]

Without a checkpoint you kept earlier (GET /v1/ledger/head), the verifier can
prove the export intact and signed, but not complete.
"""


@dataclass(frozen=True)
class ExportScope:
    """What an export holds: entries recorded in [from, to), or whole keys."""

    from_time: datetime | None = None
    to_time: datetime | None = None
    keys: tuple[str, ...] = ()

    def validated(self) -> ExportScope:
        """The scope if it asks one clear question; else ``InvalidArgumentError``."""
        if self.keys and (self.from_time or self.to_time):
            raise InvalidArgumentError(
                "Export a time range or a set of keys, not both.",
                code="INVALID_EXPORT_SCOPE",
            )
        for name in self.keys:
            validate_key_name(name)
        if self.from_time and self.to_time and self.from_time >= self.to_time:
            raise InvalidArgumentError(
                "'from' must be earlier than 'to'.", code="INVALID_TIME"
            )
        return self

    def as_json(self) -> dict[str, Any]:
        if self.keys:
            return {"kind": "keys", "keys": sorted(set(self.keys))}
        return {
            "kind": "time_range",
            "from": format_time(self.from_time) if self.from_time else None,
            "to": format_time(self.to_time) if self.to_time else None,
        }


@dataclass(frozen=True)
class Export:
    """A built export: the archive's bytes, a file name for it, and its manifest."""

    data: bytes
    filename: str
    manifest: dict[str, Any]


def build_export(service: KeyService, scope: ExportScope) -> Export:
    """Build the export archive of ``scope`` as of the ledger's current head.

    The whole ledger is verified first: an export MUST never carry evidence
    from a broken ledger, so one is refused rather than marked.

    Limitation: the archive is built in memory, and the ledger is read twice
    (once to verify, once to export), so an export's size is bounded by RAM.

    Raises:
        InvalidArgumentError: the scope mixes keys and times, or is malformed.
        KeyNotFoundError: a named key does not exist.
        LedgerBrokenError: verification failed; ``details`` name the position
            and the reason code.
    """
    scope = scope.validated()
    ledger = service.ledger
    streams = {name: str(key_id_for(name)) for name in sorted(set(scope.keys))}
    for name in streams:
        service.history(name, limit=1)  # raises KeyNotFoundError for an unknown key

    # Verify first, then read only what the verified head covered.
    head = ledger.head()
    report = verify_ledger(ledger, service.public_keys())
    if report.first_failure is not None:
        failure = report.first_failure
        raise LedgerBrokenError(
            f"The ledger is broken at position {failure.position} "
            f"({failure.reason}); nothing was exported.",
            position=failure.position,
            reason=failure.reason,
        )
    rows = [stored_entry(row) for row in _select(service, scope, head.position)]
    positions = {row.position for row in rows}
    all_checkpoints = ledger.query(
        "SELECT position, hash, recorded_at, kid, signature FROM "
        f"{checkpoint_table(ledger.events_table_name)} WHERE position <= %s "
        "ORDER BY position",
        (head.position,),
    )
    # The checkpoints over exported entries, and the latest one at the head.
    low = rows[0].position if rows and not scope.keys else 0
    high = rows[-1].position if rows and not scope.keys else -1
    checkpoints = [
        checkpoint
        for index, checkpoint in enumerate(all_checkpoints)
        if checkpoint["position"] in positions
        or low <= checkpoint["position"] <= high
        or index == len(all_checkpoints) - 1
    ]
    return _assemble(service, scope, streams, head, rows, checkpoints, report.checked)


def _select(service: KeyService, scope: ExportScope, head: int) -> list[dict[str, Any]]:
    ledger = service.ledger
    columns = (
        "SELECT notification_id, originator_id, originator_version, topic, state, "
        f"entry_hash, signature, kid FROM {ledger.events_table_name} "
    )
    clauses = ["notification_id > %s", "notification_id <= %s"]
    params: list[Any] = [head]
    if scope.keys:
        ids = [service._stream_param(key_id_for(name)) for name in set(scope.keys)]
        clauses.append(f"originator_id IN ({', '.join(['%s'] * len(ids))})")
        params += ids
    if scope.from_time:
        clauses.append("recorded_at >= %s")
        params.append(format_time(scope.from_time))
    if scope.to_time:
        clauses.append("recorded_at < %s")
        params.append(format_time(scope.to_time))
    rows = _paged(service, columns, clauses, params)
    if scope.keys:
        rows += _usage_rows(service, columns, set(scope.keys), head)
        rows.sort(key=lambda row: int(row["notification_id"]))
    return rows


def _paged(
    service: KeyService, columns: str, clauses: list[str], params: list[Any]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    after = 0
    while True:
        page = service.ledger.query(
            f"{columns} WHERE {' AND '.join(clauses)} "
            "ORDER BY notification_id LIMIT %s",
            (after, *params, PAGE),
        )
        rows += page
        if len(page) < PAGE:
            return rows
        after = page[-1]["notification_id"]


def _usage_rows(
    service: KeyService, columns: str, names: set[str], head: int
) -> list[dict[str, Any]]:
    """The usage entries of the named keys up to ``head``.

    A use is a stream of its own; its entry's subject ``key:<name>`` names the
    key. Limitation: this reads every usage entry of the ledger to find them.
    """
    subjects = {f"key:{name}" for name in names}
    clauses = ["notification_id > %s", "notification_id <= %s", "topic = %s"]
    rows = _paged(service, columns, clauses, [head, KeyUse.KeyUsed.TOPIC])
    return [
        row
        for row in rows
        if offline.parse_entry(stored_entry(row).entry_bytes or b"").get("subject")
        in subjects
    ]


def _assemble(
    service: KeyService,
    scope: ExportScope,
    streams: dict[str, str],
    head: Any,
    rows: list[offline.StoredEntry],
    checkpoints: list[dict[str, Any]],
    verified: int,
) -> Export:
    created_at = format_time(service.clock.now())
    public_keys = service.public_keys()
    kids = sorted(
        {row.kid for row in rows}
        | {str(checkpoint["kid"]) for checkpoint in checkpoints}
        | {service.signer.kid}
    )
    entries = [(row, offline.parse_entry(row.entry_bytes or b"")) for row in rows]
    files: dict[str, bytes] = {
        "README.txt": _README.encode("utf-8"),
        offline.ENTRIES_FILE: b"".join(offline.export_line(row) for row in rows),
        offline.CHECKPOINTS_FILE: _checkpoints_json(checkpoints),
        **offline.render_views(entries),
        offline.VERIFIER_FILE: Path(offline.__file__).read_bytes(),
    }
    key_files = []
    for kid in kids:
        name = f"keys/{kid.replace(':', '_')}.pem"
        files[name] = public_key_pem(public_keys[kid]).encode("ascii")
        key_files.append({"kid": kid, "file": name})
    covered = None
    if entries:
        covered = {
            "first_position": rows[0].position,
            "last_position": rows[-1].position,
            "first_recorded_at": entries[0][1]["recorded_at"],
            "last_recorded_at": entries[-1][1]["recorded_at"],
        }
    manifest: dict[str, Any] = {
        "format": offline.EXPORT_FORMAT,
        "created_at": created_at,
        "scope": scope.as_json(),
        "ledger_head": {
            "position": head.position,
            "hash": head.hash,
            "recorded_at": head.recorded_at,
        },
        "verified_at_export": {"ok": True, "entries_checked": verified},
        "covered": covered,
        "counts": {"entries": len(rows), "checkpoints": len(checkpoints)},
        "signing_keys": key_files,
        "files": {
            name: hashlib.sha256(data).hexdigest()
            for name, data in sorted(files.items())
        },
        "verifier": f"python {offline.VERIFIER_FILE} THIS_ARCHIVE",
    }
    if scope.keys:
        manifest["streams"] = streams
        # The keys' usage entries are in too: each a stream of its own, named by
        # its subject ``key:<name>``.
        manifest["usage_included"] = True
    manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    signature = service.signer.sign(offline.manifest_signing_message(manifest_bytes))
    files[offline.MANIFEST_FILE] = manifest_bytes
    files[offline.MANIFEST_SIGNATURE_FILE] = (
        json.dumps(
            {
                "kid": service.signer.kid,
                "algorithm": "ed25519",
                "signature": signature.hex(),
            },
            indent=2,
        )
        + "\n"
    ).encode()
    stamp = created_at.replace("-", "").replace(":", "")[:15]
    span = (
        f"p{covered['first_position']}-{covered['last_position']}"
        if covered
        else "empty"
    )
    return Export(
        data=_zip(files, created_at),
        filename=f"keyledger-export-{stamp}Z-{span}.zip",
        manifest=manifest,
    )


def _checkpoints_json(checkpoints: list[dict[str, Any]]) -> bytes:
    items = [
        {
            "position": int(checkpoint["position"]),
            "hash": checkpoint["hash"],
            "recorded_at": checkpoint["recorded_at"],
            "kid": checkpoint["kid"],
            "signature": bytes(checkpoint["signature"]).hex(),
        }
        for checkpoint in checkpoints
    ]
    return (json.dumps(items, indent=2) + "\n").encode()


def _zip(files: dict[str, bytes], created_at: str) -> bytes:
    when = datetime.fromisoformat(created_at)
    stamp = (when.year, when.month, when.day, when.hour, when.minute, when.second)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        first = [offline.MANIFEST_FILE, offline.MANIFEST_SIGNATURE_FILE]
        for name in [*first, *sorted(set(files) - set(first))]:
            info = zipfile.ZipInfo(name, date_time=max(stamp, (1980, 1, 1, 0, 0, 0)))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, files[name])
    return buffer.getvalue()
