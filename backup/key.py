"""The backup key: wraps key material inside bundles, and is never the KEK.

A dedicated AES-256 key kept in the data folder beside the KEK (mode 0600), so
that losing the database does not lose the ability to read backups, and a stolen
bundle alone reveals nothing. Wrapping is AES-256-GCM bound to the source
ledger, the key name and the version, so material cannot be moved between slots
of a bundle unnoticed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ledger.material import UnwrapError
from ledger.signing import write_secret_file

BACKUP_KEY_FILE = "backup-key.bin"
_NONCE_BYTES = 12
_ID_CONTEXT = b"keyledger/backup-key-id/v1\n"


def _binding(ledger_kid: str, key_name: str, version: int) -> bytes:
    return f"keyledger/backup-material/v1\n{ledger_kid}\n{key_name}\n{version}".encode()


class BackupKey:
    """Wraps and unwraps material in bundles. Its ``repr`` never shows the key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("The backup key must be 32 bytes.")
        self._aead = AESGCM(key)
        # A one-way name for the key, so a bundle can say which key opens it.
        self.key_id = "bk_" + hashlib.sha256(_ID_CONTEXT + key).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"BackupKey(key_id={self.key_id!r})"

    def wrap(
        self, material: bytes, *, ledger_kid: str, key_name: str, version: int
    ) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        binding = _binding(ledger_kid, key_name, version)
        return nonce + self._aead.encrypt(nonce, material, binding)

    def unwrap(
        self, wrapped: bytes, *, ledger_kid: str, key_name: str, version: int
    ) -> bytes:
        """Open wrapped material; any failure is the same opaque ``UnwrapError``."""
        try:
            return self._aead.decrypt(
                wrapped[:_NONCE_BYTES],
                wrapped[_NONCE_BYTES:],
                _binding(ledger_kid, key_name, version),
            )
        except (InvalidTag, ValueError):
            raise UnwrapError(
                f"Backup material of {key_name} version {version} could not be "
                "unwrapped."
            ) from None

    @classmethod
    def load_or_create(cls, data_dir: Path, *, create: bool = True) -> BackupKey:
        """The backup key in ``data_dir``, generated there (0600) on first use.

        Raises:
            FileNotFoundError: ``create`` is false and there is no backup key.
            PermissionError: the file can be read by group or others.
        """
        path = data_dir / BACKUP_KEY_FILE
        if path.exists():
            if path.stat().st_mode & 0o077:
                raise PermissionError(
                    f"{path} can be read by others; run: chmod 600 {path}"
                )
            return cls(path.read_bytes())
        if not create:
            raise FileNotFoundError(
                f"{data_dir} holds no backup key ({BACKUP_KEY_FILE}); copy the "
                "source service's backup key there to read its bundles."
            )
        key = AESGCM.generate_key(bit_length=256)
        try:
            write_secret_file(path, key)
        except FileExistsError:
            # Another process (the service, a tool) created it first: use that one.
            return cls(path.read_bytes())
        return cls(key)
