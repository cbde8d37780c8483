"""The HashiCorp Vault transit API under ``/v1/transit/``, on the same ledger.

A service written against Vault's transit engine (with ``hvac``, say) runs
unchanged: the paths, bodies, response envelope, ``vault:v<N>:`` ciphertexts and
error shape are Vault's (see ``api.vault``). Underneath, every key command is the
same ``KeyService`` command as on the native API and every use goes through the
same ``KeyUser``, recorded on the ledger before it is answered. Where Vault and
our ledger rules differ, our rule wins; README's "Vault transit compatibility"
lists each difference.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from api.body import validate
from api.deps import (
    BodyDep,
    NoReplayDep,
    RequestIdDep,
    RuntimeDep,
    key_filter,
    require,
    require_on_key,
)
from api.errors import ApiError, status_for
from api.restore import restore_or_request
from api.runtime import Runtime
from api.schemas import MAX_BATCH_ITEMS
from api.vault import VaultNotFoundError, VaultRoute, envelope
from backup.service import decode_bundle_upload
from domain.access import Permission
from domain.clock import parse_time
from domain.dual_control import ApprovalRequest
from domain.errors import (
    InvalidArgumentError,
    KeyExistsError,
    KeyledgerError,
    KeyLifecycleError,
    KeyNotFoundError,
)
from domain.keys import MAX_VERSION
from domain.usage import Operation
from ledger import cipher
from ledger.key_use import ItemOutcome, KeyUser, UseItem, UseResult
from ledger.service import CommandContext, CommandResult
from ledger.store import Actor
from projections import key_view

router = APIRouter(prefix="/v1/transit", tags=["vault transit"], route_class=VaultRoute)

VAULT_KEY_TYPE = "aes256-gcm96"
DATA_KEY_BITS = (128, 256, 512)

Manage = Annotated[Actor, require(Permission.KEY_MANAGE)]
Read = Annotated[Actor, require(Permission.KEY_READ)]
Use = Annotated[Actor, require(Permission.KEY_USE)]

# Request bodies: Vault's field names; a field Vault knows but we do not support
# is accepted only with a value that asks for nothing (false, 0, absent).

KeyVersion = Annotated[StrictInt, Field(ge=0, le=MAX_VERSION)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyOptions(_Body):
    """Key options Vault has and keyledger does not offer (each must stay off)."""

    exportable: StrictBool | None = None
    allow_plaintext_backup: StrictBool | None = None
    auto_rotate_period: StrictStr | StrictInt | None = None


class TransitKeyCreate(KeyOptions):
    type: StrictStr | None = Field(None, description=f"Only {VAULT_KEY_TYPE}.")
    derived: StrictBool | None = None
    convergent_encryption: StrictBool | None = None


class TransitKeyConfig(KeyOptions):
    min_decryption_version: StrictInt | None = None
    min_encryption_version: StrictInt | None = Field(
        None, description="0 means only the primary encrypts."
    )
    deletion_allowed: StrictBool | None = Field(
        None, description="Only false: keys are never deleted (see README)."
    )


class TransitTrim(_Body):
    min_available_version: Annotated[StrictInt, Field(ge=1, le=MAX_VERSION)]


class EncryptItem(_Body):
    plaintext: StrictStr | None = None
    context: StrictStr | None = None
    key_version: KeyVersion | None = Field(None, description="0 means the primary.")
    nonce: StrictStr | None = None
    reference: StrictStr | None = None


class DecryptItem(_Body):
    ciphertext: StrictStr | None = None
    context: StrictStr | None = None
    nonce: StrictStr | None = None
    reference: StrictStr | None = None


class RewrapItem(DecryptItem):
    key_version: KeyVersion | None = Field(None, description="0 means the primary.")


class _Batch(_Body):
    batch_input: list[Any] | None = None
    partial_failure_response_code: StrictInt | None = None
    associated_data: StrictStr | None = None


class EncryptRequest(_Batch, EncryptItem):
    type: StrictStr | None = None
    convergent_encryption: StrictBool | None = None


class DecryptRequest(_Batch, DecryptItem):
    pass


class RewrapRequest(_Batch, RewrapItem):
    pass


class DataKeyRequest(_Body):
    context: StrictStr | None = None
    nonce: StrictStr | None = None
    bits: StrictInt | None = Field(None, description="128, 256 (default) or 512.")


_ITEM_MODELS: dict[str, type[_Body]] = {
    "encrypt": EncryptItem,
    "decrypt": DecryptItem,
    "rewrap": RewrapItem,
}
_REQUEST_MODELS: dict[str, type[_Batch]] = {
    "encrypt": EncryptRequest,
    "decrypt": DecryptRequest,
    "rewrap": RewrapRequest,
}


def _unsupported(field: str, message: str) -> InvalidArgumentError:
    return InvalidArgumentError(message, code="UNSUPPORTED_OPTION", field=field)


def _refuse_other_type(key_type: str | None) -> None:
    if key_type not in (None, VAULT_KEY_TYPE):
        raise _unsupported("type", f"Only {VAULT_KEY_TYPE} keys are offered.")


def _refuse_nonce(nonce: str | None) -> None:
    if nonce:
        raise _unsupported("nonce", "Convergent encryption is not offered: no nonce.")


def _refuse_key_options(options: KeyOptions) -> None:
    if options.exportable:
        raise _unsupported("exportable", "Keys cannot be made exportable.")
    if options.allow_plaintext_backup:
        raise _unsupported(
            "allow_plaintext_backup", "Plaintext backups of keys are not offered."
        )
    if options.auto_rotate_period not in (None, 0, "0", "0s"):
        raise _unsupported(
            "auto_rotate_period", "Automatic rotation is not offered; rotate the key."
        )


# Keys ------------------------------------------------------------------------


def _unix_seconds(text: str) -> int:
    return int(parse_time(text).timestamp())


def _key_data(runtime: Runtime, name: str) -> dict[str, Any]:
    """The key as Vault's read-key shows it, with keyledger's own facts beside."""
    view = runtime.service.get_key(name, versions_limit=1000)
    versions = list(view["versions"])
    while view["next_versions_cursor"] is not None:
        view = runtime.service.get_key(
            name, versions_after=view["next_versions_cursor"], versions_limit=1000
        )
        versions += view["versions"]
    return {
        "name": view["name"],
        "type": VAULT_KEY_TYPE,
        "keys": {str(v["version"]): _unix_seconds(v["created_at"]) for v in versions},
        "latest_version": max(v["version"] for v in versions),
        "min_available_version": min(v["version"] for v in versions),
        "min_decryption_version": view["min_decryption_version"],
        "min_encryption_version": view["min_encryption_version"] or 0,
        "deletion_allowed": False,
        "derived": False,
        "exportable": False,
        "allow_plaintext_backup": False,
        "supports_encryption": True,
        "supports_decryption": True,
        "supports_derivation": False,
        "supports_signing": False,
        "imported_key": False,
        "auto_rotate_period": 0,
        "keyledger": {
            "key_id": view["key_id"],
            "state": view["state"],
            "primary_version": view["primary_version"],
            "stream_version": view["stream_version"],
            "version_states": {str(v["version"]): v["state"] for v in versions},
        },
    }


def _read_key(runtime: Runtime, name: str, request_id: str) -> dict[str, Any]:
    try:
        return envelope(_key_data(runtime, name), request_id)
    except KeyNotFoundError:
        raise VaultNotFoundError(f"No key named {name!r}.", key=name) from None


def _after_command(
    runtime: Runtime,
    name: str,
    request_id: str,
    response: Response,
    result: CommandResult | None,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    if result is not None:
        response.headers["Ledger-Position"] = str(result.position)
    return envelope(_key_data(runtime, name), request_id, warnings)


@router.post("/keys/{name}", operation_id="transit_create_key")
def create_key(
    name: str,
    response: Response,
    runtime: RuntimeDep,
    actor: Manage,
    request_id: RequestIdDep,
    no_replay: NoReplayDep,
    body: BodyDep,
) -> dict[str, Any]:
    """Create an aes256-gcm96 key; an existing key is left as it is (a warning)."""
    command = validate(TransitKeyCreate, body)
    _refuse_other_type(command.type)
    if command.derived or command.convergent_encryption:
        raise _unsupported("derived", "Derived and convergent keys are not offered.")
    _refuse_key_options(command)
    try:
        result = runtime.service.create_key(
            CommandContext(actor, request_id), name=name
        )
    except KeyExistsError:
        return _after_command(
            runtime, name, request_id, response, None, [f"key {name} already existed"]
        )
    return _after_command(runtime, name, request_id, response, result)


@router.get("/keys/{name}", operation_id="transit_read_key")
def read_key(
    name: str, runtime: RuntimeDep, actor: Read, request_id: RequestIdDep
) -> dict[str, Any]:
    """The key's versions (with creation times) and configuration; 404 if none."""
    return _read_key(runtime, name, request_id)


