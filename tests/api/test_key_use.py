"""Using keys through the API: encrypt, decrypt, rewrap, data keys, and their records.

Every refusal is checked by status, then by the envelope's code. Every request
against an existing key must leave exactly one ``keyledger.usage.KeyUsed`` entry
on the ledger, on a stream of its own, holding counts and fingerprints only.
"""

from __future__ import annotations

import base64
import io
import re
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.runtime import Runtime
from domain.clock import AdjustableClock
from domain.usage import context_fingerprint
from ledger import offline
from ledger.service import KeyService
from ledger.settings import Settings
from projections.rebuild import rebuild
from tests.api._support import (
    JSON,
    all_events,
    assert_error,
    create,
    get_key,
    head_position,
    post_ok,
)
from tests.api.conftest import TOKEN

CIPHERTEXT = re.compile(r"keyledger:v([0-9]+):([A-Za-z0-9+/=]+)")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encrypt(
    client: TestClient, name: str, plaintext: bytes, **fields: Any
) -> dict[str, Any]:
    """Encrypt one plaintext, which must succeed; return the response body."""
    return post_ok(
        client, f"/v1/keys/{name}/encrypt", {"plaintext": b64(plaintext), **fields}
    )


def decrypt(client: TestClient, name: str, ciphertext: str, **fields: Any) -> Any:
    """Send one decrypt request and return the raw response."""
    return client.post(
        f"/v1/keys/{name}/decrypt", json={"ciphertext": ciphertext, **fields}
    )


def usage_events(client: TestClient) -> list[dict[str, Any]]:
    """Every usage entry on the ledger, in position order."""
    return [e for e in all_events(client) if e["type"] == "keyledger.usage.KeyUsed"]


def refuse_usage_records(service: KeyService) -> None:
    """Make the database itself refuse to store usage entries (and nothing else)."""
    table = service.ledger.events_table_name
    if service.ledger.__class__.__name__.startswith("SQLite"):
        statements = [
            f"CREATE TRIGGER refuse_usage BEFORE INSERT ON {table} "
            "WHEN substr(NEW.topic, 1, 16) = 'keyledger.usage.' "
            "BEGIN SELECT RAISE(ABORT, 'usage refused'); END"
        ]
    else:
        statements = [
            "CREATE FUNCTION refuse_usage() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'usage refused'; END $$",
            f"CREATE TRIGGER refuse_usage BEFORE INSERT ON {table} FOR EACH ROW "
            "WHEN (starts_with(NEW.topic, 'keyledger.usage.')) "
            "EXECUTE FUNCTION refuse_usage()",
        ]
    service.ledger.execute([(sql, ()) for sql in statements])


# Round trips ---------------------------------------------------------------


def test_encrypt_then_decrypt_round_trips_with_context(client: TestClient) -> None:
    """A plaintext comes back from its ciphertext under the same context."""
    create(client, "rt")

    sealed = encrypt(client, "rt", b"attack at dawn", context=b64(b"tenant-7"))
    opened = decrypt(client, "rt", sealed["ciphertext"], context=b64(b"tenant-7"))

    assert opened.status_code == 200, opened.text
    assert base64.b64decode(opened.json()["plaintext"]) == b"attack at dawn"
    assert opened.json()["version"] == 1
    match = CIPHERTEXT.fullmatch(sealed["ciphertext"])
    assert match is not None and match.group(1) == "1"
    assert sealed["version"] == 1
    assert sealed["receipts"][0]["type"] == "keyledger.usage.KeyUsed"
    assert len(base64.b64decode(match.group(2))) == 12 + 14 + 16


def test_each_encryption_uses_a_fresh_nonce(client: TestClient) -> None:
    """The same plaintext twice gives two different ciphertexts and nonces."""
    create(client, "nonce")

    first = encrypt(client, "nonce", b"same")["ciphertext"]
    second = encrypt(client, "nonce", b"same")["ciphertext"]

    assert first != second
    assert (
        base64.b64decode(first.split(":")[2])[:12]
        != (base64.b64decode(second.split(":")[2])[:12])
    )


