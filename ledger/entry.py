"""The ledger entry: what is hashed, what is signed, and how a stored entry is checked.

An entry is the RFC 8785 canonical JSON of every field that describes one event:
position, previous hash, stream, type, times, actor, request id and payload. Its
hash is SHA-256 over exactly those stored bytes, and the signature is Ed25519 over
a domain-separated message holding that hash. This module uses only the standard
library and ``cryptography`` for checking, so offline verifiers can reuse it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

ENTRY_FORMAT = 1
GENESIS_HASH = "0" * 64
ENTRY_SIGNING_CONTEXT = b"keyledger/entry/v1\n"
CHECKPOINT_SIGNING_CONTEXT = b"keyledger/checkpoint/v1\n"


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` as RFC 8785 canonical JSON, refusing floating-point numbers.

    Raises:
        TypeError: a float (or anything not JSON) is somewhere in ``value``.
    """
    import rfc8785  # imported here so offline checking needs only the stdlib

    _refuse_floats(value)
    return rfc8785.dumps(value)


def _refuse_floats(value: Any) -> None:
    if isinstance(value, float):
        raise TypeError("Floating-point numbers are not allowed in signed payloads.")
    if isinstance(value, Mapping):
        for item in value.values():
            _refuse_floats(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _refuse_floats(item)


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
    return CHECKPOINT_SIGNING_CONTEXT + canonical_json(dict(document))


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
