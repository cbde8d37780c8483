"""The one place where errors become HTTP responses, all in the same envelope.

Body: ``{"error": {"code": "UPPER_SNAKE_CASE", "message": "...", "details": {}}}``.
Messages and details never carry tokens, material or request bodies.
"""

from __future__ import annotations

import logging
from typing import Any

from eventsourcing.persistence import PersistenceError
from eventsourcing.utils import TopicError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import audit
from domain.errors import (
    AuthenticationError,
    BackupNotFoundError,
    InvalidArgumentError,
    KeyledgerError,
    KeyLifecycleError,
    KeyNotFoundError,
    LedgerBrokenError,
    LedgerUnavailableError,
    MaterialUnreadableError,
    PrimaryFencedError,
    PrincipalNotFoundError,
    UnknownEventTypeError,
    VersionNotFoundError,
)
from ledger.service import Replay

logger = logging.getLogger(__name__)

# Paths of the Vault transit API, whose errors also carry Vault's envelope.
VAULT_PREFIX = "/v1/transit/"


class ApiError(KeyledgerError):
    """An error of the HTTP layer itself, with its status code."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message, code=code, **details)
        self.status = status


_STATUS: list[tuple[type[KeyledgerError], int]] = [
    (KeyNotFoundError, 404),
    (BackupNotFoundError, 404),
    (VersionNotFoundError, 404),
    (PrincipalNotFoundError, 404),
    (AuthenticationError, 401),
    (KeyLifecycleError, 409),
    (LedgerBrokenError, 409),
    (InvalidArgumentError, 422),
    (LedgerUnavailableError, 503),
    (MaterialUnreadableError, 500),
    (UnknownEventTypeError, 500),
]


def error_body(
    code: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def status_for(error: KeyledgerError) -> int:
    if isinstance(error, ApiError):
        return error.status
    for kind, status in _STATUS:
        if isinstance(error, kind):
            return status
    return 400


def install(app: FastAPI) -> None:
    """Register the exception handlers on ``app``."""

    @app.exception_handler(KeyledgerError)
    async def keyledger_error(request: Request, error: KeyledgerError) -> JSONResponse:
        status = status_for(error)
        if isinstance(error, PrimaryFencedError):
            # A newer epoch arrived while running: from now on record nothing.
            await run_in_threadpool(request.app.state.runtime.notice_fence)
        await run_in_threadpool(
            audit.record_refusal, request, status, error.code, error.details
        )
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(
            error_body(error.code, error.message, error.details),
            status_code=status,
            headers=headers,
        )

    @app.exception_handler(Replay)
    async def replay(request: Request, replayed: Replay) -> JSONResponse:
        response = replayed.response
        headers = {"Idempotent-Replayed": "true"}
        position = _position_of(response.body)
        if position is not None:
            headers["Ledger-Position"] = str(position)
        return JSONResponse(response.body, status_code=response.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(
        request: Request, error: RequestValidationError
    ) -> JSONResponse:
        return JSONResponse(
            error_body(
                "INVALID_FIELD",
                "The request has invalid fields.",
                {"fields": field_problems(error.errors())},
            ),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(
        request: Request, error: StarletteHTTPException
    ) -> JSONResponse:
        codes = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
        body = error_body(codes.get(error.status_code, "HTTP_ERROR"), str(error.detail))
        if request.url.path.startswith(VAULT_PREFIX):
            # Under the Vault transit API, Vault's envelope beside ours; a 404
            # has an empty list, as Vault's answer for a missing key does.
            messages = [] if error.status_code == 404 else [str(error.detail)]
            body = {"errors": messages, **body}
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(PersistenceError)
    async def storage_error(request: Request, error: PersistenceError) -> JSONResponse:
        # A read that could not reach the ledger: unavailable, never a 500.
        logger.warning("ledger_unavailable", extra={"error_type": type(error).__name__})
        return JSONResponse(
            error_body(
                "LEDGER_UNAVAILABLE", "The ledger could not be read; try again later."
            ),
            status_code=503,
        )

    @app.exception_handler(TopicError)
    async def unknown_type(request: Request, error: TopicError) -> JSONResponse:
        # A stream holds an event of a newer release: refuse rather than guess.
        logger.error("unknown_event_type", extra={"error": str(error)})
        return JSONResponse(
            error_body(
                UnknownEventTypeError.code,
                "The ledger holds an event type this release cannot read; "
                "nothing was recorded. Upgrade keyledger.",
            ),
            status_code=500,
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected_error", extra={"error_type": type(error).__name__})
        return JSONResponse(
            error_body("INTERNAL_ERROR", "The server failed; nothing was recorded."),
            status_code=500,
        )


def field_problems(errors: Any) -> list[dict[str, str]]:
    """Pydantic errors as ``{"field", "problem"}`` pairs, without the input values."""
    problems = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ()) if part != "body"]
        problems.append(
            {
                "field": ".".join(location),
                "problem": "unknown field"
                if error.get("type") == "extra_forbidden"
                else str(error.get("msg", "invalid")),
            }
        )
    return problems


def _position_of(body: dict[str, Any]) -> int | None:
    receipts = body.get("receipts") or []
    return receipts[-1]["position"] if receipts else None