def test_batch_encrypt_and_decrypt_give_one_result_per_item(
    client: TestClient,
) -> None:
    """A batch is served item by item, in order, with one bad item among good ones."""
    create(client, "batch")
    plaintexts = [b"one", b"two", b"three"]

    sealed = post_ok(
        client,
        "/v1/keys/batch/encrypt",
        {
            "batch": [
                {"plaintext": b64(plaintexts[0])},
                {"plaintext": "not base64!"},
                {"plaintext": b64(plaintexts[1]), "context": b64(b"c")},
                {"plaintext": b64(plaintexts[2]), "colour": "red"},
                "not an object",
            ]
        },
    )
    results = sealed["results"]

    assert [r.get("status") for r in results] == [None, 422, None, 422, 422]
    assert results[1]["error"]["code"] == "INVALID_PLAINTEXT"
    assert results[3]["error"]["code"] == "UNKNOWN_FIELD"
    assert results[4]["error"]["code"] == "INVALID_FIELD"
    opened = post_ok(
        client,
        "/v1/keys/batch/decrypt",
        {
            "batch": [
                {"ciphertext": results[0]["ciphertext"]},
                {"ciphertext": results[2]["ciphertext"], "context": b64(b"c")},
                {"ciphertext": results[2]["ciphertext"]},
            ]
        },
    )["results"]
    assert base64.b64decode(opened[0]["plaintext"]) == b"one"
    assert base64.b64decode(opened[1]["plaintext"]) == b"two"
    assert opened[2]["status"] == 422
    assert opened[2]["error"]["code"] == "DECRYPTION_FAILED"
    [encrypted, decrypted] = [e["payload"] for e in usage_events(client)]
    assert encrypted["outcomes"] == {
        "INVALID_FIELD": 1,
        "INVALID_PLAINTEXT": 1,
        "UNKNOWN_FIELD": 1,
        "ok": 2,
    }
    assert (encrypted["items"], encrypted["succeeded"]) == (5, 2)
    assert decrypted["outcomes"] == {"DECRYPTION_FAILED": 1, "ok": 2}


def test_batch_body_is_only_the_batch(client: TestClient) -> None:
    """Fields beside batch, an empty batch and a non-list batch are 422, unrecorded."""
    create(client, "shape")
    head = head_position(client)

    for body in (
        {"batch": [{"plaintext": b64(b"x")}], "context": b64(b"c")},
        {"batch": []},
        {"batch": {"plaintext": b64(b"x")}},
    ):
        assert_error(
            client.post("/v1/keys/shape/encrypt", json=body), 422, "INVALID_FIELD"
        )

    assert head_position(client) == head


def test_rewrap_moves_old_ciphertext_to_the_primary(client: TestClient) -> None:
    """A v1 ciphertext rewrapped after a rotation is v2 and opens to the same data."""
    create(client, "rw")
    old = encrypt(client, "rw", b"payload", context=b64(b"ctx"))["ciphertext"]
    post_ok(client, "/v1/keys/rw/rotate")

    rewrapped = post_ok(
        client, "/v1/keys/rw/rewrap", {"ciphertext": old, "context": b64(b"ctx")}
    )

    assert (rewrapped["from_version"], rewrapped["version"]) == (1, 2)
    assert rewrapped["ciphertext"].startswith("keyledger:v2:")
    assert "plaintext" not in rewrapped
    opened = decrypt(client, "rw", rewrapped["ciphertext"], context=b64(b"ctx"))
    assert base64.b64decode(opened.json()["plaintext"]) == b"payload"
    payload = usage_events(client)[-2]["payload"]
    assert payload["operation"] == "rewrap"
    assert (payload["versions_decrypted"], payload["versions_encrypted"]) == ([1], [2])


