"""The development clock's moves, kept on the ledger so no jump in time is hidden.

A deployment may let its admin move the service's clock forward (to let a
destruction's waiting period pass in a demonstration). Each move is an event: an
auditor sees it, and a restarted service replays the moves to keep its time.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic

from domain.clock import format_time

SERVICE_CLOCK_ID = uuid.UUID("0e6c3a51-2f7d-4c55-9d4b-6b9a1c2e7f10")


class ServiceClock(Aggregate):
    """How far the service's clock has been moved ahead of the host's."""

    class Started(Aggregate.Created):
        """The development clock was first moved."""

        TOPIC = "keyledger.clock.Started"

    class Advanced(Aggregate.Event):
        """The clock was moved forward by ``seconds``, reaching ``now``."""

        TOPIC = "keyledger.clock.Advanced"
        seconds: int
        now: str

        def apply(self, aggregate: ServiceClock) -> None:
            aggregate.offset_seconds += self.seconds

    def __init__(self) -> None:
        self.offset_seconds = 0

    @classmethod
    def start(cls, *, now: datetime) -> ServiceClock:
        return cls._create(cls.Started, id=SERVICE_CLOCK_ID, timestamp=now)

    def advance(self, seconds: int, *, now: datetime) -> None:
        """Record a move forward; ``now`` is the time the clock will show after it."""
        if seconds < 1:
            raise ValueError("The clock only moves forward.")
        self.trigger_event(
            self.Advanced, seconds=seconds, now=format_time(now), timestamp=now
        )


for _event in (ServiceClock.Started, ServiceClock.Advanced):
    get_topic(_event)
