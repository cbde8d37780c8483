"""Strict JSON request bodies: content type, size, UTF-8, duplicate and unknown fields.

FastAPI's own body parsing is lenient in ways a ledger cannot be (it accepts
duplicate fields and reports bad JSON as 422), so command bodies are read here.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from api.errors import ApiError, field_problems

Model = TypeVar("Model", bound=BaseModel)


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing one over ``limit`` bytes (413) before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(
            400, "CLIENT_DISCONNECTED", "The client left before sending the whole body."
        ) from None
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "PAYLOAD_TOO_LARGE",
        f"The body is over the {limit}-byte limit.",
        limit=limit,
    )


def parse_json(raw: bytes, content_type: str | None) -> dict[str, Any]:
    """Decode a JSON object body strictly; an empty body is an empty object."""
    if not raw.strip():
        return {}
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise ApiError(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            "Send the body as application/json.",
            content_type=media_type or None,
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ApiError(
            400, "INVALID_UTF8", "The body is not valid UTF-8.", offset=error.start
        ) from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateFieldError as error:
        raise ApiError(
            400,
            "DUPLICATE_FIELD",
            f"Field {error.name!r} appears twice.",
            field=error.name,
        ) from None
    except json.JSONDecodeError as error:
        raise ApiError(
            400,
            "INVALID_JSON",
            f"The body is not valid JSON: {error.msg}.",
            line=error.lineno,
            column=error.colno,
        ) from None
    except (RecursionError, ValueError):
        # Nesting too deep to parse, or an integer literal over Python's limit.
        raise ApiError(
            400, "INVALID_JSON", "The body nests too deeply or has a number too long."
        ) from None
    if not isinstance(value, dict):
        raise ApiError(400, "INVALID_JSON", "The body must be a JSON object.")
    return value


def validate(model: type[Model], data: dict[str, Any]) -> Model:
    """Validate ``data`` against ``model``; unknown fields and bad values are 422."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = field_problems(error.errors())
        unknown = [p["field"] for p in problems if p["problem"] == "unknown field"]
        if unknown:
            raise ApiError(
                422,
                "UNKNOWN_FIELD",
                f"Unknown field(s): {', '.join(unknown)}.",
                fields=problems,
            ) from None
        raise ApiError(
            422, "INVALID_FIELD", "The request has invalid fields.", fields=problems
        ) from None


class _DuplicateFieldError(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise _DuplicateFieldError(name)
        result[name] = value
    return result
