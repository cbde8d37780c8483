"""Promotion: a new epoch signed by an announced key, verified from the old key."""

from __future__ import annotations

import argparse
import base64
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from eventsourcing.persistence import IntegrityError, StoredEvent

from api.runtime import build_runtime
from domain.clock import AdjustableClock
from domain.epochs import Epoch
from domain.errors import PrimaryFencedError, StoreIsReplicaError
from ledger import replica as replica_module
from ledger.export import ExportScope, build_export
from ledger.key_use import KeyUser, UseItem
from ledger.offline import compare_hashes
from ledger.replica import (
    Follower,
    PromotionRefusedError,
    ReplicaHalted,
    announce_signer,
    promote,
)
from ledger.service import SIGNING_KEY_FILE, CommandContext, KeyService
from ledger.settings import Settings
from ledger.signing import LedgerSigner, public_key_pem, write_secret_file
from ledger.store import CurrentEpoch, LedgerWrite, Sequencer
from ledger.verify import verify_ledger
from projections import key_view
from scripts import compare_ledgers
from tests.ledger._replica_support import (
    OPERATOR,
    ServiceSource,
    announced_replica,
    follow_all,
    promoted_replica,
    rejoined_old_primary,
    workload,
)


def promoted_entries(service: KeyService) -> list[dict[str, Any]]:
    return [
        event
        for event in service.events(limit=1000)
        if event["type"] == "keyledger.ledger.Promoted"
    ]


def test_promotion_starts_an_epoch_the_old_key_alone_can_verify(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_replica: Callable[..., Follower],
) -> None:
    """C21: K1 signs up to the announcement, K2 from the promotion on."""
    workload(service, ctx, clock)
    follower = announced_replica(service, open_replica, ctx)
    replica = follower.service
    held = replica.ledger.head().position
    epoch = follower.promote(OPERATOR, "promote", force=False)
    assert epoch.epoch == 2 and epoch.possibly_lost_from is None
    replica.rotate(ctx, "alpha")

    primary_key = service.public_keys()
    report = verify_ledger(replica.ledger, primary_key)
    assert report.ok, report.first_failure
    assert report.signing_keys == {service.signer.kid: held, replica.signer.kid: 2}
    [promoted] = promoted_entries(replica)
    assert promoted["position"] == held + 1
    assert promoted["kid"] == replica.signer.kid

    # only the new key: the old entries are unknown, not forged
    only_new = verify_ledger(
        replica.ledger, {replica.signer.kid: replica.signer.public_key}
    )
    assert only_new.first_failure is not None
    assert (only_new.first_failure.position, only_new.first_failure.reason) == (
        1,
        "UNKNOWN_SIGNING_KEY",
    )

    # the retired key cannot append here (fenced); an entry it signed anyway,
    # written past the service, is KEY_RETIRED
    head = replica.ledger.head()
    rogue = Sequencer(service.signer, clock, 100).seal(
        head,
        [StoredEvent(uuid.uuid4(), 1, "keyledger.test.Rogue", b"{}")],
        LedgerWrite(actor=OPERATOR, request_id="rogue"),
    )
    replica.ledger.insert_replicated(rogue, [], expected_head=head.position)
    retired = verify_ledger(replica.ledger, primary_key)
    assert retired.first_failure is not None
    assert retired.first_failure.reason == "KEY_RETIRED"
    assert retired.first_failure.position == head.position + 1


def test_promotion_behind_the_head_is_refused_unless_forced(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_replica: Callable[..., Follower],
) -> None:
    workload(service, ctx, clock)
    follower = announced_replica(service, open_replica, ctx)
    service.rotate(ctx, "beta")
    service.rotate(ctx, "beta")
    follower.batch = 1
    follower.step()  # one of the two: the primary's head is seen two ahead
    replica = follower.service
    before = replica.ledger.head()
    with pytest.raises(PromotionRefusedError) as refused:
        follower.promote(OPERATOR, "p1", force=False)
    assert refused.value.code == "REPLICA_BEHIND"
    assert refused.value.details == {
        "applied": before.position,
        "primary_head": service.ledger.head().position,
    }
    assert replica.ledger.head() == before

    epoch = follower.promote(OPERATOR, "p2", force=True)
    assert epoch.forced
    assert (epoch.possibly_lost_from, epoch.possibly_lost_to) == (
        before.position + 1,
        service.ledger.head().position,
    )
    [promoted] = promoted_entries(replica)
    assert promoted["payload"]["possibly_lost_from"] == before.position + 1
    # once promoted it follows no more, and a second promotion is refused
    assert follower.step() == 0
    with pytest.raises(PromotionRefusedError) as again:
        follower.promote(OPERATOR, "p3", force=True)
    assert again.value.code == "ALREADY_PROMOTED"


