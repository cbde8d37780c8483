"""What a bundle written to a target holds, read straight from the file.

Runs on SQLite and PostgreSQL. A bundle holds the key's own history slice as
stored and a checkpoint signed for the head it was taken at; its material is
only the backup-key-wrapped form: no plaintext, and no KEK-wrapped blob.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from backup.key import BackupKey
from backup.service import BackupService
from domain.backups import KeyBackups, backups_id_for
from domain.clock import AdjustableClock
from domain.keys import key_id_for
from ledger.material import fingerprint
from ledger.offline import check_checkpoint_signature
from ledger.service import CommandContext, KeyService
from ledger.store import checkpoint_table
from tests.backup.conftest import add_dir_target


@pytest.fixture
def backups(service: KeyService, tmp_path: Path, ctx: CommandContext) -> BackupService:
    result = BackupService(service, BackupKey.load_or_create(tmp_path / "data"))
    add_dir_target(result, ctx, tmp_path, "dc1", "site-dc1")
    return result


def _forms(secret: bytes) -> list[bytes]:
    """The ways bytes could show up in a JSON file."""
    return [
        secret,
        base64.b64encode(secret),
        base64.urlsafe_b64encode(secret).rstrip(b"="),
        secret.hex().encode("ascii"),
        secret.hex().upper().encode("ascii"),
    ]


def test_a_bundle_holds_the_history_slice_the_checkpoint_and_only_wrapped_material(
    service: KeyService,
    backups: BackupService,
    ctx: CommandContext,
    clock: AdjustableClock,
    tmp_path: Path,
) -> None:
    """The file's history is exactly the key's entries as stored (no other
    stream's), its checkpoint is signed by the ledger and stored for a head at
    or after them, each kept version's material opens under the backup key to
    the version's fingerprint, the destroyed version has none, and neither a
    plaintext nor a KEK-wrapped blob of any version appears in any form."""
    service.create_key(ctx, name="k1")
    service.create_key(ctx, name="other")
    service.rotate(ctx, "k1")
    service.rotate(ctx, "k1")
    service.schedule_destruction(ctx, "k1", 1, days=service.bounds.min_days)
    clock.advance(timedelta(days=service.bounds.min_days + 1))
    service.destroy_version(ctx, "k1", 1)
    service.rotate(ctx, "other")
    key_id = str(key_id_for("k1"))
    kek_wrapped = {
        int(row["version"]): row["wrapped"]
        for row in service.ledger.query(
            "SELECT version, wrapped FROM key_material WHERE key_id = %s", (key_id,)
        )
    }
    assert sorted(kek_wrapped) == [2, 3]
    plaintext = {
        version: service.kek.unwrap(
            base64.b64decode(wrapped), key_id=key_id, version=version
        )
        for version, wrapped in kek_wrapped.items()
    }

    head_before = service.head_position()
    outcome = backups.take_backup(ctx, "k1")

    assert outcome.record is not None
    data = (tmp_path / "dc1" / outcome.record.copies[0]["object"]).read_bytes()
    body: dict[str, Any] = json.loads(data)["body"]
    table = service.ledger.events_table_name
    stored = service.ledger.query(
        f"SELECT notification_id, state, entry_hash, signature, kid FROM {table} "
        "WHERE originator_id = %s ORDER BY originator_version",
        (service._stream_param(key_id_for("k1")),),
    )
    assert [item["hash"] for item in body["history"]] == [
        row["entry_hash"] for row in stored
    ]
    assert [item["entry"] for item in body["history"]] == [
        bytes(row["state"]).decode("utf-8") for row in stored
    ]
    assert [item["signature"] for item in body["history"]] == [
        bytes(row["signature"]).hex() for row in stored
    ]
    assert {json.loads(item["entry"])["stream_id"] for item in body["history"]} == {
        key_id
    }

    checkpoint = dict(body["checkpoint"])
    assert checkpoint["position"] >= stored[-1]["notification_id"]
    taken = [
        event
        for event in service.app.repository.event_store.get(backups_id_for("k1"))
        if isinstance(event, KeyBackups.BackupTaken)
    ]
    assert [event.checkpoint_position for event in taken] == [checkpoint["position"]]
    assert head_before <= checkpoint["position"]
    signed = {**checkpoint, "signature": bytes.fromhex(checkpoint["signature"])}
    public = {service.signer.kid: service.signer.public_key}
    assert check_checkpoint_signature(signed, public) is None
    kept = service.ledger.query(
        f"SELECT hash, signature FROM {checkpoint_table(table)} WHERE position = %s",
        (checkpoint["position"],),
    )
    assert [(row["hash"], bytes(row["signature"]).hex()) for row in kept] == [
        (checkpoint["hash"], checkpoint["signature"])
    ]

    versions = {item["version"]: item for item in body["versions"]}
    assert versions[1]["state"] == "destroyed" and versions[1]["wrapped"] is None
    for number in (2, 3):
        opened = backups.backup_key.unwrap(
            base64.b64decode(versions[number]["wrapped"]),
            ledger_kid=service.signer.kid,
            key_name="k1",
            version=number,
        )
        assert opened == plaintext[number]
        assert fingerprint(opened) == versions[number]["fingerprint"]
    for number in (2, 3):
        for secret in (plaintext[number], base64.b64decode(kek_wrapped[number])):
            for form in _forms(secret):
                assert form not in data, number
        assert kek_wrapped[number].encode("ascii") not in data