def test_datakey_returns_plaintext_only_when_asked(client: TestClient) -> None:
    """A data key is 256 bits, wrapped under the key; its plaintext only on request."""
    create(client, "dk")

    wrapped_only = post_ok(client, "/v1/keys/dk/datakey", {"plaintext": False})
    both = post_ok(client, "/v1/keys/dk/datakey", {"plaintext": True})
    batch = post_ok(
        client,
        "/v1/keys/dk/datakey",
        {"batch": [{"plaintext": True, "context": b64(b"c")}, {}]},
    )["results"]

    assert "plaintext" not in wrapped_only
    assert wrapped_only["ciphertext"].startswith("keyledger:v1:")
    data_key = base64.b64decode(both["plaintext"])
    assert len(data_key) == 32
    opened = decrypt(client, "dk", both["ciphertext"]).json()
    assert base64.b64decode(opened["plaintext"]) == data_key
    assert len(base64.b64decode(batch[0]["plaintext"])) == 32
    assert "plaintext" not in batch[1]
    assert decrypt(client, "dk", batch[0]["ciphertext"]).status_code == 422


# Case C01 and the version rules ----------------------------------------------


@pytest.fixture
def k1(client: TestClient) -> dict[int, str]:
    """C01's key: a ciphertext under each of v1, v2, v3, then min_decryption 3."""
    create(client, "k1")
    sealed = {1: encrypt(client, "k1", b"v1 data")["ciphertext"]}
    for version in (2, 3):
        post_ok(client, "/v1/keys/k1/rotate")
        sealed[version] = encrypt(client, "k1", b"v%d data" % version)["ciphertext"]
    body = post_ok(client, "/v1/keys/k1/config", {"min_decryption_version": 3})
    assert body["key"]["stream_version"] == 4
    return sealed


def test_c01_decryption_below_the_floor_is_refused(
    client: TestClient, k1: dict[int, str]
) -> None:
    """C01: v1 data under min_decryption_version 3 is 409 with min and version."""
    details = assert_error(
        decrypt(client, "k1", k1[1]), 409, "VERSION_BELOW_MIN_DECRYPTION"
    )

    assert details == {"key": "k1", "min": 3, "version": 1}
    assert decrypt(client, "k1", k1[3]).status_code == 200
    assert usage_events(client)[-2]["payload"]["outcomes"] == {
        "VERSION_BELOW_MIN_DECRYPTION": 1
    }


def test_c01_only_the_primary_encrypts_by_default(
    client: TestClient, k1: dict[int, str]
) -> None:
    """C01: version 2 with min_encryption_version unset is 409 VERSION_NOT_PRIMARY."""
    response = client.post(
        "/v1/keys/k1/encrypt", json={"plaintext": b64(b"x"), "version": 2}
    )

    details = assert_error(response, 409, "VERSION_NOT_PRIMARY")
    assert details["primary"] == 3
    assert details["min_encryption_version"] is None


def test_c01_batch_never_swaps_the_version_asked_for(
    client: TestClient, k1: dict[int, str]
) -> None:
    """C01: a batch asking v3 then v1 serves v3 and refuses v1 with 409."""
    results = post_ok(
        client,
        "/v1/keys/k1/encrypt",
        {
            "batch": [
                {"plaintext": b64(b"a"), "version": 3},
                {"plaintext": b64(b"b"), "version": 1},
            ]
        },
    )["results"]

    assert results[0]["version"] == 3
    assert results[0]["ciphertext"].startswith("keyledger:v3:")
    assert results[1]["status"] == 409
    assert results[1]["error"]["code"] == "VERSION_NOT_PRIMARY"
    assert "ciphertext" not in results[1]


def test_c01_batch_decrypt_refuses_each_item_below_the_floor(
    client: TestClient, k1: dict[int, str]
) -> None:
    """C01 on the batch path: v1 and v2 items are 409, the v3 item is served."""
    results = post_ok(
        client,
        "/v1/keys/k1/decrypt",
        {"batch": [{"ciphertext": k1[v]} for v in (1, 2, 3)]},
    )["results"]

    assert [r.get("status") for r in results] == [409, 409, None]
    assert {r["error"]["code"] for r in results[:2]} == {"VERSION_BELOW_MIN_DECRYPTION"}
    assert base64.b64decode(results[2]["plaintext"]) == b"v3 data"


