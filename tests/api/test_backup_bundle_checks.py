"""Bundles that are validly signed yet wrong for this ledger, built with our own code.

A twin ledger signs with this ledger's key but holds other material for a key of
the same name: its bundle passes every signature check, and only the comparison
of fingerprints with this ledger catches it. A bundle wrapped under another
backup key is refused by name. Both record nothing on restore.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.runtime import Runtime
from backup import service as backup_service
from backup.bundle import Bundle, build_bundle
from backup.key import BackupKey
from ledger.material import KeyEncryptionKey
from ledger.service import CommandContext, KeyService
from tests.api._support import assert_refused, create, post_ok
from tests.api.test_backup_restore import b64, restore
from tests.api.test_backups import configure_targets, status_of, take
from tests.conftest import ADMIN


@pytest.fixture
def folders(client: TestClient, tmp_path: Path) -> dict[str, Path]:
    return configure_targets(client, tmp_path / "targets")


@pytest.fixture
def twin(runtime: Runtime, tmp_path: Path) -> Iterator[KeyService]:
    """A ledger signing with this ledger's key, holding its own ``k1``."""
    service = KeyService.open(
        database_url=f"sqlite:///{tmp_path / 'twin.sqlite3'}",
        signer=runtime.service.signer,
        kek=KeyEncryptionKey(os.urandom(32)),
        clock=runtime.clock,
    )
    service.create_key(CommandContext(ADMIN, "req-twin"), name="k1")
    yield service
    service.close()


def take_with(
    client: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    make: Any,
) -> dict[str, Any]:
    """Take a backup of k1 whose bundle is ``make(backup_id)`` instead of its own."""

    def substitute(
        service: KeyService, key_name: str, *, backup_key: BackupKey, backup_id: str
    ) -> Bundle:
        bundle: Bundle = make(backup_id)
        return bundle

    with monkeypatch.context() as patch:
        patch.setattr(backup_service, "build_bundle", substitute)
        return take(client, "k1")


def material_rows(runtime: Runtime) -> list[dict[str, Any]]:
    return runtime.service.ledger.query(
        "SELECT key_id, version, wrapped FROM key_material ORDER BY key_id, version"
    )


def test_a_signed_bundle_with_other_fingerprints_fails_every_copy(
    client: TestClient,
    runtime: Runtime,
    folders: dict[str, Path],
    twin: KeyService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Verification records FINGERPRINT_MISMATCH per copy; restoring it is refused."""
    create(client, "k1")
    backup_key = runtime.backups.backup_key
    taken = take_with(
        client,
        monkeypatch,
        lambda backup_id: build_bundle(
            twin, "k1", backup_key=backup_key, backup_id=backup_id
        ),
    )

    verified = post_ok(client, f"/v1/backups/{taken['backup_id']}/verify")

    codes = {r["target"]: r["code"] for r in verified["backup"]["verification"]}
    assert codes == {"dc1": "FINGERPRINT_MISMATCH", "dc2": "FINGERPRINT_MISMATCH"}
    assert [r["type"] for r in verified["receipts"]] == [
        "keyledger.backup.BackupVerified"
    ]
    assert status_of(client, "k1")["status"] == "verification_failed"
    before = material_rows(runtime)
    assert_refused(
        client,
        "k1",
        lambda: restore(client, "k1", backup_id=taken["backup_id"]),
        409,
        "BUNDLE_MISMATCH",
    )
    assert material_rows(runtime) == before


def test_a_bundle_under_another_backup_key_is_refused_by_name(
    client: TestClient,
    runtime: Runtime,
    folders: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """BUNDLE_OTHER_BACKUP_KEY on restore, in place or as a copy; and on verify."""
    create(client, "k1")
    other_key = BackupKey.load_or_create(tmp_path / "other-backup-key")
    assert other_key.key_id != runtime.backups.backup_key.key_id
    bundle = build_bundle(
        runtime.service, "k1", backup_key=other_key, backup_id="bkp_" + "1" * 24
    )
    before = material_rows(runtime)

    for name, into in (("k1", None), ("k1-copy", "k1-copy")):
        assert_refused(
            client,
            name,
            lambda into=into: restore(  # type: ignore[misc]
                client, "k1", bundle=b64(bundle.data), into=into
            ),
            409,
            "BUNDLE_OTHER_BACKUP_KEY",
        )
    assert material_rows(runtime) == before

    taken = take_with(
        client,
        monkeypatch,
        lambda backup_id: build_bundle(
            runtime.service, "k1", backup_key=other_key, backup_id=backup_id
        ),
    )
    verified = post_ok(client, f"/v1/backups/{taken['backup_id']}/verify")["backup"]
    assert {r["code"] for r in verified["verification"]} == {"BUNDLE_OTHER_BACKUP_KEY"}
    assert verified["verified_ok"] is False
