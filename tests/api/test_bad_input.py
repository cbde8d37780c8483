"""Malformed requests (failure cases C12, C29): refused with the right code, never 500.

Every refusal here is also checked to append nothing: the ledger head does not move.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.runtime import Runtime
from tests.api._support import (
    JSON,
    assert_error,
    create,
    get_key,
    head_position,
    post_ok,
)

LIMIT_HEADERS = {"content-type": "application/json"}


@pytest.fixture
def key_k(client: TestClient) -> int:
    """Key "k" with versions 1 and 2; returns the head position after setting it up."""
    create(client, "k")
    post_ok(client, "/v1/keys/k/rotate")
    return head_position(client)


def _raw(client: TestClient, path: str, content: bytes, headers: dict[str, str]) -> Any:
    return client.post(path, content=content, headers=headers)


# Bodies that are not acceptable JSON objects -----------------------------------------

RAW_BODIES = [
    pytest.param("/v1/keys", b'{"name":', JSON, 400, "INVALID_JSON", id="truncated"),
    pytest.param(
        "/v1/keys", b"{'name': 'x'}", JSON, 400, "INVALID_JSON", id="single-quotes"
    ),
    pytest.param(
        "/v1/keys", b'{"name":"x"} x', JSON, 400, "INVALID_JSON", id="trailing-garbage"
    ),
    pytest.param(
        "/v1/keys", b'{"name":"x",}', JSON, 400, "INVALID_JSON", id="trailing-comma"
    ),
    pytest.param("/v1/keys", b"[]", JSON, 400, "INVALID_JSON", id="array"),
    pytest.param("/v1/keys", b'"x"', JSON, 400, "INVALID_JSON", id="string"),
    pytest.param("/v1/keys", b"null", JSON, 400, "INVALID_JSON", id="null"),
    pytest.param("/v1/keys", b"7", JSON, 400, "INVALID_JSON", id="number"),
    pytest.param(
        "/v1/keys",
        b'\xef\xbb\xbf{"name":"bom"}',
        JSON,
        400,
        "INVALID_JSON",
        id="utf8-bom",
    ),
    pytest.param(
        "/v1/keys", b'{"name":"k\xc3\x28"}', JSON, 400, "INVALID_UTF8", id="bad-utf8"
    ),
    pytest.param(
        "/v1/keys", b'{"name":"\xff"}', JSON, 400, "INVALID_UTF8", id="ff-byte"
    ),
    pytest.param(
        "/v1/keys",
        b'{"name":"a","name":"b"}',
        JSON,
        400,
        "DUPLICATE_FIELD",
        id="duplicate",
    ),
    pytest.param(
        "/v1/keys",
        b'{"name":"a","description":{"x":1,"x":2}}',
        JSON,
        400,
        "DUPLICATE_FIELD",
        id="nested-duplicate",
    ),
    pytest.param(
        "/v1/keys/k/rotate",
        b'{"expected_version":2,"expected_version":2}',
        JSON,
        400,
        "DUPLICATE_FIELD",
        id="duplicate-on-command",
    ),
    pytest.param(
        "/v1/keys",
        b'{"name":"plain"}',
        {"content-type": "text/plain"},
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        id="text-plain",
    ),
    pytest.param(
        "/v1/keys",
        b"name=form",
        {"content-type": "application/x-www-form-urlencoded"},
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        id="form-urlencoded",
    ),
    pytest.param(
        "/v1/keys/k/rotate",
        b'{"expected_version":2}',
        {"content-type": "text/plain; charset=utf-8"},
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        id="text-plain-on-command",
    ),
    pytest.param(
        "/v1/keys", b'{"name":"none"}', {}, 415, "UNSUPPORTED_MEDIA_TYPE", id="no-type"
    ),
    pytest.param(
        "/v1/keys/k/rotate",
        b'{"expected_version":NaN}',
        JSON,
        422,
        "INVALID_FIELD",
        id="nan",
    ),
    pytest.param(
        "/v1/keys/k/versions/1/schedule-destruction",
        b'{"days":1e400}',
        JSON,
        422,
        "INVALID_FIELD",
        id="infinity",
    ),
]


def test_malformed_body_is_refused_without_recording(
    client: TestClient, key_k: int, subtests: pytest.Subtests
) -> None:
    """Bad JSON, bad UTF-8, duplicates and wrong media types are refused unrecorded."""
    for case in RAW_BODIES:
        path, content, headers, status, code = case.values
        with subtests.test(msg=case.id):
            response = _raw(client, path, content, headers)
            assert response.status_code != 500
            assert_error(response, status, code)
            assert head_position(client) == key_k


def test_invalid_utf8_reports_byte_offset(client: TestClient) -> None:
    """C29: invalid UTF-8 is 400 INVALID_UTF8 with the offset of the first bad byte."""
    response = _raw(client, "/v1/keys", b'{"name":"k\xc3\x28"}', JSON)
    details = assert_error(response, 400, "INVALID_UTF8")
    assert details["offset"] == 10
    assert head_position(client) == 0


def test_invalid_json_reports_line_and_column(client: TestClient) -> None:
    """Bad JSON is 400 INVALID_JSON with the line and column of the problem."""
    response = _raw(client, "/v1/keys", b'{\n  "name": }', JSON)
    details = assert_error(response, 400, "INVALID_JSON")
    assert (details["line"], details["column"]) == (2, 11)


def test_duplicate_field_names_the_field(client: TestClient) -> None:
    """A duplicated field is 400 DUPLICATE_FIELD naming it."""
    response = _raw(client, "/v1/keys", b'{"name":"a","name":"b"}', JSON)
    assert assert_error(response, 400, "DUPLICATE_FIELD")["field"] == "name"
    assert head_position(client) == 0


def test_unknown_field_is_422_naming_the_field(client: TestClient) -> None:
    """C12: a misspelt field is 422 UNKNOWN_FIELD naming it; no key is created."""
    response = client.post("/v1/keys", json={"name": "k29", "min_decrypt_versoin": 2})
    details = assert_error(response, 422, "UNKNOWN_FIELD")
    assert {"field": "min_decrypt_versoin", "problem": "unknown field"} in details[
        "fields"
    ]
    assert head_position(client) == 0
    assert_error(client.get("/v1/keys/k29"), 404, "KEY_NOT_FOUND")


def test_unknown_field_on_command_is_422(client: TestClient, key_k: int) -> None:
    """An unknown field on a version command is 422 UNKNOWN_FIELD."""
    response = client.post(
        "/v1/keys/k/versions/1/schedule-destruction", json={"days": 7, "dayz": 8}
    )
    details = assert_error(response, 422, "UNKNOWN_FIELD")
    assert [f["field"] for f in details["fields"]] == ["dayz"]
    assert head_position(client) == key_k


# Values of the wrong type ------------------------------------------------------------

BAD_VALUES = [
    pytest.param(
        "/v1/keys/k/versions/1/schedule-destruction", {"days": 7.0}, id="days-float"
    ),
    pytest.param(
        "/v1/keys/k/versions/1/schedule-destruction", {"days": True}, id="days-bool"
    ),
    pytest.param(
        "/v1/keys/k/versions/1/schedule-destruction", {"days": "7"}, id="days-string"
    ),
    pytest.param(
        "/v1/keys/k/versions/1/schedule-destruction", {"days": [7]}, id="days-list"
    ),
    pytest.param("/v1/keys/k/rotate", {"expected_version": 2.0}, id="expected-float"),
    pytest.param("/v1/keys/k/rotate", {"expected_version": True}, id="expected-bool"),
    pytest.param("/v1/keys/k/rotate", {"expected_version": "2"}, id="expected-string"),
    pytest.param("/v1/keys/k/rotate", {"expected_version": 0}, id="expected-zero"),
    pytest.param("/v1/keys/k/rotate", {"expected_version": -2}, id="expected-negative"),
    pytest.param("/v1/keys/k/rotate", {"expected_version": 2**31}, id="expected-2^31"),
    pytest.param("/v1/keys/k/rollback", {"version": 1.5}, id="rollback-version-float"),
    pytest.param("/v1/keys/k/rollback", {"version": True}, id="rollback-version-bool"),
    pytest.param(
        "/v1/keys/k/rollback", {"to_stream_version": 1.0}, id="rollback-stream-float"
    ),
    pytest.param(
        "/v1/keys/k/rollback", {"to_time": 1772366400}, id="rollback-time-number"
    ),
    pytest.param("/v1/keys/k/versions/1/compromise", {"reason": 5}, id="reason-number"),
    pytest.param(
        "/v1/keys/k/versions/1/compromise", {"reason": "x" * 1001}, id="reason-long"
    ),
    pytest.param("/v1/keys", {"name": 5}, id="name-number"),
    pytest.param("/v1/keys", {"name": None}, id="name-null"),
    pytest.param("/v1/keys", {}, id="name-missing"),
    pytest.param(
        "/v1/keys", {"name": "d", "description": "x" * 1001}, id="description-long"
    ),
    pytest.param("/v1/keys", {"name": "d", "description": 1}, id="description-number"),
    pytest.param("/v1/dev/clock", {"seconds": 1.0}, id="seconds-float"),
    pytest.param("/v1/dev/clock", {"seconds": True}, id="seconds-bool"),
    pytest.param("/v1/dev/clock", {"seconds": 0}, id="seconds-zero"),
    pytest.param("/v1/dev/clock", {}, id="seconds-missing"),
]


def test_wrong_value_type_is_422_invalid_field(
    client: TestClient, key_k: int, subtests: pytest.Subtests
) -> None:
    """Floats, booleans or strings for integers and out-of-range values are 422."""
    for case in BAD_VALUES:
        path, body = case.values
        with subtests.test(msg=case.id):
            response = client.post(path, json=body)
            assert response.status_code != 500
            details = assert_error(response, 422, "INVALID_FIELD")
            assert details["fields"], details
            assert head_position(client) == key_k
    now = client.post("/v1/dev/clock", json={"seconds": 1}).json()["now"]
    assert now == "2026-03-01T12:00:01.000000Z", "refused clock moves must not move it"


# Version path parameters -------------------------------------------------------------

BAD_VERSIONS = [
    pytest.param("0", id="zero"),
    pytest.param("-1", id="negative"),
    pytest.param("abc", id="text"),
    pytest.param("2147483648", id="2^31"),
    pytest.param("99999999999999999999", id="huge"),
    pytest.param("1.5", id="decimal"),
    pytest.param("01", id="leading-zero"),
    pytest.param("+1", id="plus-sign"),
    pytest.param("1e3", id="exponent"),
    pytest.param("%20%31", id="space-padded"),
]

VERSION_ROUTES = [
    pytest.param("disable", {}, id="disable"),
    pytest.param("enable", {}, id="enable"),
    pytest.param("compromise", {"reason": "x"}, id="compromise"),
    pytest.param("schedule-destruction", {"days": 7}, id="schedule"),
    pytest.param("cancel-destruction", {}, id="cancel"),
]


def test_malformed_version_path_is_422_invalid_version(
    client: TestClient, key_k: int, subtests: pytest.Subtests
) -> None:
    """Versions other than plain digits 1..2^31-1 are 422 INVALID_VERSION."""
    for route in VERSION_ROUTES:
        action, body = route.values
        for version in BAD_VERSIONS:
            (text,) = version.values
            with subtests.test(msg=f"{route.id}-{version.id}"):
                response = client.post(
                    f"/v1/keys/k/versions/{text}/{action}", json=body
                )
                assert response.status_code != 500
                assert_error(response, 422, "INVALID_VERSION")
                assert head_position(client) == key_k


def test_well_formed_absent_version_is_404(client: TestClient, key_k: int) -> None:
    """A well-formed version the key does not have is 404 VERSION_NOT_FOUND."""
    response = client.post("/v1/keys/k/versions/999/disable")
    assert assert_error(response, 404, "VERSION_NOT_FOUND")["version"] == 999
    largest = client.post("/v1/keys/k/versions/2147483647/disable")
    assert_error(largest, 404, "VERSION_NOT_FOUND")
    assert head_position(client) == key_k


# Body size ------------------------------------------------------------


def _padded_create(name: str, size: int) -> bytes:
    """A create body for ``name`` padded with JSON whitespace to ``size`` bytes."""
    core = json.dumps({"name": name}).encode()
    assert len(core) < size
    return core[:-1] + b" " * (size - len(core)) + b"}"


def _chunks(body: bytes, size: int = 4096) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_body_over_limit_is_413(client: TestClient, runtime: Runtime) -> None:
    """A body one byte over the limit is 413 PAYLOAD_TOO_LARGE and creates nothing."""
    limit = runtime.settings.max_body_bytes
    assert limit == 64 * 1024
    response = _raw(client, "/v1/keys", _padded_create("big", limit + 1), JSON)
    assert assert_error(response, 413, "PAYLOAD_TOO_LARGE")["limit"] == limit
    assert head_position(client) == 0


def test_chunked_body_over_limit_is_413(client: TestClient, runtime: Runtime) -> None:
    """A body sent chunked, without Content-Length, is cut off at the limit."""
    body = _padded_create("big", 2 * runtime.settings.max_body_bytes)
    response = client.post("/v1/keys", content=_chunks(body), headers=JSON)
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert head_position(client) == 0


def test_declared_length_over_limit_is_413_on_commands(
    client: TestClient, key_k: int
) -> None:
    """A command body over the limit is 413 before anything is parsed or recorded."""
    body = b'{"expected_version":2' + b" " * (64 * 1024) + b"}"
    response = _raw(client, "/v1/keys/k/rotate", body, JSON)
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert head_position(client) == key_k


def test_body_of_exactly_the_limit_is_accepted(
    client: TestClient, runtime: Runtime
) -> None:
    """Bodies of exactly the limit, sized or chunked, are not refused as too large."""
    limit = runtime.settings.max_body_bytes
    body = _padded_create("exact", limit)
    assert len(body) == limit
    response = _raw(client, "/v1/keys", body, JSON)
    assert response.status_code == 201, response.text
    chunked = _padded_create("exact-chunked", limit)
    response = client.post("/v1/keys", content=_chunks(chunked), headers=JSON)
    assert response.status_code == 201, response.text
    assert get_key(client, "exact-chunked")["name"] == "exact-chunked"


# Known server errors on hostile JSON ----------------------------------------


def test_deeply_nested_json_is_refused_not_500(client: TestClient, key_k: int) -> None:
    """A body of 30,000 nested arrays (under the limit) is a client error."""
    body = b'{"name":' + b"[" * 30000 + b"]" * 30000 + b"}"
    response = _raw(client, "/v1/keys", body, JSON)
    assert response.status_code in (400, 422), response.text
    assert head_position(client) == key_k


def test_huge_integer_literal_is_refused_not_500(
    client: TestClient, key_k: int
) -> None:
    """A 5,000-digit integer for expected_version is a client error, not a 500."""
    body = b'{"expected_version":' + b"1" * 5000 + b"}"
    response = _raw(client, "/v1/keys/k/rotate", body, JSON)
    assert response.status_code in (400, 422), response.text
    assert head_position(client) == key_k


def test_empty_body_counts_as_empty_object(client: TestClient, key_k: int) -> None:
    """A command with no body at all runs with its defaults."""
    response = client.post("/v1/keys/k/rotate")
    assert response.status_code == 200, response.text
    assert response.json()["key"]["primary_version"] == 3


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/v1/keys", {"name": "n1", "description": "a\u0000b"}, id="NUL"),
        pytest.param("/v1/keys", {"name": "n1", "description": "bell\u0007"}, id="BEL"),
        pytest.param(
            "/v1/keys/k/versions/1/compromise", {"reason": "x\u0000"}, id="NUL reason"
        ),
        pytest.param(
            "/v1/keys/k/versions/1/compromise", {"reason": "  "}, id="blank reason"
        ),
        pytest.param("/v1/keys", {"name": "n1", "description": "\u009b31m"}, id="CSI"),
        pytest.param("/v1/keys", {"name": "n1", "description": "a\u0080"}, id="PAD"),
        pytest.param("/v1/keys", {"name": "n1", "description": "a\u0085b"}, id="NEL"),
        pytest.param("/v1/keys", {"name": "n1", "description": "\u009f"}, id="APC"),
        pytest.param(
            "/v1/keys/k/versions/1/compromise", {"reason": "x\u009b"}, id="C1 reason"
        ),
    ],
)
def test_control_characters_in_text_are_422_on_every_store(
    client: TestClient, key_k: int, path: str, body: dict[str, str]
) -> None:
    """Free text with control characters is refused alike on SQLite and PostgreSQL."""
    before = client.get("/v1/ledger/head").json()["head"]["position"]

    response = client.post(path, json=body)

    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "INVALID_TEXT"
    assert client.get("/v1/ledger/head").json()["head"]["position"] == before


PRINCIPAL_TEXT = [
    pytest.param(
        "/v1/principals",
        {"name": "carol", "roles": ["auditor"], "description": "x\u009by"},
        id="principal-description",
    ),
    pytest.param(
        "/v1/principals",
        {"name": "carol", "roles": ["auditor"], "description": "x\u0007"},
        id="principal-description-C0",
    ),
    pytest.param("/v1/principals/bob/tokens", {"label": "\u0090"}, id="token-label"),
    pytest.param("/v1/tokens/{token}/revoke", {"reason": "lost\u009b"}, id="revoke"),
]


@pytest.mark.parametrize(("path", "body"), PRINCIPAL_TEXT)
def test_control_characters_in_principal_text_are_422(
    client: TestClient, runtime: Runtime, path: str, body: dict[str, Any]
) -> None:
    """Principal descriptions, token labels and revocation reasons refuse C0 and C1."""
    made = client.post("/v1/principals", json={"name": "bob", "roles": ["auditor"]})
    assert made.status_code == 201, made.text
    issued = client.post("/v1/principals/bob/tokens", json={})
    assert issued.status_code == 201, issued.text
    before = client.get("/v1/ledger/head").json()["head"]["position"]
    bob = client.get("/v1/principals/bob").json()

    response = client.post(path.format(token=issued.json()["token_id"]), json=body)

    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "INVALID_TEXT"
    assert client.get("/v1/ledger/head").json()["head"]["position"] == before
    assert client.get("/v1/principals/bob").json() == bob
    assert client.get("/v1/principals/carol").status_code == 404


def test_text_with_line_breaks_and_unicode_is_kept(client: TestClient) -> None:
    """Tabs, line breaks and any Unicode letters are ordinary text."""
    description = "für\tZahlungen\nлиния 2 — 🔑"
    response = client.post("/v1/keys", json={"name": "u1", "description": description})
    assert response.status_code == 201, response.text
    assert client.get("/v1/keys/u1").json()["description"] == description


@pytest.mark.parametrize("param", ["after", "prefix", "algorithm"])
def test_nul_in_list_filters_is_422(client: TestClient, param: str) -> None:
    """A NUL byte in a list filter is a 422, never a 500."""
    response = client.get("/v1/keys", params={param: "a\u0000"})
    assert response.status_code == 422, response.text
