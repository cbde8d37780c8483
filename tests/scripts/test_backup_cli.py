"""The backup commands of ``keyledger``: backup, verify-backup, restore, scheduler,
backup-status, backups, backup-policy, backup-ledger and restore-ledger.

They run against a real data folder and store, as an operator would run them
next to the service, and each exit code says whether the step held.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backup.key import BackupKey
from backup.service import BackupService
from domain.clock import SystemClock
from domain.errors import KeyNotFoundError
from ledger.service import CommandContext, KeyService, load_local_secrets
from scripts.cli import main
from tests.conftest import ADMIN, new_database


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

    code, named = run(capsys, "backup", "k1", "--target", "dc2", *options)
    assert code == 0 and named is not None
    assert [c["target"] for c in named["backup"]["copies"]] == ["dc2"]
    assert main(["backup", "k1", "--target", "nope", *options]) == 1
    assert "UNKNOWN_TARGET" in capsys.readouterr().err


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


def open_instance(data_dir: Path, url: str, *, create: bool = False) -> KeyService:
    """The key service of an instance's data folder and store."""
    signer, kek, _ = load_local_secrets(data_dir, create=create)
    return KeyService.open(
        database_url=url, signer=signer, kek=kek, clock=SystemClock(), create=create
    )


def entries(service: KeyService, up_to: int) -> list[dict[str, Any]]:
    """Every entry up to ``up_to`` as stored: position, stream, bytes, signature."""
    table = service.ledger.events_table_name
    rows = service.ledger.query(
        "SELECT notification_id, originator_id, originator_version, topic, state, "
        f"entry_hash, signature FROM {table} WHERE notification_id <= %s "
        "ORDER BY notification_id",
        (up_to,),
    )
    return [
        {
            **row,
            "originator_id": uuid.UUID(str(row["originator_id"])),
            "state": bytes(row["state"]),
            "signature": bytes(row["signature"]),
        }
        for row in rows
    ]


def source_public_key(options: list[str], folder: Path) -> Path:
    """The source ledger's public key as a PEM file, as its operator keeps it."""
    from ledger.signing import public_key_pem

    signer, _, _ = load_local_secrets(Path(options[1]), create=False)
    path = folder / "source.pem"
    path.write_text(public_key_pem(signer.public_key))
    return path


def fresh_folder(options: list[str], folder: Path) -> Path:
    """A new data folder holding only a copy of the source's backup key."""
    import shutil

    from backup.key import BACKUP_KEY_FILE

    folder.mkdir(mode=0o700)
    shutil.copy2(Path(options[1]) / BACKUP_KEY_FILE, folder / BACKUP_KEY_FILE)
    return folder


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The store of a fresh instance: an SQLite file, or a new PostgreSQL database
    made with CREATE DATABASE for this test alone and dropped after."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
        return
    with new_database("keyledger_restore") as url:
        yield url


def test_a_ledger_archive_restores_into_a_fresh_instance_and_verifies(
    ledger: tuple[Path, list[str]],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    fresh_url: str,
) -> None:
    """backup-ledger, then restore-ledger into a new instance that signs with its
    own key: every entry is the source's byte for byte and verifies against the
    source's public key, the keys and their material are back, and a changed or
    reused archive is refused."""
    _, options = ledger
    assert run(capsys, "backup", "k1", *options)[0] == 0
    archive = tmp_path / "ledger.klarchive"
    code, report = run(capsys, "backup-ledger", "--out", str(archive), *options)
    assert code == 0 and report is not None
    assert len(report["copies"]) == 2
    public = source_public_key(options, tmp_path)
    fresh = fresh_folder(options, tmp_path / "fresh")
    fresh_options = ["--data-dir", str(fresh), "--database-url", fresh_url]

    tampered = tmp_path / "tampered.klarchive"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 1
    tampered.write_bytes(bytes(data))
    assert run(capsys, "restore-ledger", str(tampered), *fresh_options)[0] == 1
    assert main(["restore-ledger", str(archive), *fresh_options]) == 1  # foreign
    assert "FROM_OTHER_LEDGER" in capsys.readouterr().err
    assert_untouched(fresh, fresh_url)
    assert main(["verify", *fresh_options]) != 0
    capsys.readouterr()
    restore = ["restore-ledger", str(archive), "--source-public-key", str(public)]
    code, restored = run(capsys, *restore, *fresh_options)

    assert code == 0 and restored is not None
    assert restored["position"] == report["head_position"] + 2
    assert main(["verify", "--public-key", str(public), *fresh_options]) == 0
    source = open_instance(Path(options[1]), options[3])
    copy = open_instance(fresh, fresh_url)
    try:
        up_to = report["head_position"]
        assert entries(copy, up_to) == entries(source, up_to)
        assert copy.get_key("k1")["versions"] == source.get_key("k1")["versions"]
        assert copy.get_key("k1")["versions"][0]["state"] == "enabled"
        rows = copy.ledger.query("SELECT count(*) AS n FROM key_material")
        assert rows[0]["n"] == 1
        rows = copy.ledger.query("SELECT count(*) AS n FROM backup_records")
        assert rows[0]["n"] == 1
    finally:
        source.close()
        copy.close()
    capsys.readouterr()
    assert main([*restore, *fresh_options]) == 1
    assert "LEDGER_NOT_EMPTY" in capsys.readouterr().err


