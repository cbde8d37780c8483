"""Backups through the API: take, list, status, verify, prune, with every refusal.

Two directory targets in two locations stand in for two data centres. Every
refusal checks that the ledger head and the backup status did not move.
"""

from __future__ import annotations

import os
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.runtime import Runtime
from tests.api._support import assert_error, create, head_position, post_ok


def configure_targets(client: TestClient, root: Path) -> dict[str, Path]:
    """Two dir targets, ``dc1`` and ``dc2``, in two locations; their folders."""
    folders = {}
    for name in ("dc1", "dc2"):
        folder = root / name
        folder.mkdir(parents=True)
        response = client.put(
            f"/v1/backup-targets/{name}",
            json={
                "kind": "dir",
                "location": f"site-{name}",
                "options": {"path": str(folder), "prefix": "keys"},
            },
        )
        assert response.status_code == 200, response.text
        folders[name] = folder / "keys"
    return folders


@pytest.fixture
def folders(client: TestClient, tmp_path: Path) -> dict[str, Path]:
    return configure_targets(client, tmp_path / "targets")


def take(client: TestClient, name: str, **body: Any) -> dict[str, Any]:
    response = client.post(f"/v1/keys/{name}/backups", json=body)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def status_of(client: TestClient, name: str) -> dict[str, Any]:
    response = client.get(f"/v1/keys/{name}/backups")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def assert_unchanged(
    client: TestClient, name: str, send: Any, status: int, code: str
) -> dict[str, Any]:
    """A refused request leaves the head and the key's backup status as they were."""
    before = (head_position(client), status_of(client, name))
    details = assert_error(send(), status, code)
    assert (head_position(client), status_of(client, name)) == before
    return details


def test_backup_writes_whole_read_only_copies_to_both_locations(
    client: TestClient, folders: dict[str, Path]
) -> None:
    """A backup lands once in each target, named by its digest, read-only."""
    create(client, "k1")
    post_ok(client, "/v1/keys/k1/rotate")

    result = take(client, "k1")

    backup = result["backup"]
    assert backup["digest"].startswith("sha256:")
    assert [c["location"] for c in backup["copies"]] == ["site-dc1", "site-dc2"]
    assert result["failures"] == []
    assert [v["version"] for v in backup["versions"]] == [1, 2]
    for folder in folders.values():
        path = folder / backup["copies"][0]["object"]
        assert path.read_bytes().startswith(b'{"body":')
        assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
        for written in (path, path.with_name(path.name + ".retain")):
            assert stat.S_IMODE(written.stat().st_mode) == 0o400
        assert not list(folder.glob(".partial-*"))
    types = [r["type"] for r in result["receipts"]]
    assert types == [
        "keyledger.backup.Opened",
        "keyledger.backup.Started",
        "keyledger.backup.BackupTaken",
    ]


def test_backup_does_not_move_the_key_stream(
    client: TestClient, folders: dict[str, Path]
) -> None:
    """Taking a backup leaves the key's stream version, so expected_version holds."""
    create(client, "k1")
    take(client, "k1")
    post_ok(client, "/v1/keys/k1/rotate", {"expected_version": 1})


def test_status_goes_from_due_to_unverified_to_ok_then_due_and_overdue(
    client: TestClient, runtime: Runtime, folders: dict[str, Path]
) -> None:
    """The status follows backups, verification and the passing of time."""
    create(client, "k1")
    assert status_of(client, "k1")["status"] == "due"
    backup_id = take(client, "k1")["backup_id"]
    assert status_of(client, "k1")["status"] == "unverified"

    verified = post_ok(client, f"/v1/backups/{backup_id}/verify")["backup"]

    assert verified["verified_ok"] is True
    assert {r["code"] for r in verified["verification"]} == {"OK"}
    status = status_of(client, "k1")
    assert status["status"] == "ok"
    assert status["copies_by_location"] == {"site-dc1": 1, "site-dc2": 1}
    assert status["last_successful_verification_at"] == verified["verified_at"]
    runtime.clock.advance(timedelta(hours=25))  # type: ignore[attr-defined]
    assert status_of(client, "k1")["status"] == "due"
    runtime.clock.advance(timedelta(hours=24))  # type: ignore[attr-defined]
    assert status_of(client, "k1")["status"] == "overdue"


