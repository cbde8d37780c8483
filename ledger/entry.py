"""The ledger entry: what is hashed, what is signed, and how a stored entry is checked.

An entry is the RFC 8785 canonical JSON of every field that describes one event:
position, previous hash, stream, type, times, actor, request id and payload. Its
hash is SHA-256 over exactly those stored bytes, and the signature is Ed25519 over
a domain-separated message holding that hash. Writing needs ``rfc8785``; the
checking side lives in ``ledger.offline``, which needs only the standard library
and ``cryptography``, and is re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ledger.offline import (
    CHECKPOINT_SIGNING_CONTEXT,
    ENTRY_FORMAT,
    ENTRY_SIGNING_CONTEXT,
    GENESIS_HASH,
    checkpoint_document,
    checkpoint_signing_message,
    entry_hash,
    entry_signing_message,
    parse_entry,
)

__all__ = [
    "CHECKPOINT_SIGNING_CONTEXT",
    "ENTRY_FORMAT",
    "ENTRY_SIGNING_CONTEXT",
    "GENESIS_HASH",
    "canonical_json",
    "checkpoint_document",
    "checkpoint_signing_message",
    "entry_hash",
    "entry_signing_message",
    "parse_entry",
]


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