def test_promotion_needs_an_announced_key(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_replica: Callable[..., Follower],
) -> None:
    workload(service, ctx, clock)
    follower = open_replica(ServiceSource(service))
    follow_all(follower)
    before = follower.service.ledger.head()
    with pytest.raises(PromotionRefusedError) as refused:
        follower.promote(OPERATOR, "p", force=True)
    assert refused.value.code == "SIGNER_NOT_ANNOUNCED"
    assert follower.service.ledger.head() == before
    with pytest.raises(PromotionRefusedError) as primary:
        promote(service, OPERATOR, "p", force=True)
    assert primary.value.code == "NOT_A_REPLICA"


def test_two_concurrent_promotions_create_one_epoch(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_replica: Callable[..., Follower],
    open_service: Callable[..., KeyService],
    replica_url: str,
) -> None:
    workload(service, ctx, clock)
    follower = announced_replica(service, open_replica, ctx)
    other = open_service(database_url=replica_url, signer=follower.service.signer)
    other.trusted_keys.update(service.public_keys())
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def run(target: KeyService) -> None:
        barrier.wait()
        try:
            promote(target, OPERATOR, "race", force=False)
            outcomes.append("promoted")
        except PromotionRefusedError as refusal:
            outcomes.append(refusal.code)

    threads = [
        threading.Thread(target=run, args=(target,))
        for target in (follower.service, other)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["ALREADY_PROMOTED", "promoted"]
    assert len(promoted_entries(follower.service)) == 1
    assert verify_ledger(follower.service.ledger, service.public_keys()).ok


def test_a_replica_of_a_promoted_primary_can_be_promoted_in_turn(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_replica: Callable[..., Follower],
    open_service: Callable[..., KeyService],
    third_url: str,
    kek: Any,
) -> None:
    """Epoch 3 passes the fence of epoch 2's key: its own entry starts the epoch."""
    second = promoted_replica(service, ctx, clock, open_replica)
    second.trusted_keys.update(service.public_keys())
    third = open_service(
        database_url=third_url, signer=LedgerSigner(Ed25519PrivateKey.generate())
    )
    third.trusted_keys.update(second.public_keys())
    announce_signer(second, ctx.actor, "a", public_key_pem(third.signer.public_key))
    chained = Follower(third, ServiceSource(second), second.public_keys(), kek=kek)
    chained.prepare()
    follow_all(chained)

    epoch = chained.promote(OPERATOR, "promote-again", force=False)
    assert epoch.epoch == 3
    third.rotate(ctx, "alpha")
    assert third.fenced_by() is None
    assert verify_ledger(third.ledger, service.public_keys()).ok


def test_a_promotion_that_read_the_state_before_another_committed_is_refused(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_replica: Callable[..., Follower],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The race of two promotions, made certain: the late one records nothing."""
    workload(service, ctx, clock)
    follower = announced_replica(service, open_replica, ctx)
    replica = follower.service
    stale = replica_module._replica_state(replica)
    promote(replica, OPERATOR, "first", force=False)
    before = replica.ledger.head()

    # the second read the replica's state before the first committed
    monkeypatch.setattr(replica_module, "_replica_state", lambda _: stale)
    with pytest.raises(PromotionRefusedError) as refused:
        promote(replica, OPERATOR, "second", force=False)
    assert refused.value.code == "ALREADY_PROMOTED"
    assert replica.ledger.head() == before
    assert len(promoted_entries(replica)) == 1


def test_the_store_records_only_the_next_epoch(
    service: KeyService, ctx: CommandContext, clock: AdjustableClock
) -> None:
    """A promotion that counted the epochs before another committed is refused."""
    service.create_key(ctx, name="k")

    def save(number: int) -> None:
        epoch = Epoch.promote(
            epoch=number,
            kid=service.signer.kid,
            previous_source="test",
            applied_position=1,
            primary_head_seen=1,
            forced=False,
            now=clock.now(),
        )
        service.app.save(epoch, ledger=LedgerWrite(OPERATOR, f"epoch-{number}"))

    before = service.ledger.head()
    with pytest.raises(IntegrityError):
        save(3)  # epoch 2 was never recorded
    assert service.ledger.head() == before
    save(2)
    with pytest.raises(IntegrityError):
        save(4)
    assert service.ledger.current_epoch() == CurrentEpoch(
        2, service.signer.kid, before.position + 1
    )


def test_an_old_primary_rejoins_as_a_replica_only_if_its_history_is_a_prefix(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_replica: Callable[..., Follower],
    kek: Any,
) -> None:
    """The old primary wrote nothing since the promotion: it follows the new one."""
    new_primary = rejoined_old_primary(service, ctx, clock, open_replica, kek)
    assert service.ledger.head() == new_primary.ledger.head()


def test_an_old_primary_that_saw_the_new_epoch_is_fenced(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_replica: Callable[..., Follower],
    open_service: Callable[..., KeyService],
    kek: Any,
    store_url: str,
) -> None:
    """Once its ledger holds epoch 2 of another key, no append of the old key lands."""
    # given a fresh primary, which has no epoch and writes
    assert service.fenced_by() is None
    # and the old primary reopened by another process, its head read before
    old = open_service(database_url=store_url, signer=service.signer)
    old.create_key(ctx, name="before")
    new_primary = rejoined_old_primary(service, ctx, clock, open_replica, kek)
    before = old.ledger.head()
    tables = key_view.snapshot_tables(old.ledger)

    # when the old primary runs commands, then each is refused, nothing recorded
    epoch = old.fenced_by()
    assert epoch is not None
    assert (epoch.epoch, epoch.kid) == (2, new_primary.signer.kid)
    item = UseItem(plaintext=base64.b64encode(b"x").decode())
    commands = {
        "rotate": lambda: old.rotate(ctx, "alpha"),
        "create": lambda: old.create_key(ctx, name="after"),
        "encrypt": lambda: KeyUser(old).use(
            ctx, "alpha", "encrypt", [item], single=True
        ),
        "announce": lambda: announce_signer(
            old,
            OPERATOR,
            "a",
            public_key_pem(LedgerSigner(Ed25519PrivateKey.generate()).public_key),
        ),
    }
    for name, command in commands.items():
        with pytest.raises(PrimaryFencedError) as fenced:
            command()
        assert fenced.value.code == "PRIMARY_FENCED", name
        assert fenced.value.details == {
            "epoch": 2,
            "kid": new_primary.signer.kid,
            "position": epoch.position,
            "own_kid": service.signer.kid,
        }
    assert old.ledger.head() == before
    assert key_view.snapshot_tables(old.ledger) == tables
    # reads still work
    assert old.get_key("alpha")["name"] == "alpha"
    # the promoted replica, whose own key signs epoch 2, keeps writing
    assert new_primary.fenced_by() is None
    new_primary.rotate(ctx, "alpha")


def test_an_old_primary_that_wrote_after_the_promotion_reports_the_fork(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_replica: Callable[..., Follower],
    kek: Any,
    store_url: str,
    replica_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Promotion while the primary is alive: both wrote; the fork is found."""
    workload(service, ctx, clock)
    follower = announced_replica(service, open_replica, ctx)
    fork_at = service.ledger.head().position + 1
    follower.promote(OPERATOR, "promote", force=False)
    new_primary = follower.service
    service.rotate(ctx, "alpha")  # the old primary, still alive, takes a write
    before = service.ledger.head()

    keys = {
        service.signer.kid: service.signer.public_key,
        new_primary.signer.kid: new_primary.signer.public_key,
    }
    rejoined = Follower(service, ServiceSource(new_primary), keys, kek=kek)
    rejoined.prepare()
    with pytest.raises(ReplicaHalted) as halted:
        rejoined.step()
    assert (halted.value.halt.reason, halted.value.halt.position) == ("FORK", fork_at)
    assert service.ledger.head() == before

    # the comparison tool finds the same position from the two stores
    compared = compare_ledgers.main(
        argparse.Namespace(left=store_url, right=replica_url)
    )
    assert compared == 1
    assert f"FORK at position {fork_at}" in capsys.readouterr().out


def test_compare_of_two_exports_reports_a_prefix_and_a_fork(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_replica: Callable[..., Follower],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """keyledger compare on export archives: exit 0 for a prefix, 1 at the fork."""
    workload(service, ctx, clock)
    follower = announced_replica(service, open_replica, ctx)
    fork_at = service.ledger.head().position + 1
    early = export_to(tmp_path / "early.zip", service)
    follower.promote(OPERATOR, "promote", force=False)
    new_primary = follower.service
    new_primary.trusted_keys.update(service.public_keys())
    new_primary.rotate(ctx, "beta")
    service.rotate(ctx, "alpha")  # the old primary, still alive, takes a write
    old = export_to(tmp_path / "old.zip", service)
    new = export_to(tmp_path / "new.zip", new_primary)

    def compare(left: Path, right: Path) -> tuple[int, str]:
        code = compare_ledgers.main(
            argparse.Namespace(left=str(left), right=str(right))
        )
        return code, capsys.readouterr().out

    prefix = compare(early, new)
    assert prefix == (
        0,
        f"no fork: the left ledger (head {fork_at - 1}) is a prefix of the other "
        f"(head {new_primary.ledger.head().position})\n",
    )
    code, out = compare(old, new)
    assert code == 1
    assert out.startswith(
        f"FORK at position {fork_at}: the ledgers agree through {fork_at - 1} "
    )
    assert compare(old, old) == (0, f"identical through position {fork_at}\n")


def export_to(path: Path, service: KeyService) -> Path:
    """The whole ledger of ``service`` as an export archive at ``path``."""
    path.write_bytes(build_export(service, ExportScope(None, None, ())).data)
    return path


def test_compare_hashes_reports_prefix_identity_and_fork() -> None:
    def chain(*hashes: str, start: int = 1) -> list[tuple[int, str]]:
        return [(start + offset, text) for offset, text in enumerate(hashes)]

    same = compare_hashes(chain("a", "b"), chain("a", "b"))
    assert (same.fork_at, same.agreed_through) == (None, 2)
    assert same.describe() == "identical through position 2"
    prefix = compare_hashes(chain("a"), chain("a", "b", "c"))
    assert (prefix.fork_at, prefix.left_head, prefix.right_head) == (None, 1, 3)
    fork = compare_hashes(chain("a", "b", "x", "y"), chain("a", "b", "c"))
    assert (fork.fork_at, fork.agreed_through, fork.left_head, fork.right_head) == (
        3,
        2,
        4,
        3,
    )
    # exports that skip positions compare on the positions both hold
    sparse = compare_hashes([(2, "b"), (5, "e")], [(1, "a"), (2, "b"), (5, "z")])
    assert sparse.fork_at == 5


def test_a_replica_store_is_served_as_a_primary_only_once_promoted(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_replica: Callable[..., Follower],
    replica_url: str,
    tmp_path: Path,
) -> None:
    """``keyledger serve`` on a replica's store would fork it: refused till promoted."""
    workload(service, ctx, clock)
    follower = announced_replica(service, open_replica, ctx)
    replica = follower.service
    head = replica.ledger.head()
    # the replica's own data folder, holding the key it signs with once promoted
    served = tmp_path / "served"
    served.mkdir(mode=0o700)
    pem = replica.signer._private_key.private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    write_secret_file(served / SIGNING_KEY_FILE, pem)
    settings = Settings(data_dir=served, database_url=replica_url)

    with pytest.raises(StoreIsReplicaError) as refused:
        build_runtime(settings)

    assert refused.value.details["state"] == "following"
    assert "keyledger replica" in refused.value.message
    assert replica.ledger.head() == head

    follower.promote(OPERATOR, "promote", force=False)
    runtime = build_runtime(settings)
    try:
        assert runtime.fenced is None
    finally:
        runtime.close()