def _list_keys(runtime: Runtime, actor: Actor, request_id: str) -> dict[str, Any]:
    """Every key's name, or for a principal with grants those it may read."""
    shown = key_filter(runtime, actor, Permission.KEY_READ)
    names: list[str] = []
    after: str | None = None
    while True:
        items, after = key_view.list_keys(
            runtime.service.ledger, after=after, limit=1000
        )
        names += [
            item["name"] for item in items if shown is None or shown(item["name"])
        ]
        if after is None:
            break
    if not names:
        raise VaultNotFoundError("There are no keys.")
    return envelope({"keys": names}, request_id)


@router.get("/keys", operation_id="transit_list_keys")
def list_keys_get(
    runtime: RuntimeDep,
    actor: Read,
    request_id: RequestIdDep,
    list_: Annotated[str | None, Query(alias="list")] = None,
) -> dict[str, Any]:
    """With ``?list=true``, the names of all keys (Vault's LIST); 404 if none."""
    if list_ != "true":
        raise ApiError(405, "METHOD_NOT_ALLOWED", "Use LIST or GET with ?list=true.")
    return _list_keys(runtime, actor, request_id)


def list_keys(
    runtime: RuntimeDep, actor: Read, request_id: RequestIdDep
) -> dict[str, Any]:
    """Vault's LIST method on the keys."""
    return _list_keys(runtime, actor, request_id)


