"""The backup bundle of one key: what it holds, how it is signed, how it is checked.

A bundle is one RFC 8785 canonical JSON document ``{"body", "signature"}``. The
body holds the key's settings, its policies (backup and dual control, since
format 2), its versions with states and fingerprints, their material wrapped
under the backup key (destroyed and trimmed versions have none), the key's
history exactly as stored on the ledger, and a checkpoint signed at the time of
the backup; bundles of format 1 (without policies) still open. The signature is
the ledger's Ed25519 key over the SHA-256 of the canonical body. A file whose
bytes are not exactly the canonical encoding of what they parse to is refused,
so every changed byte is caught by either that check or the signature.

``build_bundle`` and ``open_bundle`` are the whole interface; other formats
(Vault's transit backup) can wrap them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from backup.key import BackupKey
from domain.clock import format_time
from domain.errors import MaterialUnreadableError
from domain.keys import key_id_for
from ledger.entry import canonical_json, entry_hash
from ledger.material import UnwrapError, fingerprint
from ledger.offline import (
    check_checkpoint_signature,
    entry_signing_message,
    verify_signature,
)
from ledger.store import checkpoint_table

if TYPE_CHECKING:
    from ledger.service import KeyService
    from ledger.signing import LedgerSigner

FORMAT = "keyledger-backup/2"
# Formats that open; 1 is 2 without ``policy``.
READABLE_FORMATS = ("keyledger-backup/1", FORMAT)
SIGNING_CONTEXT = b"keyledger/backup-bundle/v1\n"
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
_KEY_FIELDS = (
    "name",
    "key_id",
    "algorithm",
    "description",
    "enabled",
    "primary",
    "min_decryption_version",
    "min_encryption_version",
    "min_available_version",
    "stream_version",
)


class BundleError(Exception):
    """A bundle failed a check; ``reason`` is a code, never secret bytes."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"The bundle failed verification ({reason}).")
        self.reason = reason


@dataclass(frozen=True)
class Bundle:
    """A bundle just built: its bytes and what the ledger records about it."""

    data: bytes = field(repr=False)
    digest: str
    versions: list[dict[str, Any]]
    checkpoint_position: int
    trimmed: list[int] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class OpenedBundle:
    """A bundle that passed every check, with its material unwrapped."""

    body: dict[str, Any]
    materials: dict[int, bytes] = field(repr=False)

    @property
    def key(self) -> dict[str, Any]:
        key: dict[str, Any] = self.body["key"]
        return key

    @property
    def versions(self) -> list[dict[str, Any]]:
        versions: list[dict[str, Any]] = self.body["versions"]
        return versions

    @property
    def policy(self) -> dict[str, Any] | None:
        """The key's policies when it was backed up (None in a format 1 bundle)."""
        policy: dict[str, Any] | None = self.body.get("policy")
        return policy


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build_bundle(
    service: KeyService,
    key_name: str,
    *,
    backup_key: BackupKey,
    backup_id: str,
    policy: dict[str, Any] | None = None,
) -> Bundle:
    """Build the signed bundle of ``key_name`` as it stands now.

    The key's history, its material and the head are read in one transaction
    holding the ledger's write lock, so they agree with each other and with the
    checkpoint signed (and stored) for that head. ``policy`` is the key's
    policies as the caller reads them: ``{"backup": ..., "dual_control": ...}``,
    each None when unknown.

    Raises:
        KeyNotFoundError: no key has that name.
        MaterialUnreadableError: kept material does not open under the KEK.
    """
    key = service._load(key_name)
    key_id = key.id
    ledger = service.ledger
    with ledger.exclusive() as transaction:
        head = transaction.query(
            f"SELECT notification_id, entry_hash, recorded_at FROM "
            f"{ledger.events_table_name} ORDER BY notification_id DESC LIMIT 1"
        )[0]
        rows = transaction.query(
            "SELECT notification_id, originator_version, state, entry_hash, "
            f"signature, kid FROM {ledger.events_table_name} "
            "WHERE originator_id = %s ORDER BY originator_version",
            (service._stream_param(key_id),),
        )
        wrapped_rows = transaction.query(
            "SELECT version, wrapped FROM key_material WHERE key_id = %s",
            (str(key_id),),
        )
        checkpoint = service.app.sequencer.checkpoint(
            head["notification_id"], head["entry_hash"], head["recorded_at"]
        )
        transaction.execute(
            [
                (
                    f"INSERT INTO {checkpoint_table(ledger.events_table_name)} "
                    "(position, hash, recorded_at, kid, signature) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (position) DO NOTHING",
                    (
                        checkpoint.position,
                        checkpoint.hash,
                        checkpoint.recorded_at,
                        checkpoint.kid,
                        checkpoint.signature,
                    ),
                )
            ]
        )
    stream_version = rows[-1]["originator_version"]
    if stream_version != key.version:
        key = service.app.repository.get(key_id, version=stream_version)
    material = {int(row["version"]): row["wrapped"] for row in wrapped_rows}
    kid = service.signer.kid
    versions = []
    for number in sorted(key.versions):
        view = key.version_view(number)
        view.pop("primary")
        wrapped = None
        if view["state"] != "destroyed" and number in material:
            plain = _kept_material(service, key.name, str(key_id), number, material)
            wrapped = base64.b64encode(
                backup_key.wrap(
                    plain, ledger_kid=kid, key_name=key.name, version=number
                )
            ).decode("ascii")
        view["wrapped"] = wrapped
        versions.append(view)
    summary = key.summary()
    body = {
        "format": FORMAT,
        "backup_id": backup_id,
        "ledger_kid": kid,
        "backup_key_id": backup_key.key_id,
        "taken_at": format_time(service.clock.now()),
        "key": {
            "name": key.name,
            "key_id": str(key_id),
            "algorithm": key.algorithm,
            "description": key.description,
            "enabled": key.enabled,
            "primary": key.primary,
            "min_decryption_version": key.min_decryption_version,
            "min_encryption_version": key.min_encryption_version,
            "min_available_version": key.min_available_version,
            "stream_version": summary["stream_version"],
        },
        "policy": {
            "backup": None,
            "dual_control": None,
            **(policy or {}),
        },
        "versions": versions,
        "history": [
            {
                "entry": bytes(row["state"]).decode("utf-8"),
                "hash": row["entry_hash"],
                "signature": bytes(row["signature"]).hex(),
                "kid": row["kid"],
            }
            for row in rows
        ],
        "checkpoint": checkpoint.as_json(),
    }
    data = seal(body, service.signer)
    return Bundle(
        data=data,
        digest=digest_of(data),
        versions=[
            {
                "version": item["version"],
                "state": item["state"],
                "material": item["wrapped"] is not None,
            }
            for item in versions
        ],
        checkpoint_position=checkpoint.position,
        trimmed=list(range(1, key.min_available_version)),
    )


