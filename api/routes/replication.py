"""Replication: wrapped material for replicas, replication status, the replica guard.

On the primary, ``GET /v1/replication/material/{key_id}/{version}`` hands a
replica a version's material still wrapped under the KEK (the replica holds the
same KEK, provisioned by the operator, and checks the fingerprint before keeping
it). On a replica, ``install_replica`` makes the app read-only: commands get 421
``REPLICA_READ_ONLY`` naming the primary, every response carries the
``Ledger-Position`` it reflects, and ``Min-Position`` is honoured.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse

from api.deps import RuntimeDep, require
from api.errors import ApiError, error_body
from domain.access import Permission
from ledger.store import Actor

router = APIRouter(tags=["replication"])

_READS = frozenset({"GET", "HEAD", "OPTIONS"})
MIN_POSITION_HEADER = "Min-Position"


@router.get(
    "/v1/replication/material/{key_id}/{version}",
    operation_id="get_replicated_material",
)
def get_material(
    key_id: str,
    version: int,
    runtime: RuntimeDep,
    actor: Annotated[Actor, require(Permission.REPLICATION)],
) -> dict[str, Any]:
    """A version's material, still wrapped under the KEK; 404 once it is erased."""
    try:
        stream = str(uuid.UUID(key_id))
    except ValueError:
        raise ApiError(422, "INVALID_KEY_ID", "A key id is a UUID.") from None
    rows = runtime.service.ledger.query(
        "SELECT wrapped FROM key_material WHERE key_id = %s AND version = %s",
        (stream, version),
    )
    if not rows:
        raise ApiError(
            404,
            "MATERIAL_NOT_FOUND",
            "No material is kept for that version (never, destroyed or trimmed).",
        )
    return {"key_id": stream, "version": version, "wrapped": rows[0]["wrapped"]}


@router.get("/v1/replication/status", operation_id="get_replication_status")
def get_status(
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    actor: Annotated[
        Actor, require(Permission.REPLICATION, Permission.LEDGER_READ, Permission.ADMIN)
    ],
) -> dict[str, Any]:
    """Where this ledger stands: a primary's head, or a replica's lag and state."""
    follower = getattr(request.app.state, "replica", None)
    if follower is None:
        head = runtime.service.ledger.head()
        response.headers["Ledger-Position"] = str(head.position)
        return {
            "role": "primary",
            "state": "primary",
            "applied": {"position": head.position, "hash": head.hash},
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
        if request.method not in _READS and follower.status.state != "promoted":
            return JSONResponse(
                error_body(
                    "REPLICA_READ_ONLY",
                    f"This is a read-only replica of {follower.source.name}; "
                    "send commands to the primary.",
                    {"primary": follower.source.name},
                ),
                status_code=421,
            )
        wanted = request.headers.get(MIN_POSITION_HEADER)
        if wanted is not None:
            refusal = await _wait_for(follower, wanted, min_position_wait)
            if refusal is not None:
                return refusal
        position = follower.status.position
        response = await call_next(request)
        response.headers.setdefault("Ledger-Position", str(position))
        return response


async def _wait_for(follower: Any, wanted: str, timeout: float) -> Response | None:
    """None once the replica holds ``wanted``; else the 4xx to answer with."""
    if not wanted.isdigit() or len(wanted) > 18:
        return JSONResponse(
            error_body(
                "INVALID_MIN_POSITION",
                "Min-Position is a non-negative integer position.",
            ),
            status_code=422,
        )
    position = int(wanted)
    if follower.status.position < position:
        await anyio.to_thread.run_sync(
            follower.ledger.wait_for_position, position, timeout
        )
    current = follower.ledger.head().position
    if current >= position:
        return None
    return JSONResponse(
        error_body(
            "POSITION_NOT_REACHED",
            f"This replica is at position {current}, not yet at {position}.",
            {"current": current, "required": position},
        ),
        status_code=412,
        headers={"Ledger-Position": str(current)},
    )
