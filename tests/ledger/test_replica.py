"""A replica follows a primary: verified byte for byte, applied once, or halted.

The primary here is a ``KeyService`` read through a source that answers exactly as
``GET /v1/events`` does (the same JSON), so every check runs on both stores
without a server; the end-to-end tests cover the HTTP path and kill -9.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from domain.access import Role
from domain.clock import AdjustableClock
from domain.errors import AuthenticationError
from ledger.access import AccessService
from ledger.replica import (
    IDLE_PAUSE,
    FeedPage,
    Follower,
    Materials,
    PinningError,
    ReplicaHalted,
    SourceUnavailable,
    pin_keys,
    public_key_fingerprint,
)
from ledger.service import CommandContext, KeyService, load_local_secrets
from ledger.signing import LedgerSigner, public_key_pem
from ledger.store import SealedEntry, checkpoint_table
from ledger.verify import verify_ledger
from projections import access_view
from projections.rebuild import rebuild
from tests.ledger._replica_support import (
    WEEK,
    ServiceSource,
    assert_same_ledger,
    follow_all,
    workload,
)


def test_replica_holds_the_same_ledger_and_read_side(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_replica: Callable[..., Follower],
) -> None:
    workload(service, ctx, clock)
    follower = open_replica(ServiceSource(service), batch=4)
    follow_all(follower)
    assert_same_ledger(service, follower.service)
    status = follower.status.as_json()
    assert status["state"] == "following"
    assert status["lag"] == {"events": 0, "seconds": 0.0}
    # material erased by destruction and by trimming is gone on the replica too
    assert not follower.service.ledger.query(
        "SELECT version FROM key_material WHERE key_id = %s AND version = 1",
        (str(service._load("alpha").id),),
    )

    # it keeps following as the primary moves on
    service.rotate(ctx, "beta")
    assert follower.step() == 1
    assert_same_ledger(service, follower.service)


def test_restart_continues_at_the_next_position(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_replica: Callable[..., Follower],
) -> None:
    """Positions applied are exactly 1..N once, whatever the restarts (C26)."""
    workload(service, ctx, clock)
    source = ServiceSource(service)
    first = open_replica(source, batch=5)
    first.step()
    assert first.service.ledger.head().position == 5
    again = open_replica(source, batch=7)
    follow_all(again)
    assert_same_ledger(service, again.service)


def test_an_entry_delivered_again_is_a_no_op(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_replica: Callable[..., Follower],
) -> None:
    workload(service, ctx, clock)

    class Repeating(ServiceSource):
        def page(self, after: int, limit: int, wait: float, **options: Any) -> FeedPage:
            # pages start three entries early (the replica already holds them)
            return super().page(max(after - 3, 0), limit + 3, wait, **options)

    follower = open_replica(Repeating(service), batch=5)
    follow_all(follower)
    assert_same_ledger(service, follower.service)


class Tampering(ServiceSource):
    """Changes one feed entry once the replica asks past ``at``."""

    def __init__(self, service: KeyService, at: int, change: Callable[..., Any]):
        super().__init__(service)
        self.at, self.change = at, change

    def body(self, body: dict[str, Any]) -> dict[str, Any]:
        for event in body["events"]:
            if event["position"] == self.at:
                self.change(event)
        return body


def _flip_payload(event: dict[str, Any]) -> None:
    event["request_id"] = event["request_id"][:-1] + "X"


def _flip_signature(event: dict[str, Any]) -> None:
    signature = bytearray(bytes.fromhex(event["signature"]))
    signature[0] ^= 1
    event["signature"] = signature.hex()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_flip_payload, "HASH_MISMATCH"),
        (_flip_signature, "BAD_SIGNATURE"),
        (lambda event: event.update(prev_hash="0" * 64), "BROKEN_LINK"),
        (
            lambda event: event.update(kid="ed25519:0000000000000000"),
            "UNKNOWN_SIGNING_KEY",
        ),
        (lambda event: event.pop("hash"), "MALFORMED_FEED"),
    ],
)
def test_a_changed_entry_halts_and_keeps_what_was_verified(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_replica: Callable[..., Follower],
    change: Callable[..., Any],
    reason: str,
) -> None:
    workload(service, ctx, clock)
    follower = open_replica(Tampering(service, 6, change), batch=4)
    follower.step()
    with pytest.raises(ReplicaHalted) as halted:
        follow_all(follower)
    assert halted.value.halt.reason == reason
    assert halted.value.halt.position == 6
    # the verified entries before it are kept; nothing of the bad one
    assert follower.service.ledger.head().position == 5
    status = follower.status.as_json()
    assert status["state"] == "halted"
    assert status["halt"]["position"] == 6
    assert status["applied"]["position"] == 5
    # it stays halted across a restart unless the operator resumes it
    with pytest.raises(ReplicaHalted):
        open_replica(ServiceSource(service))
    resumed = open_replica(ServiceSource(service), resume=True)
    follow_all(resumed)
    assert_same_ledger(service, resumed.service)


def _checkpoints(service: KeyService) -> list[dict[str, Any]]:
    table = checkpoint_table(service.ledger.events_table_name)
    rows = service.ledger.query(
        f"SELECT position, hash, recorded_at, kid, signature FROM {table} "
        "ORDER BY position"
    )
    return [{**row, "signature": bytes(row["signature"])} for row in rows]


def test_the_primary_checkpoints_follow_and_verify_on_the_replica(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_replica: Callable[..., Follower],
) -> None:
    """Checkpoints over the entries followed, and one made later over entries the
    replica already holds, are kept as signed; the replica's ledger verifies them."""
    workload(service, ctx, clock)
    service.checkpoint_now()
    service.rotate(ctx, "alpha")
    follower = open_replica(ServiceSource(service), batch=4)
    follow_all(follower)
    assert len(_checkpoints(follower.service)) == 1

    # a checkpoint made once the replica caught up comes with the next (empty) page
    late = service.checkpoint_now()
    assert late is not None and follower.step() == 0

    assert _checkpoints(follower.service) == _checkpoints(service)
    assert len(_checkpoints(service)) == 2
    report = verify_ledger(follower.service.ledger, service.public_keys())
    assert report.ok, report.first_failure
    assert report.checkpoints_checked == 2
    assert report.latest_checkpoint == late.position


