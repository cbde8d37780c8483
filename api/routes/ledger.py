"""Ledger routes: the feed, the head and checkpoints, verification, the scheduler."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from anyio.to_thread import run_sync
from fastapi import APIRouter, Query, Request, Response

from api.body import validate
from api.deps import (
    BodyDep,
    IdempotencyKeyDep,
    NoReplayDep,
    RequestIdDep,
    RuntimeDep,
    command_context,
    require,
    require_whole_ledger,
)
from api.errors import ApiError
from api.runtime import Runtime
from api.schemas import ClockAdvance
from api.waiting import head_watch
from domain.access import Permission, permissions_of
from domain.clock import AdjustableClock, format_time
from ledger.replica import feed_checkpoints
from ledger.service import CommandResult
from ledger.store import Actor, checkpoint_table
from ledger.verify import verify_ledger

router = APIRouter(tags=["ledger"])

MAX_FEED_WAIT_SECONDS = 30


@router.get("/v1/events", operation_id="list_events")
async def list_events(
    response: Response,
    runtime: RuntimeDep,
    actor: Annotated[Actor, require(Permission.LEDGER_READ, Permission.REPLICATION)],
    *,
    after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_FEED_WAIT_SECONDS,
            description="Long-poll: when nothing follows `after`, wait up to this "
            "many seconds for the next entry before answering (at once when too "
            "many long-polls are open already).",
        ),
    ] = 0,
    checkpoints_after: Annotated[
        int | None,
        Query(
            ge=0,
            le=2**63 - 1,
            description="Also list, under `checkpoints`, the signed checkpoints "
            "over positions after this one up to the page's last (at most 100); "
            "replicas ask for them.",
        ),
    ] = None,
) -> dict[str, Any]:
    """The ledger feed: entries with hashes and signatures, in position order."""
    # Async, so a long-poll waits in the event loop and holds no worker thread;
    # the reads themselves run in the threadpool, one short hop each.
    if Permission.REPLICATION not in permissions_of(actor.roles):
        await run_sync(require_whole_ledger, runtime, actor)  # every key is in it
    page = await run_sync(_feed_page, runtime, after, limit, checkpoints_after)
    if not page["events"] and wait > 0:
        watch = head_watch(runtime.service.ledger)
        outcome = await watch.wait_for(after + 1, wait, principal=actor.principal)
        if outcome == "busy":
            response.headers["Long-Poll"] = "refused"
        page = await run_sync(_feed_page, runtime, after, limit, checkpoints_after)
    response.headers["Ledger-Position"] = str(page["head_position"])
    return page


def _feed_page(
    runtime: Runtime, after: int, limit: int, checkpoints_after: int | None
) -> dict[str, Any]:
    events = runtime.service.events(after=after, limit=limit)
    head = runtime.service.head_position()
    next_after = events[-1]["position"] if events else after
    page = {"events": events, "next_after": next_after, "head_position": head}
    if checkpoints_after is not None:
        page["checkpoints"] = feed_checkpoints(
            runtime.service.ledger, checkpoints_after, next_after
        )
    return page


@router.get("/v1/ledger/head", operation_id="get_ledger_head")
def get_head(
    response: Response,
    runtime: RuntimeDep,
    actor: Annotated[Actor, require(Permission.LEDGER_READ, Permission.REPLICATION)],
) -> dict[str, Any]:
    """The current head and the latest signed checkpoint."""
    ledger = runtime.service.ledger
    head = ledger.head()
    rows = ledger.query(
        "SELECT position, hash, recorded_at, kid, signature FROM "
        f"{checkpoint_table(ledger.events_table_name)} ORDER BY position DESC LIMIT 1"
    )
    checkpoint = _checkpoint_json(rows[0]) if rows else None
    response.headers["Ledger-Position"] = str(head.position)
    return {
        "head": {
            "position": head.position,
            "hash": head.hash,
            "recorded_at": head.recorded_at,
        },
        "checkpoint": checkpoint,
        "signing_key": {
            "kid": runtime.service.signer.kid,
            "public_key_pem": _public_pem(runtime),
        },
    }


@router.post(
    "/v1/ledger/checkpoints", status_code=201, operation_id="create_checkpoint"
)
def create_checkpoint(
    response: Response,
    runtime: RuntimeDep,
    actor: Annotated[Actor, require(Permission.LEDGER_CHECKPOINT)],
    no_replay: NoReplayDep,
) -> dict[str, Any]:
    """Sign the current head now and store it as a checkpoint."""
    signed = runtime.service.checkpoint_now()
    if signed is None:
        raise ApiError(409, "LEDGER_EMPTY", "There is nothing to checkpoint yet.")
    response.headers["Ledger-Position"] = str(signed.position)
    return {"checkpoint": signed.as_json()}


@router.get("/v1/ledger/verify", operation_id="verify_ledger")
def verify(
    response: Response,
    runtime: RuntimeDep,
    actor: Annotated[Actor, require(Permission.LEDGER_READ)],
) -> dict[str, Any]:
    """Verify the whole ledger: positions, links, hashes, signatures, checkpoints."""
    report = verify_ledger(runtime.service.ledger, runtime.service.public_keys())
    response.headers["Ledger-Position"] = str(report.head_position)
    return report.as_json()


@router.post("/v1/scheduler/run", operation_id="run_scheduler")
def run_scheduler(
    runtime: RuntimeDep,
    actor: Annotated[Actor, require(Permission.ADMIN)],
    no_replay: NoReplayDep,
) -> dict[str, Any]:
    """Destroy every version whose waiting period has passed, and record the
    expiry of every approval request past its time limit, now."""
    done = runtime.service.destroy_due()
    expired = runtime.dual_control.expire_due()
    return {
        "destroyed": [
            {"key": result.key["name"], "receipt": result.receipts[-1].as_json()}
            for result in done
        ],
        "expired": [pending.view() for pending in expired],
    }


dev_router = APIRouter(tags=["development"])


@dev_router.post("/v1/dev/clock", operation_id="advance_clock")
def advance_clock(
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    actor: Annotated[Actor, require(Permission.ADMIN)],
    request_id: RequestIdDep,
    body: BodyDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> dict[str, Any]:
    """Experimental: move the clock forward, recorded on the ledger first.

    A retry under the same ``Idempotency-Key`` replays the answer; the clock
    moves once.
    """
    clock = runtime.clock
    if not runtime.settings.dev_clock or not isinstance(clock, AdjustableClock):
        raise ApiError(404, "NOT_FOUND", "The development clock is not enabled.")
    command = validate(ClockAdvance, body)
    context = command_context(
        request, actor, request_id, None, idempotency_key, 200, _clock_body
    )
    result = runtime.service.advance_clock(context, command.seconds)
    now = clock.advance(timedelta(seconds=command.seconds))
    response.headers["Ledger-Position"] = str(result.position)
    return _clock_body(result, now)


def _clock_body(result: CommandResult, now: datetime | None = None) -> dict[str, Any]:
    return {
        "now": result.notes["now"] if now is None else format_time(now),
        "offset_seconds": result.key["offset_seconds"],
        "receipts": [receipt.as_json() for receipt in result.receipts],
    }


@router.get(
    "/healthz",
    operation_id="health",
    tags=["health"],
    openapi_extra={"security": []},
)
def health(runtime: RuntimeDep) -> dict[str, Any]:
    """Liveness and the ledger's head position; 503 when the ledger is unreachable."""
    try:
        position = runtime.service.head_position()
    except Exception as error:  # any storage failure means not healthy
        raise ApiError(
            503, "LEDGER_UNAVAILABLE", "The ledger is unreachable."
        ) from error
    return {"status": "ok", "head_position": position}


def _checkpoint_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "position": row["position"],
        "hash": row["hash"],
        "recorded_at": row["recorded_at"],
        "kid": row["kid"],
        "signature": bytes(row["signature"]).hex(),
    }


def _public_pem(runtime: Any) -> str:
    from ledger.signing import public_key_pem

    return public_key_pem(runtime.service.signer.public_key)
