"""Access facts that may repeat many times: recorded once per window, with a count.

The first occurrence in a window is recorded before the request goes on (fail
closed); repeats of the same fact within the window are only counted, and the
count is recorded as one more event on the same short stream when the window
closes. So a client that repeats a request cannot flood the ledger, and still
every repeat is accounted for.

Each window is its own stream (a fresh id), so recording never loads history.
Event topics are a stored format (``keyledger.access.*``): never rename them.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic

from domain.clock import format_time


class _Window(Aggregate):
    """One window of a repeating fact: its first occurrence and its repeats."""

    repeats = 0
    # The name of the subclass's event for "this many more in the window"
    # (a name, as the library re-creates event classes held as attributes).
    counted = ""

    def count_repeats(
        self,
        repeats: int,
        *,
        last_at: datetime,
        now: datetime,
        details: list[str] | None = None,
        more_details: bool = False,
    ) -> None:
        """Record ``repeats`` more occurrences; ``details`` are the distinct values
        (key names) the window's occurrences named, kept only where the event
        has room for them."""
        self.trigger_event(
            getattr(self, self.counted),
            repeats=repeats,
            last_at=format_time(last_at),
            timestamp=now,
            **self._counted_details(details or [], more_details),
        )

    def _counted_details(self, details: list[str], more: bool) -> dict[str, Any]:
        return {}


class BootstrapTokenUse(_Window):
    """The bootstrap token was used; PCI DSS 10.2.1.5 wants every such use seen."""

    class Used(Aggregate.Created):
        """The bootstrap token was used, the first time in this window."""

        TOPIC = "keyledger.access.BootstrapTokenUsed"
        token_id: str
        window_seconds: int

    class UsesCounted(Aggregate.Event):
        """The bootstrap token was used ``repeats`` more times in the window."""

        TOPIC = "keyledger.access.BootstrapTokenUsesCounted"
        repeats: int
        last_at: str

        def apply(self, aggregate: BootstrapTokenUse) -> None:
            aggregate.repeats += self.repeats

    counted = "UsesCounted"

    def __init__(self, token_id: str, window_seconds: int) -> None:
        self.token_id = token_id

    @classmethod
    def record(
        cls, *, token_id: str, window_seconds: int, now: datetime
    ) -> BootstrapTokenUse:
        return cls._create(
            cls.Used,
            id=uuid.uuid4(),
            token_id=token_id,
            window_seconds=window_seconds,
            timestamp=now,
        )


class RequestRefusal(_Window):
    """A request was refused: 401, 403, or a command refused with 409 or 422.

    What is kept: status, reason code, method, route template, key name if the
    route names one, and who and from where. Never the token or the body.
    Repeats are those of the same caller (principal, else client), code and
    route, whatever key they name: the count keeps the distinct key names.
    """

    class Refused(Aggregate.Created):
        """A request was refused, the first time in this window."""

        TOPIC = "keyledger.access.RequestRefused"
        status: int
        code: str
        method: str
        route: str
        key: str | None
        principal: str | None
        token_id: str | None
        client: str | None
        user_agent: str | None
        window_seconds: int

    class RepeatsCounted(Aggregate.Event):
        """The same refusal happened ``repeats`` more times in the window."""

        TOPIC = "keyledger.access.RefusalsRepeated"
        repeats: int
        last_at: str
        # The distinct key names the window's refusals named (the first one's
        # too), at most ten, and whether there were more. Counts recorded
        # before these existed have neither.
        keys: list[str] | None = None
        more_keys: bool | None = None

        def apply(self, aggregate: RequestRefusal) -> None:
            aggregate.repeats += self.repeats

    counted = "RepeatsCounted"

    def __init__(self, **fields: Any) -> None:
        self.fields = fields

    def _counted_details(self, details: list[str], more: bool) -> dict[str, Any]:
        return {"keys": details, "more_keys": more}

    @classmethod
    def record(
        cls, *, fields: dict[str, Any], window_seconds: int, now: datetime
    ) -> RequestRefusal:
        return cls._create(
            cls.Refused,
            id=uuid.uuid4(),
            window_seconds=window_seconds,
            timestamp=now,
            **fields,
        )


class AuditTrailRead(_Window):
    """Someone read the audit trail: a key's history or state in the past, or the feed.

    PCI DSS 10.2.1.3 wants all access to audit logs captured. Repeats of the same
    read by the same caller within the window are counted, not recorded each.
    """

    class Read(Aggregate.Created):
        """The audit trail was read, the first time in this window."""

        TOPIC = "keyledger.access.AuditTrailRead"
        route: str
        key: str | None
        principal: str
        token_id: str
        window_seconds: int
        # What was looked at: the path asked for (a principal's name, a key's)
        # and the query (filters, at, position) as [name, value] pairs. Reads
        # recorded before these existed have neither.
        path: str | None = None
        query: list[list[str]] | None = None

    class ReadsCounted(Aggregate.Event):
        """The same read happened ``repeats`` more times in the window."""

        TOPIC = "keyledger.access.AuditTrailReadsCounted"
        repeats: int
        last_at: str

        def apply(self, aggregate: AuditTrailRead) -> None:
            aggregate.repeats += self.repeats

    counted = "ReadsCounted"

    def __init__(self, **fields: Any) -> None:
        self.fields = fields

    @classmethod
    def record(
        cls, *, fields: dict[str, Any], window_seconds: int, now: datetime
    ) -> AuditTrailRead:
        return cls._create(
            cls.Read,
            id=uuid.uuid4(),
            window_seconds=window_seconds,
            timestamp=now,
            **fields,
        )


class EvidenceExport(Aggregate):
    """An export of evidence was handed out: what it covered and its digest."""

    class Exported(Aggregate.Created):
        """An export archive was built and handed to its caller."""

        TOPIC = "keyledger.access.EvidenceExported"
        scope: dict[str, Any]
        sha256: str
        entries: int
        first_position: int | None
        last_position: int | None

    def __init__(self, **fields: Any) -> None:
        self.fields = fields

    @classmethod
    def record(cls, *, now: datetime, **fields: Any) -> EvidenceExport:
        return cls._create(cls.Exported, id=uuid.uuid4(), timestamp=now, **fields)


class ServiceRun(Aggregate):
    """One run of the service, from start to stop (PCI DSS 10.2.1.6)."""

    class Started(Aggregate.Created):
        """The service started and opened the ledger."""

        TOPIC = "keyledger.service.Started"
        version: str
        kid: str
        pid: int

    class Stopping(Aggregate.Event):
        """The service is stopping; nothing is recorded by this run after it."""

        TOPIC = "keyledger.service.Stopping"

    def __init__(self, version: str, kid: str, pid: int) -> None:
        self.pid = pid

    @classmethod
    def start(cls, *, version: str, kid: str, pid: int, now: datetime) -> ServiceRun:
        return cls._create(
            cls.Started,
            id=uuid.uuid4(),
            version=version,
            kid=kid,
            pid=pid,
            timestamp=now,
        )

    def stop(self, *, now: datetime) -> None:
        self.trigger_event(self.Stopping, timestamp=now)


for _event in (
    BootstrapTokenUse.Used,
    BootstrapTokenUse.UsesCounted,
    RequestRefusal.Refused,
    RequestRefusal.RepeatsCounted,
    AuditTrailRead.Read,
    AuditTrailRead.ReadsCounted,
    EvidenceExport.Exported,
    ServiceRun.Started,
    ServiceRun.Stopping,
):
    get_topic(_event)