# OpenAPI has no LIST method: GET ?list=true documents the same listing.
router.add_api_route("/keys", list_keys, methods=["LIST"], include_in_schema=False)


@router.delete("/keys/{name}", operation_id="transit_delete_key")
def delete_key(
    name: str,
    runtime: RuntimeDep,
    actor: Manage,
    request_id: RequestIdDep,
    no_replay: NoReplayDep,
) -> dict[str, Any]:
    """Always refused: a key's history is kept and its versions destroyed on a
    schedule, never deleted at once (see README)."""
    runtime.service.get_key(name, versions_limit=1)
    raise KeyLifecycleError(
        f"Key {name!r} cannot be deleted: keyledger never deletes a key. Disable it "
        "and schedule the destruction of its versions on the native API.",
        code="KEY_DELETION_NOT_SUPPORTED",
        key=name,
    )


@router.post("/keys/{name}/rotate", operation_id="transit_rotate_key")
def rotate_key(
    name: str,
    response: Response,
    runtime: RuntimeDep,
    actor: Manage,
    request_id: RequestIdDep,
    no_replay: NoReplayDep,
    body: BodyDep,
) -> dict[str, Any]:
    """Add a new version and make it primary."""
    validate(_Body, body)
    result = runtime.service.rotate(CommandContext(actor, request_id), name)
    return _after_command(runtime, name, request_id, response, result)


@router.post("/keys/{name}/config", operation_id="transit_configure_key")
def configure_key(
    name: str,
    response: Response,
    runtime: RuntimeDep,
    actor: Manage,
    request_id: RequestIdDep,
    no_replay: NoReplayDep,
    body: BodyDep,
) -> dict[str, Any]:
    """Change min_decryption_version and min_encryption_version (0: primary only).

    Nothing is recorded when the values are already the key's; as in Vault, a
    min_decryption_version of 0 means 1, with a warning.
    """
    command = validate(TransitKeyConfig, body)
    if command.deletion_allowed:
        raise _unsupported(
            "deletion_allowed",
            "Keys are never deleted, so deletion_allowed cannot be set (see README).",
        )
    _refuse_key_options(command)
    current = runtime.service.get_key(name, versions_limit=1)
    warnings = []
    decryption = command.min_decryption_version
    if decryption == 0:
        decryption = 1
        warnings.append("transit key numbering starts at 1; forcing minimum to 1")
    if decryption == current["min_decryption_version"]:
        decryption = None
    encryption = command.min_encryption_version
    set_encryption = (
        encryption is not None
        and (encryption or None) != (current["min_encryption_version"])
    )
    result = None
    if decryption is not None or set_encryption:
        result = runtime.service.change_minimum_versions(
            CommandContext(actor, request_id),
            name,
            min_decryption_version=decryption,
            min_encryption_version=encryption or None,
            set_min_encryption=set_encryption,
        )
    return _after_command(runtime, name, request_id, response, result, warnings)


