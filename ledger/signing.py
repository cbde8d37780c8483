"""The ledger's Ed25519 signing key: loading, generating and naming it."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ledger.offline import key_id, verify_signature

__all__ = [
    "TRUSTED_KEYS_DIR",
    "LedgerSigner",
    "key_id",
    "load_public_key",
    "load_trusted_keys",
    "public_key_pem",
    "save_trusted_key",
    "verify_signature",
    "write_secret_file",
]


def public_key_pem(public_key: Ed25519PublicKey) -> str:
    """The public key as PEM text, for verifiers to pin."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_public_key(pem: str | bytes) -> Ed25519PublicKey:
    """Load a PEM public key, refusing any key that is not Ed25519."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("The ledger's public key must be an Ed25519 key.")
    return key


class LedgerSigner:
    """Signs ledger entries and checkpoints. Its ``repr`` never shows the key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_key = private_key.public_key()
        self.kid = key_id(self.public_key)

    def __repr__(self) -> str:
        return f"LedgerSigner(kid={self.kid!r})"

    def sign(self, message: bytes) -> bytes:
        return self._private_key.sign(message)

    @classmethod
    def load_or_create(cls, path: Path) -> tuple[LedgerSigner, bool]:
        """Load the key at ``path``, or generate one there (mode 0600) if absent.

        Returns the signer and whether it was created now.
        """
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"{path} does not hold an Ed25519 private key.")
            return cls(key), False
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_secret_file(path, pem)
        return cls(key), True


def write_secret_file(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 and write ``data``; never overwrite a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


TRUSTED_KEYS_DIR = "trusted-keys"


def save_trusted_key(data_dir: Path, public_key: Ed25519PublicKey) -> Path:
    """Keep a pinned key (a replica's primary) as a trust root of this data folder."""
    folder = data_dir / TRUSTED_KEYS_DIR
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / (key_id(public_key).replace(":", "-") + ".pem")
    path.write_text(public_key_pem(public_key))
    return path


def load_trusted_keys(data_dir: Path) -> dict[str, Ed25519PublicKey]:
    """The other trust roots of this data folder's ledger, by key id."""
    keys = {}
    for path in sorted((data_dir / TRUSTED_KEYS_DIR).glob("*.pem")):
        public_key = load_public_key(path.read_bytes())
        keys[key_id(public_key)] = public_key
    return keys