def test_explicit_version_allowed_by_min_encryption_version(
    client: TestClient, k1: dict[int, str]
) -> None:
    """With min_encryption_version 3 an explicit v3 encrypts; unknown v9 is 404."""
    post_ok(client, "/v1/keys/k1/config", {"min_encryption_version": 3})

    assert encrypt(client, "k1", b"x", version=3)["version"] == 3
    assert_error(
        client.post("/v1/keys/k1/encrypt", json={"plaintext": b64(b"x"), "version": 9}),
        404,
        "VERSION_NOT_FOUND",
    )


def test_uses_never_move_the_key_stream_version(
    client: TestClient, k1: dict[int, str]
) -> None:
    """Uses are on their own streams: the key stays at stream version 4."""
    for _ in range(3):
        encrypt(client, "k1", b"x")
        decrypt(client, "k1", k1[3])

    assert get_key(client, "k1")["stream_version"] == 4
    rotated = post_ok(client, "/v1/keys/k1/rotate", {"expected_version": 4})
    assert rotated["key"]["stream_version"] == 5
    streams = {e["stream_id"] for e in usage_events(client)}
    assert len(streams) == len(usage_events(client))
    assert all(e["stream_version"] == 1 for e in usage_events(client))


def test_decryption_after_rollback_keeps_older_data_readable(
    client: TestClient,
) -> None:
    """After the primary rolls back to v1, v1 and v2 data both decrypt."""
    create(client, "rb")
    v1 = encrypt(client, "rb", b"old")["ciphertext"]
    post_ok(client, "/v1/keys/rb/rotate")
    v2 = encrypt(client, "rb", b"new")["ciphertext"]

    post_ok(client, "/v1/keys/rb/rollback", {"version": 1})

    assert base64.b64decode(decrypt(client, "rb", v1).json()["plaintext"]) == b"old"
    assert base64.b64decode(decrypt(client, "rb", v2).json()["plaintext"]) == b"new"
    assert encrypt(client, "rb", b"again")["version"] == 1


def test_decryption_after_destruction_is_refused(
    client: TestClient, clock: AdjustableClock
) -> None:
    """A destroy-scheduled version is refused, then a destroyed one, each by name."""
    create(client, "gone")
    v1 = encrypt(client, "gone", b"doomed")["ciphertext"]
    post_ok(client, "/v1/keys/gone/rotate")
    post_ok(client, "/v1/keys/gone/versions/1/schedule-destruction", {"days": 7})

    assert_error(decrypt(client, "gone", v1), 409, "VERSION_DESTROY_SCHEDULED")
    clock.advance(timedelta(days=7))
    assert client.post("/v1/scheduler/run").status_code == 200
    assert_error(decrypt(client, "gone", v1), 409, "VERSION_DESTROYED")
    assert_error(
        client.post(
            "/v1/keys/gone/encrypt", json={"plaintext": b64(b"x"), "version": 1}
        ),
        409,
        "VERSION_NOT_PRIMARY",
    )


def test_decryption_with_a_disabled_version_is_refused(client: TestClient) -> None:
    """A disabled version decrypts nothing until it is enabled again."""
    create(client, "dis")
    v1 = encrypt(client, "dis", b"data")["ciphertext"]
    post_ok(client, "/v1/keys/dis/rotate")
    post_ok(client, "/v1/keys/dis/versions/1/disable")

    assert_error(decrypt(client, "dis", v1), 409, "VERSION_DISABLED")
    post_ok(client, "/v1/keys/dis/versions/1/enable")
    assert decrypt(client, "dis", v1).status_code == 200