@router.post("/keys/{name}/trim", operation_id="transit_trim_key", status_code=204)
def trim_key(
    name: str,
    runtime: RuntimeDep,
    actor: Manage,
    request_id: RequestIdDep,
    no_replay: NoReplayDep,
    body: BodyDep,
) -> Response:
    """Trim every version below min_available_version and erase its material."""
    command = validate(TransitTrim, body)
    result = runtime.service.trim_versions(
        CommandContext(actor, request_id),
        name,
        min_available_version=command.min_available_version,
    )
    return Response(status_code=204, headers={"Ledger-Position": str(result.position)})


# Using keys ------------------------------------------------------------------


def _use_item(operation: Operation, item: Any) -> UseItem:
    """A Vault item as a ``UseItem``; raises the item's refusal."""
    _refuse_nonce(item.nonce)
    version = getattr(item, "key_version", None) or None
    if operation == "encrypt":
        if item.plaintext is None:
            raise InvalidArgumentError(
                "missing plaintext to encrypt",
                code="INVALID_PLAINTEXT",
                field="plaintext",
            )
        return UseItem(plaintext=item.plaintext, context=item.context, version=version)
    if item.ciphertext is None:
        raise InvalidArgumentError(
            "missing ciphertext", code="INVALID_CIPHERTEXT", field="ciphertext"
        )
    return UseItem(ciphertext=item.ciphertext, context=item.context, version=version)


def _batch_items(
    operation: Operation, batch: list[Any]
) -> tuple[list[UseItem | KeyledgerError], list[str]]:
    """Each item validated on its own, and each item's ``reference`` to echo."""
    if not batch:
        raise InvalidArgumentError(
            "missing batch input to process", code="INVALID_FIELD", field="batch_input"
        )
    if len(batch) > MAX_BATCH_ITEMS:
        raise InvalidArgumentError(
            f"A batch holds at most {MAX_BATCH_ITEMS} items.",
            code="BATCH_TOO_LARGE",
            limit=MAX_BATCH_ITEMS,
            items=len(batch),
        )
    items: list[UseItem | KeyledgerError] = []
    references: list[str] = []
    for entry in batch:
        reference = entry.get("reference") if isinstance(entry, dict) else None
        references.append(reference if isinstance(reference, str) else "")
        try:
            if not isinstance(entry, dict):
                raise InvalidArgumentError(
                    "A batch item is a JSON object.", code="INVALID_FIELD"
                )
            items.append(_use_item(operation, validate(_ITEM_MODELS[operation], entry)))
        except KeyledgerError as error:
            items.append(error)
    return items, references


def _vault_result(operation: Operation, result: dict[str, Any]) -> dict[str, Any]:
    if operation == "decrypt":
        return {"plaintext": result["plaintext"]}
    shown = {"ciphertext": result["ciphertext"], "key_version": result["version"]}
    if "plaintext" in result:
        shown["plaintext"] = result["plaintext"]
    return shown


def _batch_result(
    operation: Operation, outcome: ItemOutcome, reference: str
) -> dict[str, Any]:
    if outcome.error is not None:
        return {
            "error": outcome.error.message,
            "error_code": outcome.error.code,
            "reference": reference,
        }
    assert outcome.result is not None
    return {**_vault_result(operation, outcome.result), "reference": reference}


def _batch_status(
    outcomes: Sequence[ItemOutcome], partial_code: int | None, warnings: list[str]
) -> int:
    """Vault's status of a batch: 200, else 400 (or 500), or the partial code."""
    failed = [o.error for o in outcomes if o.error is not None]
    if not failed:
        return 200
    user_error = any(status_for(error) < 500 for error in failed)
    status = 400 if user_error else 500
    if partial_code is not None and len(failed) < len(outcomes):
        if 1 <= partial_code <= 599:
            return partial_code
        warnings.append("partial_failure_response_code is not a valid status code")
    return status


