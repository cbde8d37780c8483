"""Bundles that are validly signed yet wrong for this ledger, built with our own code.

A twin ledger signs with this ledger's key but holds other material for a key of
the same name: its bundle passes every signature check, and only the comparison
of fingerprints with this ledger catches it. A bundle wrapped under another
backup key is refused by name. Both record nothing on restore.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.runtime import Runtime
from backup import service as backup_service
from backup.bundle import Bundle, build_bundle, seal
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
        service: KeyService,
        key_name: str,
        *,
        backup_key: BackupKey,
        backup_id: str,
        policy: dict[str, Any],
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


def bundle_body(folders: dict[str, Path], taken: dict[str, Any]) -> dict[str, Any]:
    data = (folders["dc1"] / taken["backup"]["copies"][0]["object"]).read_bytes()
    body: dict[str, Any] = json.loads(data)["body"]
    return body


def test_a_bundle_holds_the_key_backup_and_dual_control_policies(
    client: TestClient, folders: dict[str, Path]
) -> None:
    """Format 2 bundles carry the key's own policies, or say it has the default."""
    create(client, "k1")
    create(client, "k2")
    post_ok(
        client,
        "/v1/keys/k1/backup-policy",
        {"copies": 1, "locations": 1, "interval_hours": 12, "targets": ["dc2"]},
    )
    post_ok(
        client,
        "/v1/keys/k1/dual-control",
        {"actions": ["rollback"], "ttl_seconds": 600},
    )

    own = bundle_body(folders, take(client, "k2"))
    with_policies = take(client, "k1")

    assert own["format"] == "keyledger-backup/2"
    assert own["policy"] == {
        "backup": {
            "copies": 2,
            "locations": 2,
            "interval_hours": 24,
            "retention_days": 30,
            "targets": [],
            "source": "default",
        },
        "dual_control": None,
    }
    data = folders["dc2"] / with_policies["backup"]["copies"][0]["object"]
    assert json.loads(data.read_bytes())["body"]["policy"] == {
        "backup": {
            "copies": 1,
            "locations": 1,
            "interval_hours": 12,
            "retention_days": 30,
            "targets": ["dc2"],
            "source": "key",
        },
        "dual_control": {"actions": ["rollback"], "ttl_seconds": 600},
    }


def test_a_format_1_bundle_restores_and_a_format_2_one_needs_its_policy(
    client: TestClient, runtime: Runtime, folders: dict[str, Path]
) -> None:
    """A format 1 bundle (no policies) still restores; format 2 without is refused."""
    create(client, "k1")
    body = bundle_body(folders, take(client, "k1"))
    signer = runtime.service.signer
    unpoliced = {name: value for name, value in body.items() if name != "policy"}
    old = seal({**unpoliced, "format": "keyledger-backup/1"}, signer)
    broken = seal(unpoliced, signer)

    assert_refused(
        client,
        "k1-copy",
        lambda: restore(client, "k1", bundle=b64(broken), into="k1-copy"),
        409,
        "BUNDLE_INVALID",
    )
    response = restore(client, "k1", bundle=b64(old), into="k1-copy")
    assert response.status_code == 200, response.text
