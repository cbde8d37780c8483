"""Data encryption under a key version: AES-256-GCM and the ciphertext format.

A ciphertext is ``keyledger:v<N>:<base64(nonce || ciphertext || tag)>``: it names
the key version that made it (the Vault transit API writes and reads the same with
``vault`` as its prefix, and each API accepts only its own), a fresh 96-bit nonce
per message, and the caller's optional context bound as associated data. Any
failure to open a well-formed ciphertext (wrong key, wrong context, tampering,
truncation) is the one opaque ``DecryptionFailedError``.
"""

from __future__ import annotations

import base64
import binascii
import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from domain.errors import InvalidArgumentError
from domain.keys import MAX_VERSION

PREFIX = "keyledger"
VAULT_PREFIX = "vault"
NONCE_BYTES = 12
DATA_KEY_BYTES = 32
_CIPHERTEXT = re.compile(r"([a-z]+):v([1-9][0-9]{0,9}):([A-Za-z0-9+/=]+)")


class DecryptionFailedError(InvalidArgumentError):
    """A ciphertext did not open; the message never says why (no oracle)."""

    code = "DECRYPTION_FAILED"

    def __init__(self) -> None:
        super().__init__(
            "The ciphertext could not be decrypted with this key and context."
        )


def decode_base64(text: str, *, field: str, allow_empty: bool) -> bytes:
    """Strict standard base64 (padding required, no whitespace), else 422."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise InvalidArgumentError(
            f"{field} must be standard base64.",
            code=f"INVALID_{field.upper()}",
            field=field,
        ) from None
    if not data and not allow_empty:
        raise InvalidArgumentError(
            f"{field} must not be empty.", code=f"INVALID_{field.upper()}", field=field
        )
    return data


def parse_ciphertext(text: str, prefix: str = PREFIX) -> tuple[int, bytes]:
    """The version a ciphertext names and its sealed bytes; 422 if malformed.

    Only ``prefix`` is accepted: each API reads the ciphertexts it writes.
    """
    match = _CIPHERTEXT.fullmatch(text)
    if match is None or match.group(1) != prefix or int(match.group(2)) > MAX_VERSION:
        raise InvalidArgumentError(
            f"A ciphertext is {prefix}:v<version>:<base64>, with a version from 1 "
            f"to {MAX_VERSION}.",
            code="INVALID_CIPHERTEXT",
            field="ciphertext",
        )
    sealed = decode_base64(match.group(3), field="ciphertext", allow_empty=False)
    return int(match.group(2)), sealed


def encrypt(
    aead: AESGCM,
    version: int,
    plaintext: bytes,
    context: bytes,
    prefix: str = PREFIX,
) -> str:
    """Seal ``plaintext`` under a fresh nonce, binding ``context``."""
    nonce = os.urandom(NONCE_BYTES)
    sealed = nonce + aead.encrypt(nonce, plaintext, context or None)
    return f"{prefix}:v{version}:{base64.b64encode(sealed).decode('ascii')}"


def decrypt(aead: AESGCM, sealed: bytes, context: bytes) -> bytes:
    """Open sealed bytes; any failure is ``DecryptionFailedError``."""
    try:
        return aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], context or None)
    except (InvalidTag, ValueError):
        raise DecryptionFailedError() from None


def new_data_key(size: int = DATA_KEY_BYTES) -> bytes:
    """A fresh data key of ``size`` bytes (256 bits unless asked otherwise)."""
    return os.urandom(size)
