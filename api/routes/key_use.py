"""Key use routes: encrypt, decrypt, rewrap and data keys, single or in batches.

A body is one item, or ``{"batch": [...]}`` with one result per item in the same
order. A batch item that is refused carries its own error envelope and HTTP
status; the others are served. Every request against an existing key is
recorded on the ledger before it is answered.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Response
from pydantic import BaseModel

from api.body import validate
from api.deps import ActorDep, BodyDep, NoReplayDep, RequestIdDep, RuntimeDep, require
from api.errors import ApiError, error_body, status_for
from api.schemas import (
    MAX_BATCH_ITEMS,
    DataKeyItem,
    DecryptItem,
    EncryptItem,
    RewrapItem,
)
from domain.access import Permission
from domain.errors import KeyledgerError
from domain.usage import Operation
from ledger.key_use import ItemOutcome, KeyUser, UseItem
from ledger.service import CommandContext
from ledger.store import Actor

router = APIRouter(prefix="/v1/keys", tags=["key use"])


def _to_item(command: BaseModel) -> UseItem:
    if isinstance(command, EncryptItem):
        return UseItem(
            plaintext=command.plaintext,
            context=command.context,
            version=command.version,
        )
    if isinstance(command, RewrapItem):
        return UseItem(
            ciphertext=command.ciphertext,
            context=command.context,
            version=command.version,
            compromised_ok=command.compromised_ok,
        )
    if isinstance(command, DecryptItem):
        return UseItem(
            ciphertext=command.ciphertext,
            context=command.context,
            compromised_ok=command.compromised_ok,
        )
    assert isinstance(command, DataKeyItem)
    return UseItem(
        context=command.context,
        version=command.version,
        return_plaintext=command.plaintext,
    )


def _batch_items(
    body: dict[str, Any], model: type[BaseModel]
) -> list[UseItem | KeyledgerError]:
    """Each batch item validated on its own: a bad item is that item's refusal."""
    if set(body) != {"batch"}:
        raise ApiError(
            422,
            "INVALID_FIELD",
            "A batch body holds only 'batch'; put every other field in its items.",
            fields=[{"field": f, "problem": "not allowed beside batch"} for f in body],
        )
    batch = body["batch"]
    if not isinstance(batch, list) or not batch:
        raise ApiError(
            422, "INVALID_FIELD", "batch is a non-empty list of items.", field="batch"
        )
    if len(batch) > MAX_BATCH_ITEMS:
        raise ApiError(
            422,
            "BATCH_TOO_LARGE",
            f"A batch holds at most {MAX_BATCH_ITEMS} items.",
            limit=MAX_BATCH_ITEMS,
            items=len(batch),
        )
    items: list[UseItem | KeyledgerError] = []
    for entry in batch:
        if not isinstance(entry, dict):
            items.append(
                ApiError(422, "INVALID_FIELD", "A batch item is a JSON object.")
            )
            continue
        try:
            items.append(_to_item(validate(model, entry)))
        except ApiError as error:
            items.append(error)
    return items


def _outcome_json(outcome: ItemOutcome) -> dict[str, Any]:
    if outcome.error is None:
        assert outcome.result is not None
        return outcome.result
    error = outcome.error
    return {
        **error_body(error.code, error.message, error.details),
        "status": status_for(error),
    }


def _use(
    operation: Operation,
    model: type[BaseModel],
    *,
    name: str,
    response: Response,
    runtime: RuntimeDep,
    actor: ActorDep,
    request_id: str,
    body: dict[str, Any],
) -> dict[str, Any]:
    single = "batch" not in body
    items = [_to_item(validate(model, body))] if single else _batch_items(body, model)

    result = KeyUser(runtime.service).use(
        CommandContext(actor, request_id), name, operation, items, single=single
    )

    response.headers["Ledger-Position"] = str(result.position)
    receipts = [receipt.as_json() for receipt in result.receipts]
    if single:
        [outcome] = result.outcomes
        if outcome.error is not None:
            raise outcome.error
        return {**_outcome_json(outcome), "receipts": receipts}
    return {
        "results": [_outcome_json(outcome) for outcome in result.outcomes],
        "receipts": receipts,
    }


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    batch = {
        "type": "object",
        "properties": {
            "batch": {
                "type": "array",
                "items": model.model_json_schema(),
                "maxItems": MAX_BATCH_ITEMS,
            }
        },
        "required": ["batch"],
        "additionalProperties": False,
    }
    schema = {"oneOf": [model.model_json_schema(), batch]}
    return {
        "requestBody": {
            "content": {"application/json": {"schema": schema}},
            "required": True,
        }
    }


def _route(operation: Operation, model: type[BaseModel], doc: str) -> None:
    def handler(
        name: str,
        response: Response,
        runtime: RuntimeDep,
        actor: Annotated[Actor, require(Permission.KEY_USE)],
        request_id: RequestIdDep,
        no_replay: NoReplayDep,
        body: BodyDep,
    ) -> dict[str, Any]:
        # A replay would hand out plaintext or a data key again: no Idempotency-Key.
        return _use(
            operation,
            model,
            name=name,
            response=response,
            runtime=runtime,
            actor=actor,
            request_id=request_id,
            body=body,
        )

    handler.__doc__ = doc
    router.add_api_route(
        f"/{{name}}/{operation}",
        handler,
        methods=["POST"],
        operation_id=f"{operation}_with_key",
        openapi_extra=_schema(model),
        description=doc,
    )


_route("encrypt", EncryptItem, "Encrypt with the key; the use is recorded first.")
_route("decrypt", DecryptItem, "Decrypt with the key; the use is recorded first.")
_route(
    "rewrap",
    RewrapItem,
    "Decrypt and encrypt again under the primary (or a named version).",
)
_route(
    "datakey",
    DataKeyItem,
    "A fresh 256-bit data key wrapped under the key, and its plaintext if asked.",
)
