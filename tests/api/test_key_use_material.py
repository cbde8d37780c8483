"""A key whose kept material cannot be read: a recorded server fault, never data."""

from __future__ import annotations

import base64
import json

from fastapi.testclient import TestClient

from api.runtime import Runtime
from tests.api._support import assert_error, create, head_position, post_ok


def test_unreadable_material_is_500_and_the_attempt_is_recorded(
    client: TestClient, runtime: Runtime
) -> None:
    """Damaged wrapped material answers MATERIAL_UNREADABLE and the use is recorded."""
    # given a key, some data under it, and then its kept material damaged
    create(client, "damaged")
    sealed = post_ok(
        client,
        "/v1/keys/damaged/encrypt",
        {"plaintext": base64.b64encode(b"payroll").decode()},
    )
    runtime.service.ledger.execute(
        [
            (
                "UPDATE key_material SET wrapped = %s",
                (base64.b64encode(b"\0" * 60).decode(),),
            )
        ]
    )
    head = head_position(client)

    # when the data is decrypted
    response = client.post(
        "/v1/keys/damaged/decrypt", json={"ciphertext": sealed["ciphertext"]}
    )

    # then the server says its material is unreadable, and returns no data
    assert_error(response, 500, "MATERIAL_UNREADABLE")
    assert base64.b64encode(b"payroll").decode() not in response.text
    # and the attempt is on the ledger with its outcome
    assert head_position(client) == head + 1
    [entry] = client.get("/v1/events", params={"after": head}).json()["events"]
    assert entry["type"] == "keyledger.usage.KeyUsed"
    assert json.dumps(entry["payload"]["outcomes"]) == '{"MATERIAL_UNREADABLE": 1}'