def assert_untouched(folder: Path, url: str) -> None:
    """The fresh instance holds only the backup key, and its store no table."""
    from backup.key import BACKUP_KEY_FILE

    assert sorted(p.name for p in folder.iterdir()) == [BACKUP_KEY_FILE]
    if url.startswith("sqlite:"):
        assert not Path(url.removeprefix("sqlite:///")).exists()
        return
    import psycopg

    with psycopg.connect(url) as connection:
        row = connection.execute(
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchone()
    assert row is not None and row[0] == 0


def test_a_refused_ledger_restore_leaves_the_new_folder_as_it_was(
    ledger: tuple[Path, list[str]],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """A restore refused after its checks (the store is not empty) removes the
    signing key and KEK it made: the folder holds only what it held before."""
    _, options = ledger
    archive = tmp_path / "ledger.klarchive"
    assert run(capsys, "backup-ledger", "--out", str(archive), *options)[0] == 0
    public = source_public_key(options, tmp_path)
    fresh = fresh_folder(options, tmp_path / "fresh")
    moved = head(options)

    code = main(
        [
            *("restore-ledger", str(archive), "--source-public-key", str(public)),
            *("--data-dir", str(fresh), "--database-url", options[3]),
        ]
    )

    assert code == 1
    assert "LEDGER_NOT_EMPTY" in capsys.readouterr().err
    assert_untouched(fresh, "sqlite:///" + str(fresh / "none.sqlite3"))
    assert head(options) == moved


def head(options: list[str]) -> int:
    """The ledger's head position, read straight from the store."""
    signer, kek, _ = load_local_secrets(Path(options[1]), create=False)
    service = KeyService.open(
        database_url=options[3], signer=signer, kek=kek, clock=SystemClock()
    )
    try:
        table = service.ledger.events_table_name
        rows = service.ledger.query(f"SELECT max(notification_id) AS n FROM {table}")
        return int(rows[0]["n"] or 0)
    finally:
        service.close()


def test_backup_status_backups_and_policies_from_the_command_line(
    ledger: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """backup-status, backups and backup-policy read and change what the API does."""
    _, options = ledger
    code, status = run(capsys, "backup-status", *options)
    assert code == 0 and status is not None
    assert [(i["key"], i["status"]) for i in status["keys"]] == [("k1", "due")]
    assert run(capsys, "backup-status", "--status", "ok", *options)[1] == {
        "keys": [],
        "next_cursor": None,
    }

    code, default = run(
        capsys,
        "backup-policy",
        "--copies",
        "1",
        "--locations",
        "1",
        "--interval-hours",
        "6",
        "--target",
        "dc1",
        *options,
    )
    assert code == 0 and default is not None
    assert default["policy"] == {
        "copies": 1,
        "locations": 1,
        "interval_hours": 6,
        "retention_days": 30,
        "targets": ["dc1"],
    }
    assert [r["type"] for r in default["receipts"]] == [
        "keyledger.backup.DefaultPolicyChanged"
    ]
    code, own = run(capsys, "backup-policy", "--key", "k1", "--copies", "3", *options)
    assert code == 0 and own is not None
    assert own["policy"]["copies"] == 3 and own["policy"]["targets"] == []
    assert run(capsys, "backup", "k1", *options)[0] == 0

    code, listed = run(capsys, "backups", "k1", *options)
    assert code == 0 and listed is not None
    assert (listed["status"], listed["policy_source"]) == ("at_risk", "key")
    assert [len(b["copies"]) for b in listed["backups"]] == [2]
    at_risk = run(capsys, "backup-status", "--status", "at_risk", *options)[1]
    assert at_risk is not None and [i["key"] for i in at_risk["keys"]] == ["k1"]
    code, back = run(capsys, "backup-policy", "--key", "k1", "--use-default", *options)
    assert code == 0 and back is not None
    assert back["policy"] == default["policy"]
    assert [r["type"] for r in back["receipts"]] == ["keyledger.backup.PolicyChanged"]
    listed = run(capsys, "backups", "k1", *options)[1]
    assert listed is not None
    assert (listed["status"], listed["policy_source"]) == ("unverified", "default")


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        pytest.param(
            ["backup-policy", "--copies", "0"], "INVALID_BACKUP_POLICY", id="0 copies"
        ),
        pytest.param(
            ["backup-policy", "--copies", "1", "--locations", "2"],
            "INVALID_BACKUP_POLICY",
            id="more locations than copies",
        ),
        pytest.param(
            ["backup-policy", "--retention-days", "-1"],
            "INVALID_BACKUP_POLICY",
            id="negative retention",
        ),
        pytest.param(
            ["backup-policy", "--use-default"],
            "INVALID_BACKUP_POLICY",
            id="use-default without key",
        ),
        pytest.param(
            ["backup-policy", "--key", "k1", "--use-default", "--copies", "1"],
            "INVALID_BACKUP_POLICY",
            id="use-default with fields",
        ),
        pytest.param(
            ["backup-policy", "--target", "nope"], "UNKNOWN_TARGET", id="unknown target"
        ),
        pytest.param(
            ["backup-policy", "--key", "nope"], "KEY_NOT_FOUND", id="unknown key"
        ),
        pytest.param(["backups", "nope"], "KEY_NOT_FOUND", id="backups of no key"),
        pytest.param(["backup-status", "--limit", "0"], "INVALID_FIELD", id="limit"),
    ],
)
def test_bad_policy_and_status_commands_exit_1_and_record_nothing(
    ledger: tuple[Path, list[str]],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    code: str,
) -> None:
    """Each refusal exits 1 naming its code; the head and the statuses stay."""
    _, options = ledger
    before = (head(options), run(capsys, "backup-status", *options)[1])

    assert main([*argv, *options]) == 1

    assert code in capsys.readouterr().err
    assert (head(options), run(capsys, "backup-status", *options)[1]) == before


def test_restore_a_bundle_into_a_fresh_instance_with_the_source_public_key(
    ledger: tuple[Path, list[str]],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """Disaster recovery: restore --bundle into a new instance needs the source's
    public key; without it, or with a wrong one, it exits 1 and records nothing."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ledger.signing import public_key_pem

    root, options = ledger
    code, taken = run(capsys, "backup", "k1", *options)
    assert code == 0 and taken is not None
    bundle = root / "dc2" / taken["backup"]["copies"][1]["object"]
    public = source_public_key(options, tmp_path)
    wrong = tmp_path / "wrong.pem"
    wrong.write_text(public_key_pem(Ed25519PrivateKey.generate().public_key()))
    fresh = fresh_folder(options, tmp_path / "fresh")
    fresh_url = f"sqlite:///{fresh / 'ledger.sqlite3'}"
    open_instance(fresh, fresh_url, create=True).close()
    fresh_options = ["--data-dir", str(fresh), "--database-url", fresh_url]
    before = head(fresh_options)

    for extra in ([], ["--source-public-key", str(wrong)]):
        argv = ["restore", "k1", "--bundle", str(bundle), *extra, *fresh_options]
        assert main(argv) == 1
        assert "BUNDLE_FROM_OTHER_LEDGER" in capsys.readouterr().err
        assert head(fresh_options) == before
    code, restored = run(
        capsys,
        "restore",
        "k1",
        "--bundle",
        str(bundle),
        "--source-public-key",
        str(public),
        *fresh_options,
    )

    assert code == 0 and restored is not None
    assert restored["restored_from"]["backup_id"] == taken["backup_id"]
    assert main(["verify", *fresh_options]) == 0
    source = open_instance(Path(options[1]), options[3])
    copy = open_instance(fresh, fresh_url)
    try:
        assert [v["fingerprint"] for v in copy.get_key("k1")["versions"]] == [
            v["fingerprint"] for v in source.get_key("k1")["versions"]
        ]
        assert copy.ledger.query("SELECT count(*) AS n FROM key_material")[0]["n"] == 1
    finally:
        source.close()
        copy.close()


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


def topics_after(options: list[str], position: int) -> list[str]:
    """The topics of the entries after ``position``."""
    signer, kek, _ = load_local_secrets(Path(options[1]), create=False)
    service = KeyService.open(
        database_url=options[3], signer=signer, kek=kek, clock=SystemClock()
    )
    try:
        table = service.ledger.events_table_name
        rows = service.ledger.query(
            f"SELECT topic FROM {table} WHERE notification_id > %s "
            "ORDER BY notification_id",
            (position,),
        )
        return [row["topic"] for row in rows]
    finally:
        service.close()


def test_targets_are_configured_and_listed_from_the_command_line(
    ledger: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """backup-target records TargetConfigured (nothing when unchanged), a bad one
    exits 1 and records nothing, and backup-targets lists them all."""
    root, options = ledger
    (root / "dc3").mkdir()
    start = head(options)
    dc3 = ["--kind", "dir", "--location", "eu-west-b", "--path", str(root / "dc3")]

    code, configured = run(capsys, "backup-target", "dc3", *dc3, *options)

    assert code == 0 and configured is not None
    assert configured["target"] == {
        "name": "dc3",
        "kind": "dir",
        "location": "eu-west-b",
        "options": {"path": str(root / "dc3")},
    }
    assert topics_after(options, start) == ["keyledger.backup.TargetConfigured"]
    code, again = run(capsys, "backup-target", "dc3", *dc3, *options)
    assert code == 0 and again is not None and again["receipts"] == []

    moved = head(options)
    for bad in (
        ["dc4", "--kind", "dir", "--location", "x"],
        ["dc4", "--kind", "dir", "--location", "x", "--path", "/t", "--bucket", "b"],
        ["Bad Name", "--kind", "dir", "--location", "x", "--path", "/tmp"],
        ["dc4", "--kind", "dir", "--location", "no spaces", "--path", "/tmp"],
        ["dc4", "--kind", "s3", "--location", "x"],
    ):
        assert main(["backup-target", *bad, *options]) == 1, bad
        assert "refused" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["backup-target", "dc4", "--kind", "nfs", "--location", "x", *options])
    capsys.readouterr()
    assert head(options) == moved

    code, listed = run(capsys, "backup-targets", *options)

    assert code == 0 and listed is not None
    assert [t["name"] for t in listed["targets"]] == ["dc1", "dc2", "dc3"]
    assert listed["default_policy"]["copies"] == 2
    code, taken = run(capsys, "backup", "k1", "--target", "dc3", *options)
    assert code == 0 and taken is not None
    assert taken["backup"]["copies"][0]["location"] == "eu-west-b"


def test_backup_retain_until_from_the_command_line(
    ledger: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """--retain-until sets the retention date; one in the past or not a time exits
    1 and records nothing."""
    root, options = ledger

    code, taken = run(
        capsys, "backup", "k1", "--retain-until", "2099-01-01T00:00:00Z", *options
    )

    assert code == 0 and taken is not None
    assert taken["backup"]["retain_until"] == "2099-01-01T00:00:00.000000Z"
    name = taken["backup"]["copies"][0]["object"]
    assert (
        root / "dc1" / (name + ".retain")
    ).read_text() == "2099-01-01T00:00:00.000000Z"
    before = head(options)
    for value, code_name in (
        ("2020-01-01T00:00:00Z", "RETENTION_IN_PAST"),
        ("next tuesday", "INVALID_TIME"),
    ):
        assert main(["backup", "k1", "--retain-until", value, *options]) == 1
        assert code_name in capsys.readouterr().err
    assert head(options) == before


def test_prune_from_the_command_line_is_an_event_and_fails_closed(
    ledger: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """prune before the retention date exits 1 and records nothing; after it,
    ObjectPruned is recorded and the copy deleted; a target that refuses the
    deletion exits 1, keeps the copy and records PruneFailed."""
    root, options = ledger
    code, kept = run(
        capsys, "backup", "k1", "--retain-until", "2099-01-01T00:00:00Z", *options
    )
    assert code == 0 and kept is not None
    before = head(options)
    assert main(["prune", kept["backup_id"], "--target", "dc1", *options]) == 1
    assert "RETAINED" in capsys.readouterr().err
    assert head(options) == before
    assert (root / "dc1" / kept["backup"]["copies"][0]["object"]).exists()

    # A backup whose retention date has passed: taken on a clock in the past.
    from datetime import timedelta

    from domain.clock import AdjustableClock
    from tests.conftest import T0

    signer, kek, _ = load_local_secrets(Path(options[1]), create=False)
    service = KeyService.open(
        database_url=options[3], signer=signer, kek=kek, clock=AdjustableClock(T0)
    )
    try:
        backups = BackupService(
            service, BackupKey.load_or_create(Path(options[1]), create=False)
        )
        service.rotate(CommandContext(ADMIN, "req-rotate"), "k1")
        old = backups.take_backup(
            CommandContext(ADMIN, "req-old"), "k1", retain_until=T0 + timedelta(days=1)
        )
    finally:
        service.close()
    assert old.record is not None
    name = old.record.copies[0]["object"]
    start = head(options)
    for refused in (
        [old.backup_id, "--target", "dc9"],
        ["bkp_" + "0" * 24, "--target", "dc1"],
    ):
        assert main(["prune", *refused, *options]) == 1
        assert "BACKUP_NOT_FOUND" in capsys.readouterr().err
    assert head(options) == start

    code, pruned = run(capsys, "prune", old.backup_id, "--target", "dc1", *options)

    assert code == 0 and pruned is not None
    assert pruned["deleted"] is True and pruned["failure"] is None
    assert not (root / "dc1" / name).exists()
    assert topics_after(options, start) == ["keyledger.backup.ObjectPruned"]

    (root / "dc2").chmod(0o555)
    try:
        code, failed = run(capsys, "prune", old.backup_id, "--target", "dc2", *options)
    finally:
        (root / "dc2").chmod(0o755)
    assert code == 1 and failed is not None
    assert failed["deleted"] is False and failed["failure"]["code"] == "READ_ONLY"
    assert (root / "dc2" / name).exists()
    code, listed = run(capsys, "backups", "k1", *options)
    assert code == 0 and listed is not None
    record = next(b for b in listed["backups"] if b["backup_id"] == old.backup_id)
    assert record["pruned"] == ["dc1", "dc2"]
    assert [f["code"] for f in record["prune_failures"]] == ["READ_ONLY"]


def test_a_restore_under_a_new_name_never_revives_a_compromise(
    ledger: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """``keyledger restore --into`` of a backup from before a compromise exits 1."""
    _, options = ledger
    code, taken = run(capsys, "backup", "k1", *options)
    assert code == 0 and taken is not None
    service = open_instance(Path(options[1]), options[3])
    try:
        service.mark_compromised(
            CommandContext(ADMIN, "req-leak"), "k1", 1, reason="leaked"
        )
        head = service.head_position()
    finally:
        service.close()

    code = main(
        ["restore", "k1", "--backup-id", taken["backup_id"], "--into", "k2", *options]
    )

    assert code == 1
    assert "RESTORE_WOULD_REVIVE_COMPROMISED" in capsys.readouterr().err
    service = open_instance(Path(options[1]), options[3])
    try:
        assert service.head_position() == head
        with pytest.raises(KeyNotFoundError):
            service.get_key("k2")
    finally:
        service.close()


@pytest.mark.parametrize(
    ("options", "code"),
    [
        pytest.param(["--path", "relative"], "TARGET_PATH_NOT_ABSOLUTE", id="relative"),
        pytest.param(
            ["--path", "/etc/passwd"], "TARGET_PATH_NOT_A_DIRECTORY", id="file"
        ),
        pytest.param(
            ["--path", "{root}", "--prefix", "../../escape"],
            "INVALID_TARGET_PREFIX",
            id="prefix",
        ),
    ],
)
def test_a_bad_dir_target_from_the_command_line_exits_1_and_records_nothing(
    ledger: tuple[Path, list[str]],
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    code: str,
) -> None:
    """backup-target refuses a bad path or prefix with its code (exit 1)."""
    root, ledger_options = ledger
    options = [o.replace("{root}", str(root)) for o in options]
    moved = head(ledger_options)

    exit_code = main(
        [
            *("backup-target", "dc4", "--kind", "dir", "--location", "x"),
            *options,
            *ledger_options,
        ]
    )

    assert exit_code == 1
    assert f"refused ({code})" in capsys.readouterr().err
    assert head(ledger_options) == moved