def seal(body: dict[str, Any], signer: LedgerSigner) -> bytes:
    """The bundle file of ``body``: its canonical bytes and ``signer``'s signature."""
    body_bytes = canonical_json(body)
    signature = signer.sign(_signing_message(body_bytes))
    return _PREFIX + body_bytes + _MIDDLE + signature.hex().encode("ascii") + _SUFFIX


def _kept_material(
    service: KeyService,
    name: str,
    key_id: str,
    version: int,
    material: dict[int, str],
) -> bytes:
    try:
        return service.kek.unwrap(
            base64.b64decode(material[version]), key_id=key_id, version=version
        )
    except (UnwrapError, ValueError):
        raise MaterialUnreadableError(
            f"The material of version {version} of {name!r} could not be read.",
            key=name,
            version=version,
        ) from None


def open_bundle(
    data: bytes,
    *,
    public_keys: dict[str, Ed25519PublicKey],
    backup_key: BackupKey,
) -> OpenedBundle:
    """Check every part of a bundle and unwrap its material.

    Raises:
        BundleError: any check failed. ``FROM_OTHER_LEDGER`` when it is signed
            by a key not in ``public_keys``; ``OTHER_BACKUP_KEY`` when another
            backup key wrapped it; otherwise a reason code for the operator.
    """
    body, body_bytes, signature = _parse(data)
    kid = body["ledger_kid"]
    public_key = public_keys.get(kid)
    if public_key is None:
        raise BundleError("FROM_OTHER_LEDGER")
    if not verify_signature(public_key, signature, _signing_message(body_bytes)):
        raise BundleError("SIGNATURE")
    _check_history(body, public_keys)
    if body["backup_key_id"] != backup_key.key_id:
        raise BundleError("OTHER_BACKUP_KEY")
    return OpenedBundle(body, _unwrap_all(body, backup_key))


# The file is ``{"body":<canonical body>,"signature":"<hex>"}``: exactly the RFC 8785
# encoding of that document, built around the body's bytes so they are encoded once.
_PREFIX = b'{"body":'
_MIDDLE = b',"signature":"'
_SUFFIX = b'"}'
_SIGNATURE_HEX = 128


