"""The backup commands of ``keyledger``: backup, verify-backup, restore, scheduler.

They run against a real data folder and store, as an operator would run them
next to the service, and each exit code says whether the step held.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from backup.key import BackupKey
from backup.service import BackupService
from domain.clock import SystemClock
from ledger.service import CommandContext, KeyService, load_local_secrets
from scripts.cli import main
from tests.conftest import ADMIN


@pytest.fixture
def ledger(store_url: str, tmp_path: Path) -> tuple[Path, list[str]]:
    """A data folder and store with key ``k1`` and two dir targets; the CLI options."""
    data_dir = tmp_path / "data"
    signer, kek, _ = load_local_secrets(data_dir)
    service = KeyService.open(
        database_url=store_url, signer=signer, kek=kek, clock=SystemClock()
    )
    try:
        backups = BackupService(service, BackupKey.load_or_create(data_dir))
        context = CommandContext(ADMIN, "req-setup")
        service.create_key(context, name="k1")
        for name in ("dc1", "dc2"):
            (tmp_path / name).mkdir()
            backups.configure_target(
                context,
                name=name,
                kind="dir",
                location=name,
                options={"path": str(tmp_path / name)},
            )
    finally:
        service.close()
    return tmp_path, ["--data-dir", str(data_dir), "--database-url", store_url]


def run(
    capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, dict[str, Any] | None]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip().startswith("{") else None


def test_backup_verify_restore_and_scheduler_from_the_command_line(
    ledger: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Each command succeeds with exit 0, and a lost copy fails verify-backup."""
    root, options = ledger
    code, taken = run(capsys, "backup", "k1", *options)
    assert code == 0 and taken is not None
    backup_id = taken["backup_id"]
    assert [c["target"] for c in taken["backup"]["copies"]] == ["dc1", "dc2"]

    assert run(capsys, "verify-backup", backup_id, *options)[0] == 0
    (root / "dc2" / taken["backup"]["copies"][1]["object"]).unlink()
    code, verified = run(capsys, "verify-backup", backup_id, *options)
    assert code == 1 and verified is not None
    assert verified["verified_ok"] is False

    code, restored = run(
        capsys, "restore", "k1", "--backup-id", backup_id, "--into", "k2", *options
    )
    assert code == 0 and restored is not None
    assert restored["key"]["name"] == "k2"
    bundle = root / "dc1" / taken["backup"]["copies"][0]["object"]
    assert run(capsys, "restore", "k1", "--bundle", str(bundle), *options)[0] == 0

    code, report = run(capsys, "scheduler", "--once", *options)
    assert code == 0 and report is not None
    assert [item["key"] for item in report["taken"]] == ["k2"]


def test_refusals_exit_1_and_a_missing_ledger_exits_2(
    ledger: tuple[Path, list[str]],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """A refused restore exits 1 with its code; a wrong data folder exits 2."""
    _, options = ledger
    code, _ = run(capsys, "restore", "k1", "--backup-id", "bkp_" + "0" * 24, *options)
    assert code == 1
    empty = tmp_path / "empty"
    assert main(["backup", "k1", "--data-dir", str(empty)]) == 2


def test_a_ledger_archive_restores_into_a_fresh_instance_and_verifies(
    ledger: tuple[Path, list[str]],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """backup-ledger, then restore-ledger into a new instance that signs with its
    own key: every entry verifies against the source's public key, the keys and
    their material are back, and a changed or reused archive is refused."""
    import shutil

    from backup.key import BACKUP_KEY_FILE
    from ledger.signing import public_key_pem

    _, options = ledger
    assert run(capsys, "backup", "k1", *options)[0] == 0
    archive = tmp_path / "ledger.klarchive"
    code, report = run(capsys, "backup-ledger", "--out", str(archive), *options)
    assert code == 0 and report is not None
    assert len(report["copies"]) == 2
    source_signer, _, _ = load_local_secrets(Path(options[1]), create=False)
    public = tmp_path / "source.pem"
    public.write_text(public_key_pem(source_signer.public_key))
    fresh = tmp_path / "fresh"
    fresh.mkdir(mode=0o700)
    shutil.copy2(Path(options[1]) / BACKUP_KEY_FILE, fresh / BACKUP_KEY_FILE)
    fresh_options = ["--data-dir", str(fresh)]

    tampered = tmp_path / "tampered.klarchive"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 1
    tampered.write_bytes(bytes(data))
    assert run(capsys, "restore-ledger", str(tampered), *fresh_options)[0] == 1
    assert main(["restore-ledger", str(archive), *fresh_options]) == 1  # foreign
    capsys.readouterr()
    code, restored = run(
        capsys,
        "restore-ledger",
        str(archive),
        "--source-public-key",
        str(public),
        *fresh_options,
    )

    assert code == 0 and restored is not None
    assert restored["position"] == report["head_position"] + 2
    assert main(["verify", "--public-key", str(public), *fresh_options]) == 0
    signer, kek, _ = load_local_secrets(fresh, create=False)
    service = KeyService.open(
        database_url=f"sqlite:///{fresh / 'ledger.sqlite3'}",
        signer=signer,
        kek=kek,
        clock=SystemClock(),
        create=False,
    )
    try:
        assert service.get_key("k1")["versions"][0]["state"] == "enabled"
        rows = service.ledger.query("SELECT count(*) AS n FROM key_material")
        assert rows[0]["n"] == 1
        assert (
            service.ledger.query("SELECT count(*) AS n FROM backup_records")[0]["n"]
            == 1
        )
    finally:
        service.close()
    capsys.readouterr()
    assert (
        main(
            [
                "restore-ledger",
                str(archive),
                "--source-public-key",
                str(public),
                *fresh_options,
            ]
        )
        == 1
    )
    assert "LEDGER_NOT_EMPTY" in capsys.readouterr().err


def test_a_restore_under_the_keys_policy_waits_and_exits_3(
    ledger: tuple[Path, list[str]],
    capsys: pytest.CaptureFixture[str],
    store_url: str,
) -> None:
    """With k1's policy on restore, the CLI records a request and restores nothing."""
    from ledger.dual_control import DualControl

    root, options = ledger
    code, taken = run(capsys, "backup", "k1", *options)
    assert code == 0 and taken is not None
    signer, kek, _ = load_local_secrets(root / "data")
    service = KeyService.open(
        database_url=store_url, signer=signer, kek=kek, clock=SystemClock()
    )
    try:
        DualControl(service.app, service.clock).set_policy(
            CommandContext(ADMIN, "req-policy"), "k1", ["restore"], 600
        )
    finally:
        service.close()

    code, printed = run(
        capsys, "restore", "k1", "--backup-id", taken["backup_id"], "--into", "k2",
        *options,
    )  # fmt: skip

    assert code == 3 and printed is not None
    assert printed["approval"]["status"] == "pending"
    assert printed["approval"]["key"] == "k2"
    code, _ = run(capsys, "backup", "k2", *options)
    assert code == 1  # k2 was never restored