def _run_use(
    runtime: Runtime,
    actor: Actor,
    request_id: str,
    name: str,
    operation: Operation,
    items: list[UseItem | KeyledgerError],
    *,
    single: bool,
) -> UseResult:
    user = KeyUser(runtime.service, prefix=cipher.VAULT_PREFIX)
    return user.use(
        CommandContext(actor, request_id), name, operation, items, single=single
    )


def _use(
    operation: Operation,
    name: str,
    runtime: Runtime,
    actor: Actor,
    request_id: str,
    body: dict[str, Any],
) -> JSONResponse:
    request = validate(_REQUEST_MODELS[operation], body)
    if request.associated_data is not None:
        raise _unsupported(
            "associated_data", "Give associated data as context (bound the same way)."
        )
    if getattr(request, "convergent_encryption", None):
        raise _unsupported("convergent_encryption", "Convergent keys are not offered.")
    _refuse_other_type(getattr(request, "type", None))
    if request.batch_input is None:
        result = _run_use(
            runtime,
            actor,
            request_id,
            name,
            operation,
            [_use_item(operation, request)],
            single=True,
        )
        return _single_response(operation, result, request_id)
    _refuse_beside_batch(operation, request)
    items, references = _batch_items(operation, request.batch_input)
    result = _run_use(runtime, actor, request_id, name, operation, items, single=False)
    warnings: list[str] = []
    status = _batch_status(
        result.outcomes, request.partial_failure_response_code, warnings
    )
    results = [
        _batch_result(operation, outcome, reference)
        for outcome, reference in zip(result.outcomes, references, strict=True)
    ]
    return JSONResponse(
        envelope({"batch_results": results}, request_id, warnings),
        status_code=status,
        headers={"Ledger-Position": str(result.position)},
    )


def _single_response(
    operation: Operation, result: UseResult, request_id: str
) -> JSONResponse:
    """The one item's result in Vault's envelope, or its refusal raised."""
    [outcome] = result.outcomes
    if outcome.error is not None:
        raise outcome.error
    assert outcome.result is not None
    return JSONResponse(
        envelope(_vault_result(operation, outcome.result), request_id),
        headers={"Ledger-Position": str(result.position)},
    )


def _refuse_beside_batch(operation: Operation, request: Any) -> None:
    """Item fields at the top of a batch request would be silently unused."""
    for field in ("plaintext", "ciphertext", "context", "key_version", "nonce"):
        if getattr(request, field, None) is not None:
            raise InvalidArgumentError(
                f"{field} goes in the items of batch_input, not beside it.",
                code="INVALID_FIELD",
                field=field,
            )


def _use_route(operation: Operation, doc: str) -> None:
    def handler(
        name: str,
        runtime: RuntimeDep,
        actor: Use,
        request_id: RequestIdDep,
        no_replay: NoReplayDep,
        body: BodyDep,
    ) -> JSONResponse:
        return _use(operation, name, runtime, actor, request_id, body)

    handler.__doc__ = doc
    model = _REQUEST_MODELS[operation]
    router.add_api_route(
        f"/{operation}/{{name}}",
        handler,
        methods=["POST"],
        operation_id=f"transit_{operation}",
        description=doc,
        openapi_extra={
            "requestBody": {
                "content": {"application/json": {"schema": model.model_json_schema()}},
                "required": True,
            }
        },
    )


_use_route("encrypt", "Encrypt (one item or batch_input); the use is recorded first.")
_use_route("decrypt", "Decrypt (one item or batch_input); the use is recorded first.")
_use_route("rewrap", "Decrypt and encrypt again under the primary (or key_version).")


@router.post("/datakey/{kind}/{name}", operation_id="transit_datakey")
def datakey(
    kind: str,
    name: str,
    runtime: RuntimeDep,
    actor: Use,
    request_id: RequestIdDep,
    no_replay: NoReplayDep,
    body: BodyDep,
) -> JSONResponse:
    """A fresh data key wrapped under the key; ``plaintext`` also returns it."""
    if kind not in ("plaintext", "wrapped"):
        raise InvalidArgumentError(
            "The data key type is plaintext or wrapped.", code="INVALID_FIELD"
        )
    request = validate(DataKeyRequest, body)
    _refuse_nonce(request.nonce)
    bits = 256 if request.bits is None else request.bits
    if bits not in DATA_KEY_BITS:
        raise InvalidArgumentError(
            "bits is 128, 256 or 512.", code="INVALID_FIELD", field="bits"
        )
    item = UseItem(
        context=request.context,
        return_plaintext=kind == "plaintext",
        data_key_bytes=bits // 8,
    )
    result = _run_use(runtime, actor, request_id, name, "datakey", [item], single=True)
    return _single_response("datakey", result, request_id)