def _signing_message(body_bytes: bytes) -> bytes:
    return SIGNING_CONTEXT + hashlib.sha256(body_bytes).digest()


def _parse_outer(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError("TOO_LARGE")
    try:
        document = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BundleError("MALFORMED") from None
    if not isinstance(document, dict) or set(document) != {"body", "signature"}:
        raise BundleError("MALFORMED")
    return document


def _parse(data: bytes) -> tuple[dict[str, Any], bytes, bytes]:
    """The body, its exact bytes and the signature; every byte must be canonical."""
    document = _parse_outer(data)
    tail = len(_MIDDLE) + _SIGNATURE_HEX + len(_SUFFIX)
    if not data.startswith(_PREFIX) or not data.endswith(_SUFFIX) or len(data) < tail:
        raise BundleError("NOT_CANONICAL")
    body_bytes = data[len(_PREFIX) : -tail]
    signature_hex = data[-tail + len(_MIDDLE) : -len(_SUFFIX)]
    try:
        canonical = canonical_json(document["body"])
        signature = bytes.fromhex(signature_hex.decode("ascii"))
    except (TypeError, ValueError):
        raise BundleError("MALFORMED") from None
    if (
        canonical != body_bytes
        or data[-tail : -tail + len(_MIDDLE)] != _MIDDLE
        or signature_hex.decode("ascii") != document["signature"]
        or signature_hex != signature_hex.lower()
    ):
        raise BundleError("NOT_CANONICAL")
    body = document["body"]
    if not isinstance(body, dict) or body.get("format") not in READABLE_FORMATS:
        raise BundleError("UNKNOWN_FORMAT")
    if body["format"] == FORMAT and not isinstance(body.get("policy"), dict):
        raise BundleError("MALFORMED")
    required = {
        "backup_id",
        "ledger_kid",
        "backup_key_id",
        "taken_at",
        "key",
        "versions",
        "history",
        "checkpoint",
    }
    if not required <= set(body) or not isinstance(body["key"], dict):
        raise BundleError("MALFORMED")
    if not set(_KEY_FIELDS) <= set(body["key"]) or not isinstance(
        body["versions"], list
    ):
        raise BundleError("MALFORMED")
    return body, body_bytes, signature


def _check_history(
    body: dict[str, Any], public_keys: dict[str, Ed25519PublicKey]
) -> None:
    checkpoint = body["checkpoint"]
    try:
        record = dict(checkpoint)
        record["signature"] = bytes.fromhex(checkpoint["signature"])
        if check_checkpoint_signature(record, public_keys) is not None:
            raise BundleError("CHECKPOINT")
        key_id = body["key"]["key_id"]
        if key_id != str(key_id_for(body["key"]["name"])):
            raise BundleError("KEY_ID")
        for item in body["history"]:
            entry_bytes = _text(item["entry"]).encode("utf-8")
            hash_hex = entry_hash(entry_bytes)
            public_key = public_keys.get(item["kid"])
            if (
                hash_hex != item["hash"]
                or public_key is None
                or not verify_signature(
                    public_key,
                    bytes.fromhex(item["signature"]),
                    entry_signing_message(hash_hex),
                )
            ):
                raise BundleError("HISTORY")
            entry = json.loads(entry_bytes)
            if (
                entry["stream_id"] != key_id
                or entry["position"] > checkpoint["position"]
            ):
                raise BundleError("HISTORY")
    except (KeyError, TypeError, ValueError):
        raise BundleError("MALFORMED") from None


def _unwrap_all(body: dict[str, Any], backup_key: BackupKey) -> dict[int, bytes]:
    materials: dict[int, bytes] = {}
    name, kid = body["key"]["name"], body["ledger_kid"]
    for item in body["versions"]:
        wrapped = item.get("wrapped")
        if wrapped is None:
            continue
        number = int(item["version"])
        try:
            plain = backup_key.unwrap(
                base64.b64decode(_text(wrapped), validate=True),
                ledger_kid=kid,
                key_name=name,
                version=number,
            )
        except (UnwrapError, binascii.Error, ValueError):
            raise BundleError("MATERIAL") from None
        if fingerprint(plain) != item["fingerprint"]:
            raise BundleError("FINGERPRINT")
        materials[number] = plain
    return materials


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise BundleError("MALFORMED")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise ValueError("duplicate member")
        result[name] = value
    return result