def test_disabled_key_refuses_everything_and_is_recorded(client: TestClient) -> None:
    """Every operation on a disabled key is 409 KEY_DISABLED, and each is recorded."""
    create(client, "off")
    v1 = encrypt(client, "off", b"data")["ciphertext"]
    post_ok(client, "/v1/keys/off/disable")

    assert_error(decrypt(client, "off", v1), 409, "KEY_DISABLED")
    for operation, body in (
        ("encrypt", {"plaintext": b64(b"x")}),
        ("rewrap", {"ciphertext": v1}),
        ("datakey", {"batch": [{}, {}]}),
    ):
        assert_error(
            client.post(f"/v1/keys/off/{operation}", json=body), 409, "KEY_DISABLED"
        )

    refused = [e["payload"] for e in usage_events(client)[1:]]
    assert [p["operation"] for p in refused] == [
        "decrypt",
        "encrypt",
        "rewrap",
        "datakey",
    ]
    assert refused[-1]["outcomes"] == {"KEY_DISABLED": 2}
    assert all(p["succeeded"] == 0 for p in refused)


def test_compromised_version_decrypts_only_when_the_request_knows(
    client: TestClient,
) -> None:
    """A compromised version is 409 unless compromised_ok; that use is flagged."""
    create(client, "leak")
    v1 = encrypt(client, "leak", b"rescue me")["ciphertext"]
    post_ok(client, "/v1/keys/leak/rotate")
    post_ok(client, "/v1/keys/leak/versions/1/compromise", {"reason": "leaked"})

    assert_error(decrypt(client, "leak", v1), 409, "VERSION_COMPROMISED")
    assert usage_events(client)[-1]["payload"]["compromised_use"] is False
    rescued = decrypt(client, "leak", v1, compromised_ok=True)

    assert rescued.status_code == 200, rescued.text
    assert base64.b64decode(rescued.json()["plaintext"]) == b"rescue me"
    assert rescued.json()["compromised_use"] is True
    flagged = usage_events(client)[-1]["payload"]
    assert flagged["compromised_use"] is True
    assert flagged["compromised_versions"] == [1]
    moved = post_ok(
        client, "/v1/keys/leak/rewrap", {"ciphertext": v1, "compromised_ok": True}
    )
    assert moved["version"] == 2 and moved["compromised_use"] is True


def test_compromised_primary_refuses_encryption(client: TestClient) -> None:
    """With its primary compromised, a key encrypts nothing until it is rotated."""
    create(client, "cp")
    post_ok(client, "/v1/keys/cp/versions/1/compromise", {"reason": "leaked"})

    assert_error(
        client.post("/v1/keys/cp/encrypt", json={"plaintext": b64(b"x")}),
        409,
        "VERSION_COMPROMISED",
    )
    assert_error(
        client.post("/v1/keys/cp/datakey", json={}), 409, "VERSION_COMPROMISED"
    )


# Opaque failures and bad input -------------------------------------------------