class TamperedCheckpoints(ServiceSource):
    """Changes every checkpoint the feed carries."""

    def __init__(self, service: KeyService, change: Callable[..., Any]):
        super().__init__(service)
        self.change = change

    def body(self, body: dict[str, Any]) -> dict[str, Any]:
        for checkpoint in body.get("checkpoints", []):
            self.change(self.service, checkpoint)
        return body


def _flip_checkpoint_signature(_: KeyService, checkpoint: dict[str, Any]) -> None:
    signature = bytearray(bytes.fromhex(checkpoint["signature"]))
    signature[0] ^= 1
    checkpoint["signature"] = signature.hex()


def _sign_another_hash(service: KeyService, checkpoint: dict[str, Any]) -> None:
    # validly signed by the primary, over a hash that is not its entry's
    signed = service.app.sequencer.checkpoint(
        checkpoint["position"], "ab" * 32, checkpoint["recorded_at"]
    )
    checkpoint.update(signed.as_json())


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        pytest.param(_flip_checkpoint_signature, "CHECKPOINT_INVALID", id="signature"),
        pytest.param(_sign_another_hash, "CHECKPOINT_MISMATCH", id="hash"),
    ],
)
def test_a_bad_checkpoint_halts_and_is_not_kept(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_replica: Callable[..., Follower],
    change: Callable[..., Any],
    reason: str,
) -> None:
    """A checkpoint that does not check out halts the replica; none is kept."""
    workload(service, ctx, clock)
    checkpoint = service.checkpoint_now()
    assert checkpoint is not None
    follower = open_replica(TamperedCheckpoints(service, change), batch=100)

    with pytest.raises(ReplicaHalted) as halted:
        follow_all(follower)

    assert halted.value.halt.reason == reason
    assert halted.value.halt.position == checkpoint.position
    assert _checkpoints(follower.service) == []
    assert follower.status.as_json()["state"] == "halted"
    # resumed against an honest feed, it keeps the checkpoint as signed
    resumed = open_replica(ServiceSource(service), resume=True)
    follow_all(resumed)
    assert _checkpoints(resumed.service) == _checkpoints(service)
    assert_same_ledger(service, resumed.service)