def test_backup_status_is_paged_and_filtered(
    client: TestClient, folders: dict[str, Path]
) -> None:
    """GET /v1/backup-status pages in name order and filters by status."""
    for name in ("a1", "a2", "a3"):
        create(client, name)
    take(client, "a2")

    page = client.get("/v1/backup-status", params={"limit": 2}).json()
    assert [item["key"] for item in page["keys"]] == ["a1", "a2"]
    rest = client.get("/v1/backup-status", params={"after": page["next_cursor"]}).json()
    assert [item["key"] for item in rest["keys"]] == ["a3"]
    due = client.get("/v1/backup-status", params={"status": "due"}).json()
    assert [item["key"] for item in due["keys"]] == ["a1", "a3"]
    bad = client.get("/v1/backup-status", params={"status": "fine"})
    assert_error(bad, 422, "INVALID_FIELD")


def test_a_deleted_copy_fails_verification_and_puts_the_key_at_risk(
    client: TestClient, folders: dict[str, Path]
) -> None:
    """A copy removed from a target is a recorded failure; the other copy counts."""
    create(client, "k1")
    result = take(client, "k1")
    (folders["dc2"] / result["backup"]["copies"][1]["object"]).unlink()

    verified = post_ok(client, f"/v1/backups/{result['backup_id']}/verify")["backup"]

    codes = {r["target"]: r["code"] for r in verified["verification"]}
    assert codes == {"dc1": "OK", "dc2": "MISSING"}
    status = status_of(client, "k1")
    assert status["status"] == "verification_failed"
    assert status["copies_by_location"] == {"site-dc1": 1}


def test_a_changed_copy_fails_verification(
    client: TestClient, folders: dict[str, Path]
) -> None:
    """One byte changed in a stored copy is caught by verification."""
    create(client, "k1")
    result = take(client, "k1")
    path = folders["dc1"] / result["backup"]["copies"][0]["object"]
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    verified = post_ok(client, f"/v1/backups/{result['backup_id']}/verify")["backup"]

    codes = {r["target"]: r["code"] for r in verified["verification"]}
    assert codes == {"dc1": "DIGEST_MISMATCH", "dc2": "OK"}


def test_a_read_only_target_is_a_recorded_copy_failure(
    client: TestClient, folders: dict[str, Path]
) -> None:
    """A read-only target makes its copy fail; the other is whole and counts."""
    create(client, "k1")
    folders["dc2"].mkdir()
    os.chmod(folders["dc2"], 0o555)

    result = take(client, "k1")

    assert [c["target"] for c in result["backup"]["copies"]] == ["dc1"]
    assert [(f["target"], f["code"]) for f in result["failures"]] == [
        ("dc2", "READ_ONLY")
    ]
    assert "keyledger.backup.CopyFailed" in [r["type"] for r in result["receipts"]]
    assert status_of(client, "k1")["status"] == "at_risk"
    assert list(folders["dc2"].iterdir()) == []


def test_every_target_gone_is_a_recorded_failed_backup(
    client: TestClient, folders: dict[str, Path]
) -> None:
    """With both target folders removed the backup fails (502), recorded as such."""
    create(client, "k1")
    for folder in folders.values():
        folder.parent.rename(folder.parent.with_name(folder.parent.name + "-gone"))
    before = head_position(client)

    details = assert_error(
        client.post("/v1/keys/k1/backups", json={}), 502, "BACKUP_FAILED"
    )

    assert {f["code"] for f in details["failures"]} == {"UNREACHABLE"}
    assert head_position(client) == before + 3  # Opened, Started, BackupFailed
    status = status_of(client, "k1")
    assert status["status"] == "due"
    assert status["last_failure"]["backup_id"] == details["backup_id"]


