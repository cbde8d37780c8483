"""Dual control on the ledger: policies, requests, approvals and what runs on approval.

``DualControl.guard`` is the one call a command makes before acting: it returns
None when the key's policy does not cover the action, and otherwise records an
``ApprovalRequest`` and returns it, and the command MUST NOT act. ``approve``
records the approval first and then runs the action through the ``execute``
callable it is given, as the approver; a refusal of the action is recorded too.
Any command (the backup restore included) can be put under dual control this way.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, PersistenceError

from domain.clock import Clock
from domain.dual_control import (
    ApprovalError,
    ApprovalRequest,
    DualControlPolicy,
    policy_id_for,
    validate_actions,
    validate_ttl,
)
from domain.errors import (
    ConcurrentModificationError,
    KeyledgerError,
    PrincipalNotFoundError,
)
from ledger.application import KeyLedger
from ledger.service import (
    CommandContext,
    CommandResult,
    IdempotencyRecord,
    Replay,
    _unavailable,
    check_replay,
    idempotency_statement,
    replay_saved,
    saved_response,
)
from ledger.store import SYSTEM_ACTOR, LedgerWrite, Receipt
from projections import audit_index

logger = logging.getLogger(__name__)

Execute = Callable[[CommandContext, ApprovalRequest], CommandResult]

# How long a restore waits for a custodian when no key policy sets a limit.
DEFAULT_RESTORE_TTL_SECONDS = 24 * 3600


class DualControl:
    """Policies and approval requests, recorded on the ledger."""

    def __init__(self, app: KeyLedger, clock: Clock) -> None:
        self.app = app
        self.clock = clock

    def policy(self, key: str) -> DualControlPolicy | None:
        found = self._get(policy_id_for(key))
        return found if isinstance(found, DualControlPolicy) else None

    def guard(
        self,
        context: CommandContext,
        key: str,
        action: str,
        arguments: dict[str, Any],
        check: Callable[[], object] | None = None,
    ) -> ApprovalRequest | None:
        """None if ``action`` on ``key`` may go ahead; else the request now pending.

        ``check`` runs the action against the key as it is now without recording
        it; it raises the action's own refusal, and then nothing is requested.
        """
        policy = self.policy(key)
        if policy is None or action not in policy.actions:
            return None
        replay_saved(self.app.ledger, context)
        if check is not None:
            check()
        return self.request(context, key, action, arguments, policy.ttl_seconds)

    def guard_restore(
        self,
        context: CommandContext,
        *,
        target: str,
        source: str,
        arguments: dict[str, Any],
        always: bool,
    ) -> ApprovalRequest | None:
        """None if a restore into ``target`` may go ahead; else the request now pending.

        A restore waits when the policy of the key restored into, or of the key
        the backup was taken of, names ``restore`` (a copy under a new name has
        no policy yet, so the source's stands in for it), and whenever
        ``always`` (the caller may not manage keys itself: a backup-operator).
        The request is on ``target``, with the shortest time limit of those
        policies, or ``DEFAULT_RESTORE_TTL_SECONDS`` when no policy asks.
        """
        policies = [self.policy(name) for name in sorted({target, source})]
        limits = [
            policy.ttl_seconds
            for policy in policies
            if policy is not None and "restore" in policy.actions
        ]
        if not limits and not always:
            return None
        ttl_seconds = min(limits, default=DEFAULT_RESTORE_TTL_SECONDS)
        return self.request(context, target, "restore", arguments, ttl_seconds)

    def request(
        self,
        context: CommandContext,
        key: str,
        action: str,
        arguments: dict[str, Any],
        ttl_seconds: int,
    ) -> ApprovalRequest:
        """Record a request for approval.

        Under an idempotency key the answer saved with it is the 202 every
        request gets, ``{"approval": ...}``, so a retry replays it.
        """
        replay_saved(self.app.ledger, context)
        now = self.clock.now()
        pending = ApprovalRequest.request(
            key=key,
            action=action,
            arguments=arguments,
            requester=context.actor.principal,
            requester_token_id=context.actor.token_id,
            expires_at=now + timedelta(seconds=ttl_seconds),
            now=now,
        )
        record = context.idempotency
        saved = None
        if record is not None:
            saved = replace(record, status=202, render=_approval_body)
        self._save(pending, context, key, saved, lambda _: pending)
        return pending

    def set_policy(
        self, context: CommandContext, key: str, actions: list[str], ttl_seconds: int
    ) -> tuple[dict[str, Any], list[Receipt]]:
        """Set or replace the key's policy; weakening a guarded one needs approval.

        Returns the policy, or raises ``PolicyChangePending`` when the change
        waits for approval.
        """
        replay_saved(self.app.ledger, context)
        policy = self.policy(key)
        now = self.clock.now()
        if policy is None:
            policy = DualControlPolicy.create(
                key=key, actions=actions, ttl_seconds=ttl_seconds, now=now
            )
        else:
            if "weaken-policy" in policy.actions and policy.is_weakened_by(
                actions, ttl_seconds
            ):
                # The change must be one the approval can carry out.
                validate_actions(actions)
                validate_ttl(ttl_seconds)
                arguments = {"actions": actions, "ttl_seconds": ttl_seconds}
                raise PolicyChangePending(
                    self.request(
                        context, key, "weaken-policy", arguments, policy.ttl_seconds
                    )
                )
            policy.change(actions, ttl_seconds, now=now)
        view = policy.view()
        receipts = self._save(
            policy,
            context,
            key,
            context.idempotency,
            lambda receipts: (view, receipts),
        )
        return view, receipts

    def apply_policy(
        self, context: CommandContext, pending: ApprovalRequest
    ) -> tuple[dict[str, Any], list[Receipt]]:
        """Carry out an approved policy change."""
        policy = self.policy(pending.key)
        assert policy is not None
        arguments = pending.arguments
        policy.change(
            arguments["actions"], arguments["ttl_seconds"], now=self.clock.now()
        )
        view = policy.view()
        receipts = self._save(
            policy,
            context,
            pending.key,
            context.idempotency,
            lambda receipts: (view, receipts),
        )
        return view, receipts

    def approve(
        self, context: CommandContext, request_id: str, execute: Execute
    ) -> tuple[ApprovalRequest, CommandResult | None]:
        """Approve a pending request and run its action as the approver.

        Raises:
            ApprovalError: not pending, expired (the expiry is recorded), or the
                requester's own.
            KeyledgerError: the action itself was refused (recorded as
                ``ActionFailed``).
        """
        pending = self.get(request_id)
        now = self.clock.now()
        if pending.is_expired(now):
            pending.expire(now=now)
            self._save(pending, context, pending.key)
            raise ApprovalError(
                "The request expired before it was approved; it never runs.",
                code="APPROVAL_EXPIRED",
                expires_at=pending.expires_at,
            )
        pending.approve(context.actor.principal, context.actor.token_id, now=now)
        self._save(pending, context, pending.key)
        try:
            result = execute(context, pending)
        except KeyledgerError as refusal:
            pending.fail(refusal.code, now=self.clock.now())
            self._save(pending, context, pending.key)
            raise
        return pending, result

    def expire_due(self) -> list[ApprovalRequest]:
        """Record the expiry of every pending request whose time limit has passed.

        The scheduler runs this, so an expiry is on the ledger even when nobody
        tries to approve late. Safe to run in several processes at once: a
        request another process expired (or approved) first is skipped, so each
        expiry is recorded exactly once.

        Limitation: the pending requests are found as those whose stream holds
        only their ``Requested`` event, through the audit index (caught up
        first); each is then loaded, so the cost grows with the number pending.
        """
        ledger = self.app.ledger
        audit_index.catch_up(ledger)
        table = ledger.events_table_name
        rows = ledger.query(
            f"SELECT e.originator_id FROM audit_index a JOIN {table} e "
            "ON e.notification_id = a.position WHERE a.type = %s AND NOT EXISTS "
            f"(SELECT 1 FROM {table} f WHERE f.originator_id = e.originator_id "
            "AND f.originator_version > 1) ORDER BY a.position",
            (ApprovalRequest.Requested.TOPIC,),
        )
        expired = []
        for row in rows:
            pending = self._get(uuid.UUID(str(row["originator_id"])))
            now = self.clock.now()
            if not isinstance(pending, ApprovalRequest) or not pending.is_expired(now):
                continue
            pending.expire(now=now)
            context = CommandContext(SYSTEM_ACTOR, f"scheduler-{secrets.token_hex(8)}")
            try:
                self._save(pending, context, pending.key)
            except ConcurrentModificationError:
                logger.debug("expiry_skipped", extra={"request": str(pending.id)})
                continue
            expired.append(pending)
        return expired

    def get(self, request_id: str) -> ApprovalRequest:
        try:
            found = self._get(uuid.UUID(request_id))
        except ValueError:
            found = None
        if not isinstance(found, ApprovalRequest):
            raise PrincipalNotFoundError(
                f"No approval request {request_id!r}.",
                code="APPROVAL_NOT_FOUND",
                request=request_id,
            )
        return found

    def _get(self, aggregate_id: Any) -> Any:
        try:
            return self.app.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        except PersistenceError as error:
            raise _unavailable(error) from error

    def _save(
        self,
        aggregate: Aggregate,
        context: CommandContext,
        key: str,
        record: IdempotencyRecord | None = None,
        result: Callable[[list[Receipt]], Any] | None = None,
    ) -> list[Receipt]:
        """Save the aggregate's events; with ``record``, the answer to replay too.

        ``result`` makes what ``record.render`` is given from the receipts.
        """
        write = LedgerWrite(
            actor=context.actor,
            request_id=context.request_id,
            subjects={str(aggregate.id): f"key:{key}"},
        )
        if record is not None and result is not None:
            write.after_sealed.append(
                lambda receipts: [
                    idempotency_statement(record, result(receipts), self.clock.now())
                ]
            )
        try:
            self.app.save(aggregate, ledger=write)
        except IntegrityError as error:
            saved = saved_response(self.app.ledger, record) if record else None
            if record is not None and saved is not None:
                raise Replay(check_replay(record, saved)) from None
            raise ConcurrentModificationError(
                "Another change to this dual-control record was recorded first."
            ) from error
        except PersistenceError as error:
            raise _unavailable(error) from error
        return write.receipts


def _approval_body(pending: ApprovalRequest) -> dict[str, Any]:
    return {"approval": pending.view()}


class PolicyChangePending(Exception):  # noqa: N818 - carries the pending request
    """A policy change waits for approval; it carries the request."""

    def __init__(self, pending: ApprovalRequest) -> None:
        super().__init__("pending")
        self.pending = pending
