"""Replication: wrapped material for replicas, replication status, the replica guard.

On the primary, ``GET /v1/replication/material/{key_id}/{version}`` hands a
replica a version's material still wrapped under the KEK (the replica holds the
same KEK, provisioned by the operator, and checks the fingerprint before keeping
it). On a replica, ``install_replica`` makes the app read-only: commands get 421
``REPLICA_READ_ONLY`` naming the primary, every read carries the
``Ledger-Position`` it reflects (exactly, or as a lower bound when a batch was
applied while it was read: ``Ledger-Position-Exact``), and ``Min-Position`` is
honoured.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import anyio
from eventsourcing.persistence import PersistenceError
from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from api.body import validate
from api.deps import BodyDep, RequestIdDep, RuntimeDep, require
from api.errors import ApiError, error_body
from api.waiting import head_watch
from domain.access import Permission
from domain.errors import LedgerUnavailableError
from ledger.replica import (
    PromotionRefusedError,
    announce_signer,
    erasure_position,
    promotion_entry,
)
from ledger.store import Actor

router = APIRouter(tags=["replication"])

_READS = frozenset({"GET", "HEAD", "OPTIONS"})
MIN_POSITION_HEADER = "Min-Position"


MAX_MATERIAL_VERSIONS = 200


@router.get("/v1/replication/material", operation_id="get_replicated_material")
def get_material(
    runtime: RuntimeDep,
    actor: Annotated[Actor, require(Permission.REPLICATION)],
    versions: Annotated[
        str,
        Query(
            max_length=MAX_MATERIAL_VERSIONS * 48,
            description="Comma-separated key_id:version pairs, up to 200.",
        ),
    ],
) -> dict[str, Any]:
    """Material of the versions asked for, still wrapped under the KEK.

    Versions whose material is not kept are left out of ``material``; those the
    ledger erased (destroyed, trimmed) are listed in ``erased`` with the position
    of the erasing entry, which the replica checks before accepting the absence.
    """
    wanted = _parse_versions(versions)
    found, erased = [], []
    for stream, version in wanted:
        rows = runtime.service.ledger.query(
            "SELECT wrapped FROM key_material WHERE key_id = %s AND version = %s",
            (stream, version),
        )
        if rows:
            found.append(
                {"key_id": stream, "version": version, "wrapped": rows[0]["wrapped"]}
            )
            continue
        position = erasure_position(runtime.service, stream, version)
        if position is not None:
            erased.append({"key_id": stream, "version": version, "position": position})
    return {"material": found, "erased": erased}


def _parse_versions(text: str) -> list[tuple[str, int]]:
    wanted = []
    for item in text.split(","):
        key_id, _, version = item.partition(":")
        try:
            stream = str(uuid.UUID(key_id))
        except ValueError:
            raise ApiError(422, "INVALID_KEY_ID", "A key id is a UUID.") from None
        if not version.isdigit() or not 1 <= int(version) <= 2**31 - 1:
            raise ApiError(422, "INVALID_VERSION", "A version is a positive integer.")
        wanted.append((stream, int(version)))
    if len(wanted) > MAX_MATERIAL_VERSIONS:
        raise ApiError(
            422, "INVALID_FIELD", f"Ask for at most {MAX_MATERIAL_VERSIONS} versions."
        )
    return wanted


class SignerAnnouncementBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    public_key_pem: Annotated[StrictStr, Field(max_length=4096)] = Field(
        description="The replica's Ed25519 public signing key (PEM)."
    )


class PromotionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    force: StrictBool = Field(
        False,
        description="Promote even when behind the last primary head seen (the "
        "possibly lost positions are recorded) or halted.",
    )


@router.post("/v1/replication/signers", operation_id="announce_signer")
def post_signer(
    response: Response,
    runtime: RuntimeDep,
    actor: Annotated[Actor, require(Permission.REPLICATION)],
    request_id: RequestIdDep,
    body: BodyDep,
) -> dict[str, Any]:
    """Announce a replica's signing key on the ledger, so its promotion verifies."""
    command = validate(SignerAnnouncementBody, body)
    try:
        kid, position = announce_signer(
            runtime.service, actor, request_id, command.public_key_pem
        )
    except ValueError:
        raise ApiError(
            422, "INVALID_PUBLIC_KEY", "public_key_pem is not an Ed25519 public key."
        ) from None
    except PersistenceError as error:
        raise LedgerUnavailableError(
            "The ledger could not record; the action did not happen."
        ) from error
    response.headers["Ledger-Position"] = str(position)
    return {"kid": kid, "position": position}


@router.post("/v1/replication/promote", operation_id="promote_replica")
def post_promote(
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    actor: Annotated[Actor, require(Permission.ADMIN)],
    request_id: RequestIdDep,
    body: BodyDep,
) -> dict[str, Any]:
    """Turn this replica into the primary of a new epoch (see README, Replicas)."""
    command = validate(PromotionBody, body)
    follower = getattr(request.app.state, "replica", None)
    if follower is None:
        raise ApiError(409, "NOT_A_REPLICA", "This service is not a replica.")
    try:
        epoch = follower.promote(actor, request_id, force=command.force)
    except PromotionRefusedError as refusal:
        raise ApiError(409, refusal.code, refusal.message, **refusal.details) from None
    entry = promotion_entry(runtime.service, epoch)
    runtime.record_start()
    runtime.start_scheduler()
    response.headers["Ledger-Position"] = str(entry.position)
    return {"epoch": epoch_json(epoch), "position": entry.position, "hash": entry.hash}


