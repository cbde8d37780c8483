"""Dual control: risky actions on a key wait for a second principal's approval.

A key's ``DualControlPolicy`` names the actions that need approval and how long a
request stays open. Such an action is not carried out when asked for: an
``ApprovalRequest`` is recorded instead, and the action runs only when a
different principal approves it before it expires. The request, its approval,
its expiry and a failure of the approved action are all events.

Event topics are a stored format (``keyledger.dual_control.*``): never rename them.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic

from domain.clock import format_time, parse_time
from domain.errors import InvalidArgumentError, KeyLifecycleError

# What a policy can put under dual control.
ACTIONS = ("schedule-destruction", "rollback", "weaken-policy", "restore")
MIN_TTL_SECONDS, MAX_TTL_SECONDS = 60, 7 * 24 * 3600
_POLICY_NAMESPACE = uuid.UUID("9c4e2b71-0d3a-4f85-b6e1-7a2c5d8f3e90")


class ApprovalError(KeyLifecycleError):
    """An approval is refused by a dual-control rule (HTTP 409)."""

    code = "APPROVAL_REFUSED"


def policy_id_for(key: str) -> uuid.UUID:
    return uuid.uuid5(_POLICY_NAMESPACE, key)


def validate_actions(actions: list[str]) -> list[str]:
    unknown = sorted(set(actions) - set(ACTIONS))
    if unknown:
        raise InvalidArgumentError(
            f"Unknown action(s): {', '.join(unknown)}; known: {', '.join(ACTIONS)}.",
            code="INVALID_ACTION",
        )
    return sorted(set(actions))


class DualControlPolicy(Aggregate):
    """Which actions on one key need a second principal, and for how long they wait."""

    class Set(Aggregate.Created):
        """The key's dual-control policy was first set."""

        TOPIC = "keyledger.dual_control.PolicySet"
        key: str
        actions: list[str]
        ttl_seconds: int

    class Changed(Aggregate.Event):
        """The key's dual-control policy was replaced."""

        TOPIC = "keyledger.dual_control.PolicyChanged"
        actions: list[str]
        ttl_seconds: int
        previous_actions: list[str]

        def apply(self, aggregate: DualControlPolicy) -> None:
            aggregate.actions = list(self.actions)
            aggregate.ttl_seconds = self.ttl_seconds

    def __init__(self, key: str, actions: list[str], ttl_seconds: int) -> None:
        self.key = key
        self.actions = list(actions)
        self.ttl_seconds = ttl_seconds

    @classmethod
    def create(
        cls, *, key: str, actions: list[str], ttl_seconds: int, now: datetime
    ) -> DualControlPolicy:
        return cls._create(
            cls.Set,
            id=policy_id_for(key),
            key=key,
            actions=validate_actions(actions),
            ttl_seconds=validate_ttl(ttl_seconds),
            timestamp=now,
        )

    def change(self, actions: list[str], ttl_seconds: int, *, now: datetime) -> None:
        self.trigger_event(
            self.Changed,
            actions=validate_actions(actions),
            ttl_seconds=validate_ttl(ttl_seconds),
            previous_actions=list(self.actions),
            timestamp=now,
        )

    def is_weakened_by(self, actions: list[str], ttl_seconds: int) -> bool:
        """Whether the new policy guards less, or lets requests wait longer."""
        return not set(actions) >= set(self.actions) or ttl_seconds > self.ttl_seconds

    def view(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "actions": self.actions,
            "ttl_seconds": self.ttl_seconds,
        }


def validate_ttl(seconds: int) -> int:
    """Return ``seconds`` if it is an allowed time limit for requests, else 422."""
    if not MIN_TTL_SECONDS <= seconds <= MAX_TTL_SECONDS:
        raise InvalidArgumentError(
            f"ttl_seconds is {MIN_TTL_SECONDS} to {MAX_TTL_SECONDS}.",
            code="INVALID_TTL",
        )
    return seconds


class ApprovalRequest(Aggregate):
    """An action on a key, waiting for a second principal's approval."""

    class Requested(Aggregate.Created):
        """An action under dual control was asked for; it has not happened."""

        TOPIC = "keyledger.dual_control.Requested"
        key: str
        action: str
        arguments: dict[str, Any]
        requester: str
        requester_token_id: str
        expires_at: str

    class Approved(Aggregate.Event):
        """A second principal approved; the action is carried out next."""

        TOPIC = "keyledger.dual_control.Approved"
        approver: str
        approver_token_id: str

        def apply(self, aggregate: ApprovalRequest) -> None:
            aggregate.status = "approved"
            aggregate.approver = self.approver

    class Expired(Aggregate.Event):
        """The request was not approved in time; the action never happens."""

        TOPIC = "keyledger.dual_control.Expired"

        def apply(self, aggregate: ApprovalRequest) -> None:
            aggregate.status = "expired"

    class ActionFailed(Aggregate.Event):
        """The approved action was refused when it was carried out."""

        TOPIC = "keyledger.dual_control.ActionFailed"
        code: str

        def apply(self, aggregate: ApprovalRequest) -> None:
            aggregate.status = "failed"

    def __init__(
        self,
        key: str,
        action: str,
        arguments: dict[str, Any],
        requester: str,
        requester_token_id: str,
        expires_at: str,
    ) -> None:
        self.key = key
        self.action = action
        self.arguments = dict(arguments)
        self.requester = requester
        self.expires_at = expires_at
        self.status = "pending"
        self.approver: str | None = None

    @classmethod
    def request(
        cls,
        *,
        key: str,
        action: str,
        arguments: dict[str, Any],
        requester: str,
        requester_token_id: str,
        expires_at: datetime,
        now: datetime,
    ) -> ApprovalRequest:
        return cls._create(
            cls.Requested,
            id=uuid.uuid4(),
            key=key,
            action=action,
            arguments=arguments,
            requester=requester,
            requester_token_id=requester_token_id,
            expires_at=format_time(expires_at),
            timestamp=now,
        )

    def is_expired(self, now: datetime) -> bool:
        return self.status == "pending" and now >= parse_time(self.expires_at)

    def expire(self, *, now: datetime) -> None:
        self.trigger_event(self.Expired, timestamp=now)

    def approve(self, approver: str, token_id: str, *, now: datetime) -> None:
        """Approve, unless it is not pending, has expired, or is the requester's own."""
        if self.status != "pending":
            raise ApprovalError(
                f"The request is {self.status}, not pending.",
                code="APPROVAL_NOT_PENDING",
                status=self.status,
            )
        if now >= parse_time(self.expires_at):
            raise ApprovalError(
                "The request expired before it was approved.",
                code="APPROVAL_EXPIRED",
                expires_at=self.expires_at,
            )
        if approver == self.requester:
            raise ApprovalError(
                "A request must be approved by another principal.",
                code="SELF_APPROVAL",
            )
        self.trigger_event(
            self.Approved, approver=approver, approver_token_id=token_id, timestamp=now
        )

    def fail(self, code: str, *, now: datetime) -> None:
        self.trigger_event(self.ActionFailed, code=code, timestamp=now)

    def view(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "key": self.key,
            "action": self.action,
            "arguments": self.arguments,
            "requester": self.requester,
            "expires_at": self.expires_at,
            "status": self.status,
            "approver": self.approver,
        }


for _event in (
    DualControlPolicy.Set,
    DualControlPolicy.Changed,
    ApprovalRequest.Requested,
    ApprovalRequest.Approved,
    ApprovalRequest.Expired,
    ApprovalRequest.ActionFailed,
):
    get_topic(_event)