# Backup and restore ----------------------------------------------------------


class TransitRestore(_Body):
    backup: StrictStr = Field(description="A backup string from GET /backup/{name}.")
    force: StrictBool | None = Field(
        None, description="Needed to restore over an existing key, as in Vault."
    )


@router.get("/backup/{name}", operation_id="transit_backup_key")
def backup_key(
    name: str,
    response: Response,
    runtime: RuntimeDep,
    actor: Annotated[Actor, require(Permission.BACKUP_MANAGE)],
    request_id: RequestIdDep,
) -> dict[str, Any]:
    """Take a recorded backup of the key to its policy's targets and return it.

    The backup string is the signed keyledger bundle (its material wrapped
    under the backup key, never in plaintext), base64-encoded.
    """
    outcome = runtime.backups.take_backup(CommandContext(actor, request_id), name)
    data = runtime.backups.read_bundle(outcome.backup_id)
    if outcome.receipts:
        response.headers["Ledger-Position"] = str(outcome.receipts[-1].position)
    encoded = base64.b64encode(data).decode("ascii")
    return envelope({"backup": encoded}, request_id)


def _bundle_key_name(data: bytes) -> str | None:
    """The key a bundle says it holds, before it is checked (None if unreadable)."""
    try:
        name = json.loads(data)["body"]["key"]["name"]
    except (ValueError, KeyError, TypeError):
        return None
    return name if isinstance(name, str) else None


def _restore(
    runtime: Runtime,
    actor: Actor,
    request_id: str,
    body: dict[str, Any],
    into: str | None,
) -> Response:
    """Restore a bundle; over an existing key only with ``force``, as in Vault.

    A restore that needs a custodian's approval answers 202 with the pending
    approval in ``data`` (see ``api.restore``); nothing is restored until then.
    """
    command = validate(TransitRestore, body)
    data = decode_bundle_upload(command.backup)
    target = into or _bundle_key_name(data)
    if target is not None:
        # Grants first, so a key the caller may not restore is not shown to exist.
        require_on_key(runtime, actor, target, Permission.BACKUP_RESTORE)
    if target is not None and not command.force:
        try:
            runtime.service.get_key(target, versions_limit=1)
        except KeyNotFoundError:
            pass
        else:
            raise KeyExistsError(
                f"Key {target!r} exists; restore over it with force=true.",
                key=target,
            )
    result = restore_or_request(
        runtime,
        CommandContext(actor, request_id),
        data,
        into=into,
        source_public_key=None,
        expected_key=None,
    )
    if isinstance(result, ApprovalRequest):
        return JSONResponse(
            envelope({"approval": result.view()}, request_id), status_code=202
        )
    return Response(status_code=204, headers={"Ledger-Position": str(result.position)})


Restorer = Annotated[Actor, require(Permission.BACKUP_RESTORE)]


@router.post("/restore", operation_id="transit_restore", status_code=204)
def restore(
    runtime: RuntimeDep,
    actor: Restorer,
    request_id: RequestIdDep,
    no_replay: NoReplayDep,
    body: BodyDep,
) -> Response:
    """Restore a backup under the name of the key it holds."""
    return _restore(runtime, actor, request_id, body, None)


@router.post("/restore/{name}", operation_id="transit_restore_as", status_code=204)
def restore_as(
    name: str,
    runtime: RuntimeDep,
    actor: Restorer,
    request_id: RequestIdDep,
    no_replay: NoReplayDep,
    body: BodyDep,
) -> Response:
    """Restore a backup as the key ``name`` (a new key, or its own with force)."""
    return _restore(runtime, actor, request_id, body, name)


def _accept_put() -> None:
    """Vault takes PUT and POST alike for writes: every POST route answers PUT too."""
    for route in list(router.routes):
        if not isinstance(route, APIRoute) or "POST" not in (route.methods or ()):
            continue
        router.add_api_route(
            route.path.removeprefix(router.prefix),
            route.endpoint,
            methods=["PUT"],
            status_code=route.status_code,
            include_in_schema=False,
        )


_accept_put()