def test_decryption_failures_are_one_opaque_error(client: TestClient) -> None:
    """Wrong context, tampering, another key's ciphertext, changed version: alike."""
    create(client, "mine")
    create(client, "other")
    post_ok(client, "/v1/keys/mine/rotate")
    sealed = encrypt(client, "mine", b"secret", context=b64(b"right"), version=None)
    good = sealed["ciphertext"]
    raw = bytearray(base64.b64decode(good.split(":")[2]))
    raw[-1] ^= 1
    foreign = encrypt(client, "other", b"secret")["ciphertext"]

    attempts = {
        "wrong context": decrypt(client, "mine", good, context=b64(b"wrong")),
        "no context": decrypt(client, "mine", good),
        "tampered": decrypt(client, "mine", f"keyledger:v2:{b64(bytes(raw))}"),
        "truncated": decrypt(client, "mine", f"keyledger:v2:{b64(bytes(raw[:20]))}"),
        "another key": decrypt(client, "mine", foreign),
        "altered version": decrypt(
            client, "mine", good.replace("keyledger:v2:", "keyledger:v1:")
        ),
    }

    bodies = set()
    for label, response in attempts.items():
        assert response.status_code == 422, label
        bodies.add(response.text)
    assert len(bodies) == 1, bodies
    assert assert_error(attempts["tampered"], 422, "DECRYPTION_FAILED") == {}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"plaintext": "not base64!"}, "INVALID_PLAINTEXT"),
        ({"plaintext": "aGk"}, "INVALID_PLAINTEXT"),
        ({"plaintext": ""}, "INVALID_PLAINTEXT"),
        ({"plaintext": b64(b"x"), "context": "%%"}, "INVALID_CONTEXT"),
        ({"plaintext": b64(b"x"), "version": 0}, "INVALID_FIELD"),
        ({"plaintext": b64(b"x"), "version": -1}, "INVALID_FIELD"),
        ({"plaintext": b64(b"x"), "version": 2**40}, "INVALID_FIELD"),
        ({"plaintext": 12}, "INVALID_FIELD"),
        ({}, "INVALID_FIELD"),
    ],
)
def test_bad_encrypt_input_is_422_and_unrecorded(
    client: TestClient, body: dict[str, Any], code: str
) -> None:
    """Plaintext not base64 or empty, bad context or version: 422, no entry."""
    create(client, "bad")
    head = head_position(client)

    assert_error(client.post("/v1/keys/bad/encrypt", json=body), 422, code)

    assert head_position(client) == head


@pytest.mark.parametrize(
    "ciphertext",
    [
        "vault:v1:AAAA",
        "keyledger:v0:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "keyledger:v-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "keyledger:v99999999999999999999:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "keyledger:v2147483648:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "keyledger:v01:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "keyledger:v1:",
        "keyledger:v1:not base64",
        "keyledger:v1:AAA",
        "keyledger:1:AAAA",
        " keyledger:v1:AAAA",
    ],
)
def test_malformed_ciphertext_is_422_and_unrecorded(
    client: TestClient, ciphertext: str
) -> None:
    """A bad prefix, v0, negative, enormous or padded versions, bad base64: 422."""
    create(client, "badc")
    head = head_position(client)

    assert_error(decrypt(client, "badc", ciphertext), 422, "INVALID_CIPHERTEXT")

    assert head_position(client) == head


def test_unknown_version_in_ciphertext_is_404(client: TestClient) -> None:
    """A well-formed ciphertext naming a version the key lacks is VERSION_NOT_FOUND."""
    create(client, "few")

    assert_error(
        decrypt(client, "few", "keyledger:v7:" + b64(bytes(40))),
        404,
        "VERSION_NOT_FOUND",
    )


def test_unknown_key_is_404_and_unrecorded(client: TestClient) -> None:
    """Using a key that does not exist records nothing."""
    head = head_position(client)

    assert_error(
        client.post("/v1/keys/nope/encrypt", json={"plaintext": b64(b"x")}),
        404,
        "KEY_NOT_FOUND",
    )

    assert head_position(client) == head