def epoch_json(epoch: Any) -> dict[str, Any]:
    return {
        "epoch": epoch.epoch,
        "kid": epoch.kid,
        "applied_position": epoch.applied_position,
        "primary_head_seen": epoch.primary_head_seen,
        "forced": epoch.forced,
        "possibly_lost": None
        if epoch.possibly_lost_from is None
        else {"from": epoch.possibly_lost_from, "to": epoch.possibly_lost_to},
    }


@router.get("/v1/replication/status", operation_id="get_replication_status")
def get_status(
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    actor: Annotated[
        Actor, require(Permission.REPLICATION, Permission.LEDGER_READ, Permission.ADMIN)
    ],
) -> dict[str, Any]:
    """Where this ledger stands: a primary's head (fenced?), or a replica's lag."""
    follower = getattr(request.app.state, "replica", None)
    if follower is None:
        head = runtime.service.ledger.head()
        response.headers["Ledger-Position"] = str(head.position)
        fenced = runtime.fenced
        return {
            "role": "primary",
            "state": "primary" if fenced is None else "fenced",
            "applied": {"position": head.position, "hash": head.hash},
            "fenced_by": None
            if fenced is None
            else {
                "epoch": fenced.epoch,
                "kid": fenced.kid,
                "position": fenced.position,
            },
        }
    status: dict[str, Any] = follower.status.as_json()
    response.headers["Ledger-Position"] = str(status["applied"]["position"])
    return status


def install_replica(app: FastAPI, follower: Any, *, min_position_wait: float) -> None:
    """Make ``app`` a read-only replica served from ``follower``'s ledger."""
    app.state.replica = follower

    @app.middleware("http")
    async def replica_guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if (
            request.method not in _READS
            and follower.status.state != "promoted"
            and request.url.path != "/v1/replication/promote"
        ):
            return JSONResponse(
                error_body(
                    "REPLICA_READ_ONLY",
                    f"This is a read-only replica of {follower.source.name}; "
                    "send commands to the primary.",
                    {"primary": follower.source.name},
                ),
                status_code=421,
            )
        # The position a read reflects: the store's head before the handler
        # reads and after it. Equal, nothing was applied meanwhile and the body
        # shows exactly that position. Apart, a batch committed while the handler
        # read (handlers read with several queries, not in one snapshot), and the
        # earlier one is given: a lower bound, every entry up to it is in the
        # body. (Holding the follower out while a read runs would make it exact,
        # but a long read, or a long-poll of the feed, would stall following.)
        wanted = request.headers.get(MIN_POSITION_HEADER)
        reading = request.method in _READS
        try:
            if wanted is not None:
                reached = await _wait_for(follower, wanted, min_position_wait, request)
                if isinstance(reached, Response):
                    return reached
                before = reached
            elif reading:
                before = await _held(follower)
            response = await call_next(request)
            if reading:
                after = await _held(follower)
                response.headers["Ledger-Position"] = str(before)
                response.headers["Ledger-Position-Exact"] = (
                    "true" if after == before else "false"
                )
        except PersistenceError:
            return JSONResponse(
                error_body(
                    "LEDGER_UNAVAILABLE",
                    "The ledger could not be read; try again later.",
                ),
                status_code=503,
            )
        return response


async def _held(follower: Any) -> int:
    """The position the replica's store holds (committed, whatever the status says)."""
    head = await anyio.to_thread.run_sync(follower.ledger.head)
    return int(head.position)


async def _wait_for(
    follower: Any, wanted: str, timeout: float, request: Request
) -> Response | int:
    """The position held once it reaches ``wanted``; else the 4xx to answer with.

    The wait happens in the event loop (see ``api.waiting``), so waiting reads
    hold no worker thread. A request without credentials does not wait (it is
    refused after), and beyond the caps on waiters a read answers at once.
    """
    if not wanted.isdigit() or len(wanted) > 18:
        return JSONResponse(
            error_body(
                "INVALID_MIN_POSITION",
                "Min-Position is a non-negative integer position.",
            ),
            status_code=422,
        )
    position = int(wanted)
    credentials = request.headers.get("authorization") or request.headers.get(
        "x-vault-token"
    )
    if follower.status.position < position and credentials:
        # Not authenticated yet (that happens in the route, after): waiters are
        # counted per credential, kept only as a digest, in memory.
        principal = hashlib.sha256(credentials.encode()).hexdigest()
        await head_watch(follower.ledger).wait_for(
            position, timeout, principal=principal
        )
    current = await _held(follower)
    if current >= position:
        return current
    return JSONResponse(
        error_body(
            "POSITION_NOT_REACHED",
            f"This replica is at position {current}, not yet at {position}.",
            {"current": current, "required": position},
        ),
        status_code=412,
        headers={"Ledger-Position": str(current)},
    )