def test_a_gap_in_the_feed_halts(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_replica: Callable[..., Follower],
) -> None:
    workload(service, ctx, clock)

    class Skipping(ServiceSource):
        def body(self, body: dict[str, Any]) -> dict[str, Any]:
            body["events"] = [e for e in body["events"] if e["position"] != 3]
            return body

    follower = open_replica(Skipping(service))
    with pytest.raises(ReplicaHalted) as halted:
        follow_all(follower)
    assert (halted.value.halt.reason, halted.value.halt.position) == ("GAP", 3)
    assert follower.service.ledger.head().position == 2


def test_a_primary_whose_head_moved_back_halts(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_replica: Callable[..., Follower],
) -> None:
    """A primary restored from an older backup is behind the replica (C28)."""
    workload(service, ctx, clock)
    source = ServiceSource(service)
    follower = open_replica(source)
    follow_all(follower)
    held = follower.service.ledger.head()

    class Restored(ServiceSource):
        def body(self, body: dict[str, Any]) -> dict[str, Any]:
            body["events"] = [e for e in body["events"] if e["position"] <= 10]
            body["head_position"] = min(body["head_position"], 10)
            return body

    follower.source = Restored(service)
    with pytest.raises(ReplicaHalted) as halted:
        follower.step()
    assert halted.value.halt.reason == "PRIMARY_HEAD_REGRESSED"
    assert follower.service.ledger.head() == held


def test_a_primary_with_another_history_is_reported_as_a_fork(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_replica: Callable[..., Follower],
    open_service: Callable[..., KeyService],
    signer: LedgerSigner,
    tmp_path: Path,
    store_url: str,
) -> None:
    """A primary that appended different entries after position 8 forks at 9."""
    workload(service, ctx, clock)
    follower = open_replica(ServiceSource(service))
    follow_all(follower)
    held = follower.service.ledger.head()

    # another ledger that shares the first 8 entries, then goes its own way
    other_url = _another_store(store_url, tmp_path)
    other = open_service(database_url=other_url, signer=signer)
    copier = Follower(other, ServiceSource(service), service.public_keys(), batch=8)
    copier.prepare()
    copier.step()
    assert other.ledger.head().position == 8
    for _ in range(held.position):
        other.rotate(ctx, "gamma")

    follower.source = ServiceSource(other)
    follower._held_checked = False
    with pytest.raises(ReplicaHalted) as halted:
        follower.step()
    assert (halted.value.halt.reason, halted.value.halt.position) == ("FORK", 9)
    assert follower.service.ledger.head() == held


def _another_store(store_url: str, tmp_path: Path) -> str:
    if store_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'other.sqlite3'}"
    database = store_url.partition("?")[0]
    schema = f"o_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return f"{database}?schema={schema}"


def test_material_that_does_not_match_its_fingerprint_halts(
    service: KeyService,
    ctx: CommandContext,
    open_replica: Callable[..., Follower],
) -> None:
    service.create_key(ctx, name="k")

    class WrongMaterial(ServiceSource):
        def materials(self, wanted: Sequence[tuple[str, int]]) -> Materials:
            return Materials(
                {
                    (key_id, version): service.kek.wrap(
                        os.urandom(32), key_id=key_id, version=version
                    )
                    for key_id, version in wanted
                }
            )

    follower = open_replica(WrongMaterial(service))
    with pytest.raises(ReplicaHalted) as halted:
        follower.step()
    assert halted.value.halt.reason == "MATERIAL_MISMATCH"
    assert follower.service.ledger.head().position == 0


class StrippingMaterial(ServiceSource):
    """Leaves one version's material out; ``claim`` is its claimed erasure, if any."""

    def __init__(self, service: KeyService, version: int, claim: int | None) -> None:
        super().__init__(service)
        self.version, self.claim = version, claim

    def materials(self, wanted: Sequence[tuple[str, int]]) -> Materials:
        found = super().materials(wanted)
        for key_id, version in wanted:
            if version == self.version:
                found.wrapped.pop((key_id, version), None)
                if self.claim is not None:
                    found.erased[(key_id, version)] = self.claim
        return found


