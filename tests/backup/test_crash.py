"""A crash halfway through writing copies: the ledger never claims a copy that is
not whole, leftovers confuse nothing, and the stale claim does not block the key.

``keyledger backup`` runs as a real process, on SQLite and PostgreSQL. Its dir
target is made to stop halfway through writing the second copy (half the bytes
in its temporary file) and wait; the test then kills it with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup import service as backup_service
from backup.key import BackupKey
from backup.service import BackupService
from domain.backups import CLAIM_TIMEOUT, KeyBackups, backups_id_for
from domain.clock import AdjustableClock
from domain.errors import KeyledgerError
from ledger.service import CommandContext, KeyService, load_local_secrets
from tests.backup.conftest import add_dir_target
from tests.conftest import ADMIN

ROOT = Path(__file__).resolve().parents[2]

# Runs ``keyledger`` with the dir target's temporary-file writer stopped halfway
# through its first write into the folder given as argv[1], until killed.
DRIVER = """
import sys
from pathlib import Path

from backup import targets

pause_in = Path(sys.argv[1])
write_new = targets.DirTarget._write_new


def paused(path, data):
    if path.name.startswith(".partial-") and path.parent == pause_in:
        write_new(path, data[: len(data) // 2])
        print("PAUSED", path.name, flush=True)
        sys.stdin.read()
    write_new(path, data)


targets.DirTarget._write_new = staticmethod(paused)
from scripts.cli import main

sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture
def instance(store_url: str, tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """A data folder and store with key ``k1`` and targets ``dc1``, ``dc2``."""
    data_dir = tmp_path / "data"
    signer, kek, _ = load_local_secrets(data_dir)
    service = KeyService.open(
        database_url=store_url, signer=signer, kek=kek, clock=AdjustableClock(_now())
    )
    try:
        backups = BackupService(service, BackupKey.load_or_create(data_dir))
        context = CommandContext(ADMIN, "req-setup")
        service.create_key(context, name="k1")
        for name in ("dc1", "dc2"):
            add_dir_target(backups, context, tmp_path, name, f"site-{name}")
    finally:
        service.close()
    yield tmp_path, ["--data-dir", str(data_dir), "--database-url", store_url]


def _now() -> datetime:
    return datetime.now(UTC)


def _open(options: list[str], clock: AdjustableClock) -> BackupService:
    data_dir = Path(options[1])
    signer, kek, _ = load_local_secrets(data_dir, create=False)
    service = KeyService.open(
        database_url=options[3], signer=signer, kek=kek, clock=clock
    )
    return BackupService(service, BackupKey.load_or_create(data_dir, create=False))


def _entries_after(backups: BackupService, position: int) -> list[str]:
    table = backups.keys.ledger.events_table_name
    rows = backups.keys.ledger.query(
        f"SELECT topic FROM {table} WHERE notification_id > %s "
        "ORDER BY notification_id",
        (position,),
    )
    return [row["topic"] for row in rows]


def _crash_mid_backup(root: Path, options: list[str]) -> str:
    """Run ``keyledger backup k1``, stop it halfway through the dc2 copy, SIGKILL it.

    Returns the name of the temporary file it left behind.
    """
    process = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(root / "dc2"), "backup", "k1", *options],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("PAUSED"):
        _, err = process.communicate()
        pytest.fail(f"keyledger backup did not reach the second copy: {line}{err}")
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    return line.split()[1]


def test_a_killed_backup_claims_no_copy_and_a_later_backup_takes_over(
    instance: tuple[Path, list[str]],
) -> None:
    """After SIGKILL mid-write: only the claim is on the ledger, no final object
    of the half-written copy exists, the next backup takes the dead process's
    claim over at once, and the leftover temporary file is ignored, then removed
    once older than the claim timeout."""
    root, options = instance
    clock = AdjustableClock(_now())
    backups = _open(options, clock)
    try:
        start = backups.keys.head_position()
        status = backups.key_backups("k1", after=None, limit=10)
    finally:
        backups.keys.close()

    partial = _crash_mid_backup(root, options)

    clock.advance(_now() - clock.now())
    backups = _open(options, clock)
    try:
        assert _entries_after(backups, start) == [
            "keyledger.backup.Opened",  # the key's first backup event
            "keyledger.backup.Started",
        ]
        assert backups.key_backups("k1", after=None, limit=10) == status
        assert status["backups"] == [] and status["last_backup"] is None
        leftover = root / "dc2" / partial
        assert sorted(p.name for p in (root / "dc2").iterdir()) == [partial]
        # dc1 got a whole copy, never recorded, so it counts for nothing.
        whole = [p for p in (root / "dc1").iterdir() if p.suffix == ".klbackup"]
        assert len(whole) == 1
        assert 0 < leftover.stat().st_size < whole[0].stat().st_size

        position = backups.keys.head_position()
        outcome = backups.take_backup(CommandContext(ADMIN, "req-after"), "k1")

        assert outcome.record is not None and outcome.failures == []
        assert [c["target"] for c in outcome.record.copies] == ["dc1", "dc2"]
        crashed, taking_over = _started(backups)
        assert crashed is None and taking_over is not None
        assert _entries_after(backups, position) == [
            "keyledger.backup.Started",
            "keyledger.backup.BackupTaken",
        ]
        record, _ = backups.verify_backup(
            CommandContext(ADMIN, "req-verify"), outcome.backup_id
        )
        assert record.verified_ok is True
        assert leftover.exists()  # younger than the claim timeout: left alone

        old = time.time() - CLAIM_TIMEOUT.total_seconds() - 60
        os.utime(leftover, (old, old))
        clock.advance(timedelta(hours=1))
        again = backups.take_backup(CommandContext(ADMIN, "req-again"), "k1")

        assert again.record is not None and again.failures == []
        assert not leftover.exists()
        assert not [p for p in (root / "dc2").iterdir() if p.name.startswith(".")]
        listed = backups.key_backups("k1", after=None, limit=10)
        assert [b["backup_id"] for b in listed["backups"]] == [
            again.backup_id,
            outcome.backup_id,
        ]
    finally:
        backups.keys.close()


@pytest.fixture
def backups(service: KeyService, tmp_path: Path, ctx: CommandContext) -> BackupService:
    result = BackupService(service, BackupKey.load_or_create(tmp_path / "data"))
    for name in ("dc1", "dc2"):
        add_dir_target(result, ctx, tmp_path, name, f"site-{name}")
    service.create_key(ctx, name="k1")
    return result


def _leave_claim(backups: BackupService, ctx: CommandContext, owner: str) -> str:
    """A claim on ``k1``'s backup by ``owner`` that was never completed."""
    record = backups._key_backups("k1")
    record.start(
        "bkp_" + "ab" * 12, reason="manual", now=backups.keys.clock.now(), owner=owner
    )
    backups._save_backups(record, ctx)
    return "bkp_" + "ab" * 12


def test_a_claim_whose_owner_cannot_be_judged_blocks_until_the_timeout(
    backups: BackupService, ctx: CommandContext, clock: AdjustableClock
) -> None:
    """A claim by another host (or a live process here) is refused as
    BACKUP_IN_PROGRESS, recording nothing, until CLAIM_TIMEOUT has passed."""
    claimed = _leave_claim(backups, ctx, "another-host/4242/1")
    head = backups.keys.head_position()

    with pytest.raises(KeyledgerError) as refused:
        backups.take_backup(ctx, "k1")

    assert refused.value.code == "BACKUP_IN_PROGRESS"
    assert backups.keys.head_position() == head
    clock.advance(CLAIM_TIMEOUT - timedelta(seconds=1))
    with pytest.raises(KeyledgerError):
        backups.take_backup(ctx, "k1")
    assert backups.keys.head_position() == head

    clock.advance(timedelta(seconds=1))
    outcome = backups.take_backup(ctx, "k1")

    assert outcome.record is not None
    assert backups._key_backups("k1").claim is None
    assert _started(backups)[-1] == claimed


def test_a_live_claim_of_this_process_is_not_taken_over(
    backups: BackupService, ctx: CommandContext
) -> None:
    """A claim made by this very process (say, another request thread) is live."""
    _leave_claim(backups, ctx, backup_service.claim_owner())
    with pytest.raises(KeyledgerError) as refused:
        backups.take_backup(ctx, "k1")
    assert refused.value.code == "BACKUP_IN_PROGRESS"


def test_a_claim_of_a_process_that_ended_is_taken_over_at_once(
    backups: BackupService, ctx: CommandContext
) -> None:
    """A claim by a process of this host that no longer runs is stale at once."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    host = backup_service.claim_owner().split("/")[0]
    claimed = _leave_claim(backups, ctx, f"{host}/{child.pid}/1")

    outcome = backups.take_backup(ctx, "k1")

    assert outcome.record is not None
    assert _started(backups)[-1] == claimed


def _started(backups: BackupService) -> list[str | None]:
    """The claim each ``Started`` event of ``k1``'s backups took over, in order."""
    events = backups.keys.app.repository.event_store.get(backups_id_for("k1"))
    return [
        event.took_over for event in events if isinstance(event, KeyBackups.Started)
    ]
