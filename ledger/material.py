"""Key material: generation, wrapping under the key-encryption key, fingerprints.

Material never leaves this module unwrapped except to a caller that asked for it;
the ledger stores only wrapped blobs, outside the events, and events carry only a
fingerprint.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ledger.signing import write_secret_file

_FINGERPRINT_CONTEXT = b"keyledger/fingerprint/v1\n"
_NONCE_BYTES = 12


class UnwrapError(Exception):
    """Wrapped material could not be opened. The message never says why."""


def generate_material(algorithm: str) -> bytes:
    """Fresh secret material for ``algorithm``."""
    if algorithm == "aes-256-gcm":
        return AESGCM.generate_key(bit_length=256)
    raise ValueError(f"No material generator for algorithm {algorithm!r}.")


def fingerprint(material: bytes) -> str:
    """A one-way, domain-separated SHA-256 fingerprint of secret material."""
    return "sha256:" + hashlib.sha256(_FINGERPRINT_CONTEXT + material).hexdigest()


def _binding(key_id: str, version: int) -> bytes:
    return f"keyledger/material/v1\n{key_id}\n{version}".encode()


class KeyEncryptionKey:
    """The KEK: wraps material with AES-256-GCM bound to the key id and version."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("The key-encryption key must be 32 bytes.")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "KeyEncryptionKey(<redacted>)"

    def wrap(self, material: bytes, *, key_id: str, version: int) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, material, _binding(key_id, version))

    def unwrap(self, wrapped: bytes, *, key_id: str, version: int) -> bytes:
        """Open wrapped material; any failure is the same opaque ``UnwrapError``."""
        try:
            return self._aead.decrypt(
                wrapped[:_NONCE_BYTES],
                wrapped[_NONCE_BYTES:],
                _binding(key_id, version),
            )
        except (InvalidTag, ValueError):
            raise UnwrapError(
                f"Material of {key_id} version {version} could not be unwrapped."
            ) from None

    @classmethod
    def load_or_create(cls, path: Path) -> tuple[KeyEncryptionKey, bool]:
        """Load the KEK at ``path``, or generate one there (mode 0600) if absent."""
        if path.exists():
            return cls(path.read_bytes()), False
        key = AESGCM.generate_key(bit_length=256)
        write_secret_file(path, key)
        return cls(key), True
