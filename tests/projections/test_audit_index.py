"""The audit index answers filtered pages from its indexes, on both stores."""

from __future__ import annotations

from domain.access_audit import RequestRefusal
from domain.clock import AdjustableClock
from ledger.audit import AuditFilter, search
from ledger.service import CommandContext, KeyService
from ledger.store import Actor, LedgerWrite


def _refuse(service: KeyService, clock: AdjustableClock, principal: str) -> None:
    refusal = RequestRefusal.record(
        fields={
            "status": 403,
            "code": "FORBIDDEN",
            "method": "POST",
            "route": "/v1/keys/{name}/rotate",
            "key": "pay",
            "principal": principal,
            "token_id": f"tok_{principal}",
            "client": None,
            "user_agent": None,
        },
        window_seconds=60,
        now=clock.now(),
    )
    service.app.save(refusal, ledger=LedgerWrite(Actor(principal, "-"), "req"))


def _index_names(service: KeyService) -> set[str]:
    if service.ledger.__class__.__name__.startswith("SQLite"):
        rows = service.ledger.query(
            "SELECT name FROM sqlite_master WHERE type = 'index' "
            "AND tbl_name = 'audit_index'"
        )
        return {row["name"] for row in rows}
    rows = service.ledger.query(
        "SELECT indexname AS name FROM pg_indexes WHERE tablename = 'audit_index' "
        "AND schemaname = current_schema()"
    )
    return {row["name"] for row in rows}


def test_outcome_filter_pages_refusals_in_position_order(
    service: KeyService, ctx: CommandContext, clock: AdjustableClock
) -> None:
    """Refused entries, paged two at a time through the outcome index, are all found."""
    # given: refusals between successful commands
    service.create_key(ctx, name="pay")
    refusers = ["ann", "ben", "cat", "dan", "eve"]
    for principal in refusers:
        _refuse(service, clock, principal)
        service.rotate(ctx, "pay")
    # when: the refusals are read two at a time
    seen: list[dict] = []
    after = 0
    while True:
        page, cursor = search(
            service, AuditFilter(outcome="refused"), after=after, limit=2
        )
        seen += page
        if cursor is None:
            break
        after = cursor
    # then: every refusal once, in position order, and only refusals
    assert [entry["actor"]["principal"] for entry in seen] == refusers
    positions = [entry["position"] for entry in seen]
    assert positions == sorted(positions)
    successes, _ = search(service, AuditFilter(outcome="success"), limit=100)
    assert len(successes) == 1 + len(refusers)
    assert "audit_index_outcome_idx" in _index_names(service)
