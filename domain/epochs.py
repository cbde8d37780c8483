"""Who may sign the ledger: announced successor keys, and the epochs of promotion.

A replica's own signing key is announced on the primary's ledger, in an entry
the primary signs, before the replica can be promoted: so a verifier that trusts
only the primary's key can follow the chain into the new primary's entries
(C21). Promotion starts a new epoch, recorded as the first entry the new primary
signs; from that entry on, every other key is retired.

Each announcement and each epoch is an aggregate of one event whose id is
derived from what it names, so recording the same key twice, or epoch N twice
(two concurrent promotions), is refused by the store's uniqueness: one epoch.

The TOPIC strings are a stored format: never rename them.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic

SIGNER_ANNOUNCED_TOPIC = "keyledger.ledger.SignerAnnounced"
PROMOTED_TOPIC = "keyledger.ledger.Promoted"
_NAMESPACE = uuid.UUID("6f1d2c4e-8a3b-4f5e-9c7d-2b1a0e9f8d63")


def announcement_id(kid: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"signer/{kid}")


def epoch_id(epoch: int) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"epoch/{epoch}")


class SignerAnnouncement(Aggregate):
    """A public key that may sign this ledger's entries after a promotion."""

    class Announced(Aggregate.Created):
        TOPIC = SIGNER_ANNOUNCED_TOPIC
        kid: str
        public_key_pem: str
        purpose: str

    def __init__(self, kid: str, public_key_pem: str, purpose: str) -> None:
        self.kid = kid
        self.public_key_pem = public_key_pem
        self.purpose = purpose

    @classmethod
    def announce(
        cls, *, kid: str, public_key_pem: str, purpose: str, now: datetime
    ) -> SignerAnnouncement:
        return cls._create(
            cls.Announced,
            id=announcement_id(kid),
            kid=kid,
            public_key_pem=public_key_pem,
            purpose=purpose,
            timestamp=now,
        )


class Epoch(Aggregate):
    """A promotion: from here on the ledger is signed by ``kid`` alone."""

    class Promoted(Aggregate.Created):
        TOPIC = PROMOTED_TOPIC
        epoch: int
        kid: str
        previous_source: str
        applied_position: int
        primary_head_seen: int
        forced: bool
        possibly_lost_from: int | None
        possibly_lost_to: int | None

    def __init__(
        self,
        epoch: int,
        kid: str,
        previous_source: str,
        applied_position: int,
        primary_head_seen: int,
        forced: bool,
        possibly_lost_from: int | None,
        possibly_lost_to: int | None,
    ) -> None:
        self.epoch = epoch
        self.kid = kid
        self.previous_source = previous_source
        self.applied_position = applied_position
        self.primary_head_seen = primary_head_seen
        self.forced = forced
        self.possibly_lost_from = possibly_lost_from
        self.possibly_lost_to = possibly_lost_to

    @classmethod
    def promote(
        cls,
        *,
        epoch: int,
        kid: str,
        previous_source: str,
        applied_position: int,
        primary_head_seen: int,
        forced: bool,
        now: datetime,
    ) -> Epoch:
        """Epoch ``epoch``; a forced promotion behind the head names the lost window."""
        behind = primary_head_seen > applied_position
        return cls._create(
            cls.Promoted,
            id=epoch_id(epoch),
            epoch=epoch,
            kid=kid,
            previous_source=previous_source,
            applied_position=applied_position,
            primary_head_seen=primary_head_seen,
            forced=forced,
            possibly_lost_from=applied_position + 1 if behind else None,
            possibly_lost_to=primary_head_seen if behind else None,
            timestamp=now,
        )


for _event in (SignerAnnouncement.Announced, Epoch.Promoted):
    get_topic(_event)