def test_body_at_the_limit_is_served_and_one_byte_over_is_413(
    client: TestClient, runtime: Runtime
) -> None:
    """A body of exactly the limit encrypts; one byte more is 413, unrecorded."""
    create(client, "big")
    limit = runtime.settings.max_body_bytes
    body = b'{"plaintext":"' + base64.b64encode(bytes(limit // 2)) + b'"}'
    exact = body + b" " * (limit - len(body))
    assert len(exact) == limit

    served = client.post("/v1/keys/big/encrypt", content=exact, headers=JSON)
    head = head_position(client)
    over = client.post("/v1/keys/big/encrypt", content=exact + b" ", headers=JSON)

    assert served.status_code == 200, served.text
    assert_error(over, 413, "PAYLOAD_TOO_LARGE")
    assert head_position(client) == head


@pytest.fixture
def big_client(runtime: Runtime, tmp_path: Path) -> Iterator[TestClient]:
    """A client of a service that accepts 4 MiB bodies."""
    settings = Settings(data_dir=tmp_path, max_body_bytes=4 * 1024 * 1024)
    big = Runtime(settings, runtime.service, runtime.clock, runtime.admin_token_digest)
    with TestClient(create_app(settings, runtime=big)) as test_client:
        test_client.headers["Authorization"] = f"Bearer {TOKEN}"
        yield test_client


def test_batch_of_ten_thousand_items(big_client: TestClient) -> None:
    """10,000 items encrypt and decrypt in one request each, recorded as one use."""
    create(big_client, "bulk")
    items = [{"plaintext": b64(b"%05d" % i)} for i in range(10_000)]
    sealed = post_ok(big_client, "/v1/keys/bulk/encrypt", {"batch": items})["results"]
    opened = post_ok(
        big_client,
        "/v1/keys/bulk/decrypt",
        {"batch": [{"ciphertext": r["ciphertext"]} for r in sealed]},
    )["results"]

    assert all("error" not in r for r in opened)
    assert [base64.b64decode(r["plaintext"]) for r in opened] == [
        b"%05d" % i for i in range(10_000)
    ]
    payloads = [e["payload"] for e in usage_events(big_client)]
    assert [(p["items"], p["succeeded"]) for p in payloads] == [
        (10_000, 10_000),
        (10_000, 10_000),
    ]
    too_many = {"batch": [{"plaintext": b64(b"x")}] * 10_001}
    assert_error(
        big_client.post("/v1/keys/bulk/encrypt", json=too_many),
        422,
        "BATCH_TOO_LARGE",
    )


# The usage record ----------------------------------------------------------


def test_usage_entry_names_who_what_and_how_many(client: TestClient) -> None:
    """A use is recorded with actor, subject, key, operation, counts, fingerprints."""
    create(client, "audited")
    ciphertext = encrypt(client, "audited", b"x", context=b64(b"tenant-1"))[
        "ciphertext"
    ]
    client.post(
        "/v1/keys/audited/decrypt",
        json={
            "batch": [
                {"ciphertext": ciphertext, "context": b64(b"tenant-1")},
                {"ciphertext": ciphertext, "context": b64(b"tenant-2")},
            ]
        },
        headers={"X-Request-Id": "req-audit-1"},
    )

    entry = usage_events(client)[-1]
    payload = entry["payload"]
    assert entry["subject"] == "key:audited"
    assert entry["actor"]["token_id"].startswith("tok_")
    assert entry["request_id"] == "req-audit-1"
    assert payload["key_name"] == "audited"
    assert payload["key_id"] == get_key(client, "audited")["key_id"]
    assert payload["operation"] == "decrypt"
    assert (payload["items"], payload["succeeded"]) == (2, 1)
    assert payload["outcomes"] == {"DECRYPTION_FAILED": 1, "ok": 1}
    assert payload["versions_decrypted"] == [1]
    assert payload["contexts"] == 2
    assert payload["context_fingerprints"] == sorted(
        [context_fingerprint(b"tenant-1"), context_fingerprint(b"tenant-2")]
    )
    assert payload["compromised_use"] is False


def _forms(secret: bytes) -> dict[str, bytes]:
    return {
        "raw": secret,
        "hex": secret.hex().encode(),
        "HEX": secret.hex().upper().encode(),
        "base64": base64.b64encode(secret).rstrip(b"="),
        "base64url": base64.urlsafe_b64encode(secret).rstrip(b"="),
    }


def test_no_plaintext_ciphertext_data_key_or_material_in_ledger_rows(
    client: TestClient, runtime: Runtime
) -> None:
    """Search every events-table row for every secret of the workload, in all forms."""
    create(client, "quiet")
    plaintext = b"the plaintext that must not be recorded"
    context = b"a context that is only fingerprinted"
    sealed = encrypt(client, "quiet", plaintext, context=b64(context))["ciphertext"]
    post_ok(client, "/v1/keys/quiet/rotate")
    rewrapped = post_ok(
        client, "/v1/keys/quiet/rewrap", {"ciphertext": sealed, "context": b64(context)}
    )["ciphertext"]
    data_key = post_ok(client, "/v1/keys/quiet/datakey", {"plaintext": True})
    decrypt(client, "quiet", rewrapped, context=b64(context))
    service = runtime.service
    secrets = {
        "plaintext": plaintext,
        "context": context,
        "data key": base64.b64decode(data_key["plaintext"]),
    }
    for label, text in (
        ("ciphertext", sealed),
        ("rewrapped", rewrapped),
        ("wrapped data key", data_key["ciphertext"]),
    ):
        secrets[label] = base64.b64decode(text.split(":")[2])
        secrets[label + " text"] = text.encode()
    for row in service.ledger.query(
        "SELECT key_id, version, wrapped FROM key_material"
    ):
        wrapped = base64.b64decode(row["wrapped"])
        secrets[f"wrapped v{row['version']}"] = wrapped
        secrets[f"material v{row['version']}"] = service.kek.unwrap(
            wrapped, key_id=row["key_id"], version=int(row["version"])
        )
    needles = {
        f"{label} {form}": value
        for label, secret in secrets.items()
        for form, value in _forms(secret).items()
    }

    rows = service.ledger.query(f"SELECT * FROM {service.ledger.events_table_name}")
    assert len(usage_events(client)) == 4
    leaks = [
        f"{label} in row {i} column {column}"
        for i, row in enumerate(rows)
        for column, value in row.items()
        for label, needle in needles.items()
        if needle
        in (
            bytes(value)
            if isinstance(value, bytes | memoryview)
            else str(value).encode()
        )
    ]
    assert leaks == []


# When the ledger cannot record ---------------------------------------------


def test_use_fails_closed_when_the_ledger_refuses_the_record(
    client: TestClient, runtime: Runtime
) -> None:
    """If the usage entry cannot be stored, the answer is 503 with no result at all."""
    create(client, "closed")
    sealed = encrypt(client, "closed", b"data")["ciphertext"]
    head = head_position(client)
    refuse_usage_records(runtime.service)

    responses = [
        client.post("/v1/keys/closed/encrypt", json={"plaintext": b64(b"x")}),
        decrypt(client, "closed", sealed),
        client.post(
            "/v1/keys/closed/decrypt", json={"batch": [{"ciphertext": sealed}]}
        ),
        client.post("/v1/keys/closed/datakey", json={"plaintext": True}),
    ]

    for response in responses:
        assert_error(response, 503, "LEDGER_UNAVAILABLE")
        assert "ZGF0YQ" not in response.text and "keyledger:v" not in response.text
    assert head_position(client) == head
    post_ok(client, "/v1/keys/closed/rotate")


def test_ledger_with_uses_verifies_exports_and_rebuilds(
    client: TestClient, runtime: Runtime
) -> None:
    """Usage entries verify, export and verify offline, and leave the rebuild equal."""
    create(client, "whole")
    sealed = encrypt(client, "whole", b"x")["ciphertext"]
    post_ok(client, "/v1/keys/whole/config", {"min_encryption_version": 1})
    decrypt(client, "whole", sealed)
    post_ok(client, "/v1/keys/whole/rotate")
    post_ok(client, "/v1/keys/whole/datakey", {"batch": [{}, {}]})

    verified = client.get("/v1/ledger/verify")
    exported = client.get("/v1/exports", params={"from": "2000-01-01T00:00:00Z"})
    report = rebuild(runtime.service.app)

    assert verified.status_code == 200 and verified.json()["ok"] is True
    assert exported.status_code == 200, exported.text
    with zipfile.ZipFile(io.BytesIO(exported.content)) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    assert offline.verify_export(files).ok
    assert files["views/entries.csv"].count(b"keyledger.usage.KeyUsed") == 3
    assert report.matched_live, report.differences