def test_a_crash_while_writing_copies_claims_no_copy(
    client: TestClient,
    runtime: Runtime,
    folders: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process dying mid-write leaves no object under its name and no BackupTaken."""
    from backup.targets import DirTarget

    create(client, "k1")
    real = DirTarget._write_new
    calls = []

    def dying(path: Path, data: bytes) -> None:
        calls.append(path)
        if len(calls) == 3:  # the second target's object
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, data[: len(data) // 2])
            os.close(fd)
            raise SystemExit("killed")
        real(path, data)

    monkeypatch.setattr(DirTarget, "_write_new", staticmethod(dying))
    with pytest.raises(SystemExit):
        runtime.backups.take_backup(_context(), "k1")
    monkeypatch.undo()

    assert list(folders["dc2"].iterdir()) == []
    assert status_of(client, "k1")["backups"] == []
    events = client.get("/v1/events", params={"limit": 100}).json()["events"]
    assert "keyledger.backup.BackupTaken" not in [e["type"] for e in events]


def _context() -> Any:
    from ledger.service import CommandContext
    from tests.conftest import ADMIN

    return CommandContext(ADMIN, "req-crash")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        pytest.param({"targets": ["nope"]}, 422, "UNKNOWN_TARGET", id="unknown target"),
        pytest.param(
            {"retain_until": "2020-01-01T00:00:00Z"},
            422,
            "RETENTION_IN_PAST",
            id="retention in the past",
        ),
        pytest.param({"copies": 2}, 422, "UNKNOWN_FIELD", id="unknown field"),
    ],
)
def test_bad_backup_requests_are_refused_and_record_nothing(
    client: TestClient,
    folders: dict[str, Path],
    body: dict[str, Any],
    status: int,
    code: str,
) -> None:
    """Each bad request is refused with its code, and nothing moves."""
    create(client, "k1")
    assert_unchanged(
        client,
        "k1",
        lambda: client.post("/v1/keys/k1/backups", json=body),
        status,
        code,
    )


def test_backup_without_targets_is_refused(client: TestClient) -> None:
    """With no target configured a backup is refused (409) and nothing is recorded."""
    create(client, "k1")
    assert_unchanged(
        client,
        "k1",
        lambda: client.post("/v1/keys/k1/backups", json={}),
        409,
        "NO_BACKUP_TARGETS",
    )


def test_backup_of_unknown_key_or_backup_is_404(
    client: TestClient, folders: dict[str, Path]
) -> None:
    """Unknown keys and backup ids are 404; malformed backup ids are 422."""
    assert_error(client.post("/v1/keys/nope/backups", json={}), 404, "KEY_NOT_FOUND")
    assert_error(
        client.post(f"/v1/backups/bkp_{'0' * 24}/verify"), 404, "BACKUP_NOT_FOUND"
    )
    assert_error(client.get("/v1/backups/bkp_x"), 422, "INVALID_BACKUP_ID")


def test_prune_is_refused_before_the_retention_date_and_recorded_after(
    client: TestClient, runtime: Runtime, folders: dict[str, Path]
) -> None:
    """No copy is deleted before its retention date; after it, pruning is an event."""
    create(client, "k1")
    result = take(client, "k1", retain_until="2026-03-02T12:00:00Z")
    backup_id, name = result["backup_id"], result["backup"]["copies"][0]["object"]
    assert_unchanged(
        client,
        "k1",
        lambda: client.post(f"/v1/backups/{backup_id}/prune", json={"target": "dc1"}),
        409,
        "RETAINED",
    )
    assert (folders["dc1"] / name).exists()
    runtime.clock.advance(timedelta(days=2))  # type: ignore[attr-defined]

    pruned = post_ok(client, f"/v1/backups/{backup_id}/prune", {"target": "dc1"})

    assert [r["type"] for r in pruned["receipts"]] == ["keyledger.backup.ObjectPruned"]
    assert not (folders["dc1"] / name).exists()
    assert status_of(client, "k1")["copies_by_location"] == {"site-dc2": 1}


def test_destroyed_versions_list_the_backups_that_still_hold_them(
    client: TestClient, runtime: Runtime, folders: dict[str, Path]
) -> None:
    """A destroyed version lists the immutable backups still holding it, until when."""
    create(client, "k1")
    post_ok(client, "/v1/keys/k1/rotate")
    backup = take(client, "k1")
    post_ok(client, "/v1/keys/k1/versions/1/schedule-destruction", {"days": 7})
    runtime.clock.advance(timedelta(days=7))  # type: ignore[attr-defined]
    post_ok(client, "/v1/scheduler/run")

    held = status_of(client, "k1")["destroyed_versions_held"]

    assert held == [
        {
            "version": 1,
            "backups": [
                {
                    "backup_id": backup["backup_id"],
                    "retain_until": backup["backup"]["retain_until"],
                    "copies": backup["backup"]["copies"],
                }
            ],
        }
    ]
    later = take(client, "k1")
    versions = {v["version"]: v for v in later["backup"]["versions"]}
    assert versions[1] == {"version": 1, "state": "destroyed", "material": False}


def test_a_full_target_is_a_recorded_copy_failure(
    client: TestClient,
    runtime: Runtime,
    folders: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A target whose disk is full fails its copy as FULL; nothing partial is left."""
    import errno

    from backup.targets import DirTarget

    create(client, "k1")
    real = DirTarget._write_new

    def full_on_dc2(path: Path, data: bytes) -> None:
        if "dc2" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(DirTarget, "_write_new", staticmethod(full_on_dc2))

    result = take(client, "k1")

    assert [(f["target"], f["code"]) for f in result["failures"]] == [("dc2", "FULL")]
    assert [c["target"] for c in result["backup"]["copies"]] == ["dc1"]
    assert list(folders["dc2"].iterdir()) == []


def test_unreadable_material_fails_the_backup_and_releases_its_claim(
    client: TestClient, runtime: Runtime, folders: dict[str, Path]
) -> None:
    """Material the KEK cannot open fails the backup (recorded); no claim is left."""
    create(client, "k1")
    runtime.service.ledger.execute(
        [("UPDATE key_material SET wrapped = %s", ("AAAAAAAAAAAAAAAAAAAAAAAA",))]
    )

    for _ in range(2):  # the second attempt is not blocked by the first one's claim
        assert_error(
            client.post("/v1/keys/k1/backups", json={}), 500, "MATERIAL_UNREADABLE"
        )

    status = status_of(client, "k1")
    assert status["last_failure"]["failures"][0]["code"] == "MATERIAL_UNREADABLE"
    assert all(
        not list(folder.iterdir()) for folder in folders.values() if folder.exists()
    )


def test_last_successful_verification_outlives_a_newer_unverified_backup(
    client: TestClient, runtime: Runtime, folders: dict[str, Path]
) -> None:
    """A newer backup is unverified, but the last good verification is still shown."""
    create(client, "k1")
    first = take(client, "k1")
    verified = post_ok(client, f"/v1/backups/{first['backup_id']}/verify")["backup"]
    runtime.clock.advance(timedelta(hours=1))  # type: ignore[attr-defined]
    take(client, "k1")

    status = status_of(client, "k1")

    assert status["status"] == "unverified"
    assert status["last_successful_verification_at"] == verified["verified_at"]
    assert [b["backup_id"] for b in status["backups"]][1] == first["backup_id"]


def test_c04_a_backup_after_a_trim_holds_3_to_5_and_says_1_and_2_were_trimmed(
    client: TestClient, folders: dict[str, Path]
) -> None:
    """C04 step 4: the bundle and the manifest list versions 3 to 5 only, and the
    manifest names 1 and 2 as trimmed; a copy restored from it has 3 to 5."""
    import json

    create(client, "k4")
    for _ in range(4):
        post_ok(client, "/v1/keys/k4/rotate")
    post_ok(client, "/v1/keys/k4/config", {"min_decryption_version": 3})
    post_ok(client, "/v1/keys/k4/trim", {"min_available_version": 3})

    result = take(client, "k4")

    manifest = client.get(f"/v1/backups/{result['backup_id']}").json()
    for record in (result["backup"], manifest):
        assert [v["version"] for v in record["versions"]] == [3, 4, 5]
        assert record["trimmed"] == [1, 2]
    path = folders["dc1"] / result["backup"]["copies"][0]["object"]
    body = json.loads(path.read_bytes())["body"]
    assert [v["version"] for v in body["versions"]] == [3, 4, 5]
    assert body["key"]["min_available_version"] == 3
    restored = client.post(
        "/v1/keys/k4/restore", json={"backup_id": result["backup_id"], "into": "k4b"}
    )
    assert restored.status_code == 200, restored.text
    copy = client.get("/v1/keys/k4b").json()
    assert [v["version"] for v in copy["versions"]] == [3, 4, 5]
    untrimmed = take(client, "k4b")["backup"]
    assert untrimmed["trimmed"] == [1, 2]


def test_a_backup_to_named_targets_writes_only_there(
    client: TestClient, folders: dict[str, Path]
) -> None:
    """``targets`` picks the targets; the others get nothing, and the status
    counts only what was written (one copy where the policy asks for two)."""
    create(client, "k1")

    result = take(client, "k1", targets=["dc2"])

    assert [c["target"] for c in result["backup"]["copies"]] == ["dc2"]
    assert result["failures"] == []
    assert not folders["dc1"].exists() or list(folders["dc1"].iterdir()) == []
    assert (folders["dc2"] / result["backup"]["copies"][0]["object"]).exists()
    status = status_of(client, "k1")
    assert status["copies_by_location"] == {"site-dc2": 1}
    assert status["status"] == "at_risk"


def test_each_object_is_named_by_its_content_digest(
    client: TestClient, folders: dict[str, Path]
) -> None:
    """Every copy's object name is the SHA-256 of its bytes, as recorded."""
    import hashlib

    create(client, "k1")
    backup = take(client, "k1")["backup"]

    for copy in backup["copies"]:
        data = (folders[copy["target"]] / copy["object"]).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        assert copy["object"] == f"{digest}.klbackup"
        assert backup["digest"] == f"sha256:{digest}"
        assert backup["size"] == len(data)


def test_copies_in_one_location_leave_the_key_at_risk(
    client: TestClient, tmp_path: Path
) -> None:
    """Two whole copies in one place are at_risk when two places are asked for."""
    for name in ("a1", "a2"):
        (tmp_path / name).mkdir()
        response = client.put(
            f"/v1/backup-targets/{name}",
            json={
                "kind": "dir",
                "location": "one-site",
                "options": {"path": str(tmp_path / name)},
            },
        )
        assert response.status_code == 200, response.text
    create(client, "k1")

    result = take(client, "k1")

    assert len(result["backup"]["copies"]) == 2
    status = status_of(client, "k1")
    assert status["copies_by_location"] == {"one-site": 2}
    assert status["status"] == "at_risk"
    post_ok(client, "/v1/keys/k1/backup-policy", {"copies": 2, "locations": 1})
    assert status_of(client, "k1")["status"] == "unverified"


def test_a_target_never_replaces_an_object_it_holds(
    client: TestClient,
    runtime: Runtime,
    folders: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Other bytes under the object's name on dc2 fail that copy as OBJECT_EXISTS
    (recorded); the object there is not altered, and dc1's copy counts."""
    from backup import service as backup_service
    from backup.bundle import build_bundle
    from backup.targets import object_name

    create(client, "k1")
    bundle = build_bundle(
        runtime.service,
        "k1",
        backup_key=runtime.backups.backup_key,
        backup_id="bkp_" + "2" * 24,
    )
    folders["dc2"].mkdir()
    planted = folders["dc2"] / object_name(bundle.digest)
    planted.write_bytes(b"another object")
    os.chmod(planted, 0o444)
    before = sorted(p.name for p in folders["dc2"].iterdir())
    monkeypatch.setattr(backup_service, "build_bundle", lambda *a, **k: bundle)

    result = take(client, "k1")

    assert [(f["target"], f["code"]) for f in result["failures"]] == [
        ("dc2", "OBJECT_EXISTS")
    ]
    assert [c["target"] for c in result["backup"]["copies"]] == ["dc1"]
    assert "keyledger.backup.CopyFailed" in [r["type"] for r in result["receipts"]]
    assert planted.read_bytes() == b"another object"
    assert stat.S_IMODE(planted.stat().st_mode) == 0o444
    assert sorted(p.name for p in folders["dc2"].iterdir()) == before
    assert (folders["dc1"] / planted.name).read_bytes() == bundle.data


def test_a_prune_the_target_refuses_is_recorded_and_answered_502(
    client: TestClient, runtime: Runtime, folders: dict[str, Path]
) -> None:
    """A read-only target keeps the copy: 502 ``PRUNE_FAILED``, the prune and its
    failure on the ledger, and the copy no longer counted."""
    create(client, "k1")
    result = take(client, "k1", retain_until="2026-03-02T12:00:00Z")
    backup_id, name = result["backup_id"], result["backup"]["copies"][0]["object"]
    runtime.clock.advance(timedelta(days=2))  # type: ignore[attr-defined]
    folders["dc1"].chmod(0o555)
    try:
        details = assert_error(
            client.post(f"/v1/backups/{backup_id}/prune", json={"target": "dc1"}),
            502,
            "PRUNE_FAILED",
        )
    finally:
        folders["dc1"].chmod(0o755)

    assert details["failure"]["code"] == "READ_ONLY"
    assert details["position"] == head_position(client)
    assert (folders["dc1"] / name).exists()
    backup = client.get(f"/v1/backups/{backup_id}").json()
    assert backup["pruned"] == ["dc1"]
    assert [f["code"] for f in backup["prune_failures"]] == ["READ_ONLY"]
    assert status_of(client, "k1")["copies_by_location"] == {"site-dc2": 1}


def _targets(client: TestClient) -> Any:
    response = client.get("/v1/backup-targets")
    assert response.status_code == 200, response.text
    return response.json()["targets"]


@pytest.mark.parametrize(
    ("options", "code"),
    [
        pytest.param(
            {"path": "targets/dc3"}, "TARGET_PATH_NOT_ABSOLUTE", id="relative"
        ),
        pytest.param(
            {"path": "{root}/absent"}, "TARGET_PATH_NOT_A_DIRECTORY", id="absent"
        ),
        pytest.param(
            {"path": "/etc/passwd"}, "TARGET_PATH_NOT_A_DIRECTORY", id="a file"
        ),
        pytest.param({"path": "{root}\x00"}, "TARGET_PATH_NOT_A_DIRECTORY", id="NUL"),
        pytest.param({"prefix": "../../escape"}, "INVALID_TARGET_PREFIX", id="dot-dot"),
        pytest.param({"prefix": "/tmp/escape"}, "INVALID_TARGET_PREFIX", id="absolute"),
        pytest.param({"prefix": "a\\b"}, "INVALID_TARGET_PREFIX", id="backslash"),
        pytest.param({"prefix": "keys/more"}, "INVALID_TARGET_PREFIX", id="two levels"),
        pytest.param({"prefix": ".hidden"}, "INVALID_TARGET_PREFIX", id="dot first"),
        pytest.param({"prefix": "a..b"}, "INVALID_TARGET_PREFIX", id="inner dot-dot"),
        pytest.param({"prefix": "k" * 65}, "INVALID_TARGET_PREFIX", id="too long"),
        pytest.param({"prefix": "ключ"}, "INVALID_TARGET_PREFIX", id="not ASCII"),
        pytest.param({"bogus": "x"}, "INVALID_TARGET", id="unknown option"),
    ],
)
def test_a_dir_target_that_cannot_be_right_is_refused_at_configuration(
    client: TestClient,
    folders: dict[str, Path],
    tmp_path: Path,
    options: dict[str, str],
    code: str,
) -> None:
    """A bad path or prefix is 422 with its code; nothing is recorded or written."""
    root = tmp_path / "dc3"
    root.mkdir()
    body = {"path": str(root), **options}
    body["path"] = body["path"].replace("{root}", str(root))
    before = (_targets(client), head_position(client))
    listing = sorted(tmp_path.rglob("*"))

    response = client.put(
        "/v1/backup-targets/dc3",
        json={"kind": "dir", "location": "site-3", "options": body},
    )

    details = assert_error(response, 422, code)
    assert details["target"] == "dc3"
    assert (_targets(client), head_position(client)) == before
    assert sorted(tmp_path.rglob("*")) == listing


def test_changing_a_dir_target_is_checked_but_a_recorded_one_is_left_alone(
    client: TestClient, folders: dict[str, Path]
) -> None:
    """A target recorded as it is answers 200 even while its folder is away; a
    change to a folder that is not there is 422."""
    config = client.get("/v1/backup-targets").json()["targets"][0]
    root = folders["dc1"].parent
    root.rename(root.with_name("dc1-away"))
    body = {k: config[k] for k in ("kind", "location", "options")}

    again = client.put("/v1/backup-targets/dc1", json=body)

    assert again.status_code == 200, again.text
    assert again.json()["receipts"] == []
    moved = {**body, "options": {**body["options"], "path": str(root / "elsewhere")}}
    assert_error(
        client.put("/v1/backup-targets/dc1", json=moved),
        422,
        "TARGET_PATH_NOT_A_DIRECTORY",
    )
    assert client.get("/v1/backup-targets").json()["targets"][0] == config
