"""Case C18: a key with thousands of versions stays usable.

Reads are paged with cursors and capped, the history is complete and in order,
the read side rebuilds equal, and the key still backs up and verifies.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient

from domain.clock import AdjustableClock, format_time
from ledger.service import CommandContext, KeyService
from projections.rebuild import rebuild
from tests.api._support import all_history, assert_error, post_ok
from tests.api.test_backups import configure_targets
from tests.conftest import ADMIN

ROTATIONS = 5_000


def _rotate_many(service: KeyService, clock: AdjustableClock, name: str) -> str:
    """Rotate ``name`` ROTATIONS times, one second apart; return the middle's time."""
    middle = ""
    for turn in range(ROTATIONS):
        clock.advance(timedelta(seconds=1))
        service.rotate(CommandContext(ADMIN, f"rot-{uuid.uuid4().hex}"), name)
        if turn == ROTATIONS // 2 - 1:
            middle = format_time(clock.now())
    return middle


def test_c18_a_key_of_five_thousand_versions_pages_rebuilds_and_backs_up(
    client: TestClient,
    service: KeyService,
    clock: AdjustableClock,
    ctx: CommandContext,
    tmp_path: Path,
) -> None:
    service.create_key(ctx, name="k18")
    middle = _rotate_many(service, clock, "k18")
    versions = ROTATIONS + 1

    first = client.get("/v1/keys/k18")
    assert first.status_code == 200, first.text
    page = first.json()
    assert page["primary_version"] == versions
    assert [v["version"] for v in page["versions"]] == list(range(1, 101))
    assert page["next_versions_cursor"] == 100

    too_big = client.get("/v1/keys/k18", params={"versions_limit": 100_000})
    details = assert_error(too_big, 422, "INVALID_FIELD")
    assert details["fields"][0]["field"] == "query.versions_limit"

    seen: list[int] = []
    after: int | None = 0
    while after is not None:
        response = client.get(
            "/v1/keys/k18", params={"versions_after": after, "versions_limit": 1000}
        )
        assert response.status_code == 200, response.text
        seen += [v["version"] for v in response.json()["versions"]]
        after = response.json()["next_versions_cursor"]
    assert seen == list(range(1, versions + 1))

    history = all_history(client, "k18")
    assert [e["stream_version"] for e in history] == list(range(1, versions + 1))
    assert len({e["hash"] for e in history}) == versions

    halfway = client.get("/v1/keys/k18", params={"at": middle, "versions_limit": 1})
    assert halfway.status_code == 200, halfway.text
    assert halfway.json()["primary_version"] == ROTATIONS // 2 + 1

    assert rebuild(service.app, apply=False).matched_live

    configure_targets(client, tmp_path / "targets")
    taken = client.post("/v1/keys/k18/backups", json={})
    assert taken.status_code == 201, taken.text
    backup_id = taken.json()["backup_id"]
    verified = post_ok(client, f"/v1/backups/{backup_id}/verify")["backup"]
    assert verified["verified_ok"] is True
    assert {r["code"] for r in verified["verification"]} == {"OK"}
    assert client.get("/v1/keys/k18/backups").json()["status"] == "ok"