@pytest.mark.parametrize("claim", [None, "a later rotation", "the creation itself"])
def test_live_material_left_out_halts_and_keeps_what_it_holds(
    service: KeyService,
    ctx: CommandContext,
    open_replica: Callable[..., Follower],
    claim: str | None,
) -> None:
    """No material for a live version: MATERIAL_MISSING, whatever erasure is claimed."""
    service.create_key(ctx, name="k")
    service.create_key(ctx, name="other")
    held = service.ledger.head()
    rotated = service.rotate(ctx, "k").receipts[-1].position
    later = service.rotate(ctx, "other").receipts[-1].position
    claimed = {None: None, "a later rotation": later, "the creation itself": rotated}
    source = StrippingMaterial(service, version=2, claim=claimed[claim])
    follower = open_replica(source, batch=1)
    while follower.service.ledger.head().position < held.position:
        follower.step()
    assert follower.service.ledger.head() == held

    with pytest.raises(ReplicaHalted) as halted:
        follower.step()
    assert halted.value.halt.reason == "MATERIAL_MISSING"
    assert halted.value.halt.position == rotated
    assert follower.service.ledger.head() == held
    assert follower.status.as_json()["halt"]["reason"] == "MATERIAL_MISSING"
    assert not follower.service.ledger.query(
        "SELECT version FROM key_material WHERE version = 2"
    )
    # recorded: a restart stays halted
    with pytest.raises(ReplicaHalted):
        open_replica(source)


def test_material_left_out_of_an_erased_version_is_accepted(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_replica: Callable[..., Follower],
) -> None:
    """Destroyed after the batch that created it: the signed erasure is checked."""
    service.create_key(ctx, name="k")
    service.rotate(ctx, "k")
    service.schedule_destruction(ctx, "k", 1, days=7)
    clock.advance(WEEK)
    service.destroy_due()
    source = ServiceSource(service)
    follower = open_replica(source, batch=1)
    follow_all(follower)
    assert_same_ledger(service, follower.service)
    assert follower.status.state == "following"


def test_the_primary_lost_while_an_erasure_is_checked_is_retried_cleanly(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_replica: Callable[..., Follower],
) -> None:
    """Nothing of the interrupted batch sticks: the retry applies it once."""
    service.create_key(ctx, name="k")

    class Flaky(ServiceSource):
        """Unreachable once: right after naming an erasure, before it is read."""

        fail_next, failed = False, False

        def materials(self, wanted: Sequence[tuple[str, int]]) -> Materials:
            found = super().materials(wanted)
            self.fail_next = bool(found.erased) and not self.failed
            return found

        def page(self, after: int, limit: int, wait: float, **options: Any) -> FeedPage:
            if self.fail_next:
                self.fail_next, self.failed = False, True
                raise SourceUnavailable("ConnectError: the primary went away")
            return super().page(after, limit, wait, **options)

    source = Flaky(service)
    follower = open_replica(source)
    follow_all(follower)
    for _ in range(2):
        service.rotate(ctx, "k")
    service.schedule_destruction(ctx, "k", 2, days=7)
    clock.advance(WEEK)
    service.destroy_due()
    held = follower.service.ledger.head()
    with pytest.raises(SourceUnavailable):
        follower.step()
    assert follower.service.ledger.head() == held
    follow_all(follower)
    assert source.failed
    assert_same_ledger(service, follower.service)
    assert follower.status.state == "following"


class _Stopping(threading.Event):
    """A stop signal that records each pause of the follower, and stops it there."""

    def __init__(self) -> None:
        super().__init__()
        self.pauses: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.pauses.append(timeout)
        self.set()
        return True


