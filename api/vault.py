"""Vault's HTTP conventions for the transit API: token header, envelope, errors.

Routes under ``/v1/transit/`` use ``VaultRoute``, so that a client written for
HashiCorp Vault (``hvac``, the ``vault`` CLI) finds what it expects:

- ``X-Vault-Token`` carries the token (``Authorization: Bearer`` works too); it is
  checked by the same ``require`` dependency as every other route.
- A success is Vault's response envelope with the result in ``data``.
- An error is Vault's ``{"errors": ["message"]}`` with Vault's status codes
  (400 for any refused input or rule, 403 for a missing, unknown or
  insufficient token, 503 when the ledger cannot record). Our own error
  envelope rides along under ``error``, so the machine-readable code is not lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from eventsourcing.persistence import PersistenceError
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from api.errors import ApiError, error_body, field_problems, status_for
from domain.errors import KeyledgerError

logger = logging.getLogger(__name__)

VAULT_TOKEN_HEADER = "x-vault-token"


class VaultNotFoundError(ApiError):
    """Vault's 404: an empty ``errors`` list (a key read or a list with nothing)."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(404, "KEY_NOT_FOUND", message, **details)


def envelope(
    data: dict[str, Any] | None, request_id: str, warnings: list[str] | None = None
) -> dict[str, Any]:
    """Vault's response envelope around ``data``; transit never leases or wraps."""
    return {
        "request_id": request_id,
        "lease_id": "",
        "renewable": False,
        "lease_duration": 0,
        "data": data,
        "wrap_info": None,
        "warnings": warnings or None,
        "auth": None,
        "mount_type": "transit",
    }


def vault_status(error: KeyledgerError) -> int:
    """The status Vault would answer for our refusal.

    Vault answers 400 for every refused input and rule (our 404, 409 and 422
    alike), and 403 for a token problem (our 401).
    """
    status = status_for(error)
    if status == 401:
        return 403
    if status >= 500:
        return status
    if isinstance(error, ApiError) and status in (403, 404, 405, 413):
        return status
    return 400


def vault_error(status: int, error: KeyledgerError) -> JSONResponse:
    """Vault's error body, with our error envelope beside it."""
    messages = [] if isinstance(error, VaultNotFoundError) else [error.message]
    body = {"errors": messages, **error_body(error.code, error.message, error.details)}
    return JSONResponse(body, status_code=status)


def _with_token_header(request: Request) -> Request:
    """The request with ``X-Vault-Token`` presented as a bearer token.

    Only when no ``Authorization`` header was sent: then ``require`` checks the
    Vault token exactly as it checks any bearer token.
    """
    headers = request.headers
    token = headers.get(VAULT_TOKEN_HEADER)
    if token is None or "authorization" in headers:
        return request
    scope = dict(request.scope)
    scope["headers"] = [
        *request.scope["headers"],
        (b"authorization", b"Bearer " + token.encode("latin-1")),
    ]
    return Request(scope, request.receive)


class VaultRoute(APIRoute):
    """A route that authenticates and fails the way Vault does."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def vault_handler(request: Request) -> Response:
            try:
                return await handler(_with_token_header(request))
            except KeyledgerError as error:
                return vault_error(vault_status(error), error)
            except RequestValidationError as error:
                problem = ApiError(
                    400,
                    "INVALID_FIELD",
                    "The request has invalid fields.",
                    fields=field_problems(error.errors()),
                )
                return vault_error(400, problem)
            except PersistenceError as error:
                logger.warning(
                    "ledger_unavailable", extra={"error_type": type(error).__name__}
                )
                unavailable = ApiError(
                    503,
                    "LEDGER_UNAVAILABLE",
                    "The ledger could not be read; try again later.",
                )
                return vault_error(503, unavailable)

        return vault_handler
