"""Paging of the backup read side: a key's backups, and every key's status by status."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.runtime import Runtime
from tests.api._support import assert_error, create, post_ok
from tests.api.test_backups import configure_targets, take


@pytest.fixture
def folders(client: TestClient, tmp_path: Path) -> dict[str, Path]:
    return configure_targets(client, tmp_path / "targets")


def _get(client: TestClient, url: str, **params: Any) -> dict[str, Any]:
    response = client.get(url, params=params)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_a_keys_backups_page_newest_first_with_after_and_limit(
    client: TestClient, runtime: Runtime, folders: dict[str, Path]
) -> None:
    """Five backups come in pages of two, newest first, each once; the last page
    has no cursor; another key's backups never show; bad paging is 422."""
    create(client, "k1")
    create(client, "k2")
    taken = []
    for _ in range(5):
        taken.append(take(client, "k1")["backup_id"])
        take(client, "k2")
        runtime.clock.advance(timedelta(minutes=1))  # type: ignore[attr-defined]

    pages, after = [], None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if after is not None:
            params["after"] = after
        page = _get(client, "/v1/keys/k1/backups", **params)
        pages.append([b["backup_id"] for b in page["backups"]])
        after = page["next_cursor"]
        if after is None:
            break

    assert pages == [taken[4:2:-1], taken[2:0:-1], taken[:1]]
    whole = _get(client, "/v1/keys/k1/backups", limit=5)
    assert [b["backup_id"] for b in whole["backups"]] == taken[::-1]
    assert whole["next_cursor"] is None
    assert whole["last_backup"]["backup_id"] == taken[-1]
    for params in ({"limit": 0}, {"limit": 1001}, {"after": "no spaces here"}):
        response = client.get("/v1/keys/k1/backups", params=params)
        assert response.status_code == 422, params
        assert response.json()["error"]["code"]
    assert_error(client.get("/v1/keys/nope/backups"), 404, "KEY_NOT_FOUND")


def test_backup_status_pages_and_filters_by_status_together(
    client: TestClient, runtime: Runtime, folders: dict[str, Path]
) -> None:
    """With keys of mixed status, ``status`` and ``after``/``limit`` together give
    only that status, in name order, each key once, and every key is counted."""
    names = [f"key-{n:02d}" for n in range(7)]
    for name in names:
        create(client, name)
    ok = names[0::2]  # 00, 02, 04, 06: backed up and verified
    unverified = names[1::4]  # 01, 05: backed up, never verified
    for name in ok:
        post_ok(client, f"/v1/backups/{take(client, name)['backup_id']}/verify")
    for name in unverified:
        take(client, name)

    def walk(status: str, limit: int) -> list[list[str]]:
        pages, after = [], None
        while True:
            params: dict[str, Any] = {"status": status, "limit": limit}
            if after is not None:
                params["after"] = after
            page = _get(client, "/v1/backup-status", **params)
            assert {item["status"] for item in page["keys"]} <= {status}
            pages.append([item["key"] for item in page["keys"]])
            after = page["next_cursor"]
            if after is None:
                return pages

    assert walk("ok", 3) == [ok[:3], ok[3:]]
    assert walk("ok", 4) == [ok]
    assert walk("unverified", 1) == [[unverified[0]], [unverified[1]]]
    never = sorted(set(names) - set(ok) - set(unverified))
    everything = _get(client, "/v1/backup-status", limit=1000)["keys"]
    statuses = {item["key"]: item["status"] for item in everything}
    rest = statuses[never[0]]
    assert rest not in ("ok", "unverified")
    assert [item for page in walk(rest, 1) for item in page] == never
    assert walk("verification_failed", 2) == [[]]
    after_first = _get(
        client, "/v1/backup-status", status="ok", after=ok[0], limit=1000
    )
    assert [item["key"] for item in after_first["keys"]] == ok[1:]
    for params in ({"status": "fine"}, {"limit": 0}, {"after": "a b"}):
        response = client.get("/v1/backup-status", params=params)
        assert response.status_code == 422, params