def test_a_long_poll_answered_without_waiting_is_not_repeated_at_once(
    service: KeyService, ctx: CommandContext, open_replica: Callable[..., Follower]
) -> None:
    """When the primary answers a long-poll without waiting (its cap on open
    long-polls is reached), the follower pauses before polling again."""

    class Busy(ServiceSource):
        def page(self, *args: Any, **options: Any) -> FeedPage:
            return replace(super().page(*args, **options), wait_refused=True)

    service.create_key(ctx, name="k")
    source = Busy(service)
    follower = open_replica(source)
    follow_all(follower)
    pages = source.pages
    stopping = _Stopping()

    assert follower.run(stopping, wait=10) is None

    assert stopping.pauses == [IDLE_PAUSE]
    assert source.pages == pages + 1


def test_pinning_refuses_no_pin_and_a_wrong_key() -> None:
    primary = LedgerSigner(Ed25519PrivateKey.generate())
    stranger = LedgerSigner(Ed25519PrivateKey.generate())
    pem = public_key_pem(primary.public_key)
    with pytest.raises(PinningError, match="no public key is pinned"):
        pin_keys(pem)
    with pytest.raises(PinningError, match="not pinned"):
        pin_keys(pem, key_files=[public_key_pem(stranger.public_key).encode()])
    with pytest.raises(PinningError, match="not pinned"):
        pin_keys(pem, fingerprints=[public_key_fingerprint(stranger.public_key)])
    with pytest.raises(PinningError, match="64 hex"):
        pin_keys(pem, fingerprints=[primary.kid])
    assert set(pin_keys(pem, key_files=[pem.encode()])) == {primary.kid}
    fingerprint = public_key_fingerprint(primary.public_key)
    assert set(pin_keys(pem, fingerprints=[fingerprint])) == {primary.kid}


def test_verify_fingerprints_prints_what_a_replica_pins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """keyledger verify --fingerprints prints the line --pin-fingerprint accepts,
    from the data folder's key or a PEM file; a folder without keys exits 2."""
    from scripts.cli import main

    data_dir = tmp_path / "primary"
    signer, _, _ = load_local_secrets(data_dir)
    pem = public_key_pem(signer.public_key)
    pem_file = tmp_path / "primary.pem"
    pem_file.write_text(pem)

    assert main(["verify", "--data-dir", str(data_dir), "--fingerprints"]) == 0
    own = capsys.readouterr().out.split()
    assert main(["verify", "--public-key", str(pem_file), "--fingerprints"]) == 0
    from_file = capsys.readouterr().out.split()

    expected = [public_key_fingerprint(signer.public_key), signer.kid]
    assert own[:2] == expected
    assert from_file[:2] == expected
    assert set(pin_keys(pem, fingerprints=[own[0]])) == {signer.kid}
    empty = tmp_path / "empty"
    assert main(["verify", "--data-dir", str(empty), "--fingerprints"]) == 2
    assert "cannot read the key" in capsys.readouterr().err


def test_decoded_entries_are_the_stored_bytes(
    service: KeyService, ctx: CommandContext
) -> None:
    service.create_key(ctx, name="bytes")
    page = ServiceSource(service).page(0, 10, 0)
    rows = service.ledger.query(
        f"SELECT state, entry_hash FROM {service.ledger.events_table_name}"
    )
    entry: SealedEntry = page.entries[0]
    assert entry.entry_bytes == bytes(rows[0]["state"])
    assert replace(entry).hash == rows[0]["entry_hash"]


def test_principals_and_tokens_follow_so_a_replica_token_authenticates(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_replica: Callable[..., Follower],
) -> None:
    access = AccessService(service.app, clock)
    access.create_principal(ctx, name="reader", roles=frozenset({Role.AUDITOR}))
    issued = access.issue_token(ctx, "reader", expires_in_seconds=3600)
    revoked = access.issue_token(ctx, "reader", expires_in_seconds=3600)
    access.revoke_token(ctx, revoked.token_id, reason="test")
    follower = open_replica(ServiceSource(service))
    follow_all(follower)
    replica = follower.service
    assert access_view.snapshot_tables(replica.ledger) == access_view.snapshot_tables(
        service.ledger
    )
    on_replica = AccessService(replica.app, clock)
    actor = on_replica.authenticate(issued.token)
    assert actor is not None and actor.principal == "reader"
    with pytest.raises(AuthenticationError):
        on_replica.authenticate(revoked.token)
    assert rebuild(replica.app, apply=False).matched_live
