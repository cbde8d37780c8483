"""Replica test helpers: the primary read as its routes render it, and a workload."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from domain.clock import AdjustableClock
from ledger.key_use import KeyUser, UseItem
from ledger.replica import (
    FeedPage,
    Follower,
    Materials,
    announce_signer,
    decode_page,
    erasure_position,
    feed_checkpoints,
    pin_keys,
)
from ledger.service import CommandContext, KeyService
from ledger.signing import public_key_pem
from ledger.store import Actor
from ledger.verify import verify_ledger
from projections import key_view
from projections.rebuild import rebuild

WEEK = timedelta(days=7)


class ServiceSource:
    """The primary's feed and material, as its HTTP routes render them."""

    def __init__(self, service: KeyService) -> None:
        self.service = service
        self.name = "test-primary"
        self.pages = 0

    def signing_key_pem(self) -> str:
        return public_key_pem(self.service.signer.public_key)

    def page(
        self,
        after: int,
        limit: int,
        wait: float,
        checkpoints_after: int | None = None,
    ) -> FeedPage:
        self.pages += 1
        events = self.service.events(after=after, limit=limit)
        body: dict[str, Any] = {
            "events": events,
            "head_position": self.service.head_position(),
        }
        if checkpoints_after is not None:
            upto = events[-1]["position"] if events else after
            body["checkpoints"] = feed_checkpoints(
                self.service.ledger, checkpoints_after, upto
            )
        return decode_page(json.loads(json.dumps(self.body(body))), after)

    def body(self, body: dict[str, Any]) -> dict[str, Any]:
        return body

    def materials(self, wanted: Sequence[tuple[str, int]]) -> Materials:
        found = Materials()
        for key_id, version in wanted:
            rows = self.service.ledger.query(
                "SELECT wrapped FROM key_material WHERE key_id = %s AND version = %s",
                (key_id, version),
            )
            if rows:
                found.wrapped[(key_id, version)] = base64.b64decode(rows[0]["wrapped"])
                continue
            position = erasure_position(self.service, key_id, version)
            if position is not None:
                found.erased[(key_id, version)] = position
        return found


def workload(service: KeyService, ctx: CommandContext, clock: AdjustableClock) -> None:
    """Every kind of event: lifecycle, erasure, uses, config, rotation period."""
    for name in ("alpha", "beta", "gamma"):
        service.create_key(ctx, name=name)
        service.rotate(ctx, name)
    service.rotate(ctx, "alpha")
    service.disable_version(ctx, "beta", 1)
    service.mark_compromised(ctx, "gamma", 1, reason="test")
    service.schedule_destruction(ctx, "beta", 1, days=7)
    service.change_minimum_versions(ctx, "alpha", min_decryption_version=2)
    service.configure_key(
        ctx, "beta", rotation_period_seconds=3600, set_rotation_period=True
    )
    clock.advance(WEEK)
    service.destroy_due()
    service.trim_versions(ctx, "alpha", min_available_version=2)
    service.disable_key(ctx, "gamma")
    item = UseItem(plaintext=base64.b64encode(b"hello").decode())
    KeyUser(service).use(ctx, "alpha", "encrypt", [item], single=True)


def follow_all(follower: Follower) -> None:
    while follower.step():
        pass


OPERATOR = Actor("operator", "tok_op")


def announced_replica(
    primary: KeyService, open_replica: Callable[..., Follower], ctx: CommandContext
) -> Follower:
    """A replica whose key the primary announced, caught up."""
    follower = open_replica(ServiceSource(primary))
    own = follower.service.signer
    announce_signer(primary, ctx.actor, "announce", public_key_pem(own.public_key))
    follow_all(follower)
    return follower


def promoted_replica(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_replica: Callable[..., Follower],
) -> KeyService:
    """After the workload, a caught-up replica of ``service`` promoted to epoch 2."""
    workload(service, ctx, clock)
    follower = announced_replica(service, open_replica, ctx)
    follower.promote(OPERATOR, "promote", force=False)
    return follower.service


def rejoined_old_primary(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_replica: Callable[..., Follower],
    kek: Any,
) -> KeyService:
    """The new primary, once the old one (``service``) followed it into epoch 2."""
    new_primary = promoted_replica(service, ctx, clock, open_replica)
    new_primary.rotate(ctx, "beta")
    both = pin_keys(
        public_key_pem(new_primary.signer.public_key),
        key_files=[
            public_key_pem(service.signer.public_key).encode(),
            public_key_pem(new_primary.signer.public_key).encode(),
        ],
    )
    rejoined = Follower(service, ServiceSource(new_primary), both, kek=kek)
    rejoined.prepare()
    follow_all(rejoined)
    assert service.ledger.head() == new_primary.ledger.head()
    return new_primary


def assert_same_ledger(primary: KeyService, replica: KeyService) -> None:
    """Same head hash, verifies with the primary's key, same read side and material."""
    assert replica.ledger.head() == primary.ledger.head()
    report = verify_ledger(replica.ledger, primary.public_keys())
    assert report.ok, report.first_failure
    assert report.head_hash == primary.ledger.head().hash
    assert key_view.snapshot_tables(replica.ledger) == key_view.snapshot_tables(
        primary.ledger
    )
    material = "SELECT key_id, version, wrapped FROM key_material ORDER BY 1, 2"
    assert replica.ledger.query(material) == primary.ledger.query(material)
    assert rebuild(replica.app, apply=False).matched_live
