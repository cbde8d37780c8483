"""Case C16: event types change between releases; stored history never does.

Event types are named by fixed ``TOPIC`` strings, not by class paths, so moving
or renaming a class cannot orphan what is stored. A changed shape is read through
an upcaster while the stored bytes, their hashes and signatures stay as written.
An event type this release does not know stops whatever would read past it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.utils import _topic_cache
from fastapi.testclient import TestClient

from api.main import create_app
from api.runtime import Runtime, build_runtime, token_digest
from backup.key import BackupKey
from backup.service import BackupService
from domain.backups import KeyBackups
from domain.errors import UnknownEventTypeError
from domain.keys import key_id_for
from domain.topics import known_topics
from ledger import offline
from ledger.application import LedgerTranscoder
from ledger.export import ExportScope, build_export
from ledger.service import CommandContext, KeyService
from ledger.settings import Settings
from ledger.store import LedgerWrite
from ledger.verify import verify_ledger
from projections import key_view
from projections.rebuild import RebuildError, rebuild
from tests.backup.conftest import add_dir_target
from tests.ledger.test_offline import unzip

BACKUP_TAKEN = KeyBackups.BackupTaken.TOPIC


def _event_classes() -> Iterator[tuple[str, type]]:
    import domain.topics as topics

    known_topics()  # imports every domain module
    for aggregate in topics._subclasses(Aggregate):
        if aggregate.__module__.startswith("domain."):
            for name in dir(aggregate):
                item = getattr(aggregate, name)
                if isinstance(getattr(item, "TOPIC", None), str):
                    yield item.TOPIC, item


def test_every_event_type_has_its_own_fixed_topic() -> None:
    """No two event classes share a topic, and none is named by a class path."""
    owners: dict[str, set[str]] = {}
    for topic, cls in _event_classes():
        owners.setdefault(topic, set()).add(cls.__qualname__.split(".")[-1])
    assert all(topic.startswith("keyledger.") for topic in owners)
    shared = {topic: names for topic, names in owners.items() if len(names) > 1}
    assert shared == {}
    assert set(owners) == known_topics()


@pytest.fixture
def old_release(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """While active, BackupTaken is written in its first shape, as release 1 did:
    no ``trimmed`` field, no class version."""
    encode = LedgerTranscoder.encode

    def first_shape(self: LedgerTranscoder, obj: Any) -> bytes:
        state = dict(obj)
        if state.get("class_version") == 2 and "trimmed" in state:
            del state["class_version"], state["trimmed"]
        return encode(self, state)

    monkeypatch.setattr(LedgerTranscoder, "encode", first_shape)
    yield
    monkeypatch.setattr(LedgerTranscoder, "encode", encode)


def _stored(service: KeyService, topic: str) -> list[dict[str, Any]]:
    return service.ledger.query(
        "SELECT notification_id, state, entry_hash FROM "
        f"{service.ledger.events_table_name} WHERE topic = %s ORDER BY notification_id",
        (topic,),
    )


def test_c16_events_of_an_older_shape_read_through_the_upcaster_unchanged(
    open_service: Any,
    ctx: CommandContext,
    tmp_path: Path,
    old_release: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given three backups written by the older release
    service: KeyService = open_service()
    backups = BackupService(service, BackupKey.load_or_create(tmp_path / "data"))
    add_dir_target(backups, ctx, tmp_path, "dc1")
    service.create_key(ctx, name="k16")
    for _ in range(3):
        backups.take_backup(ctx, "k16")
    written = _stored(service, BACKUP_TAKEN)
    assert len(written) == 3
    for row in written:
        payload = json.loads(bytes(row["state"]))["payload"]
        assert "trimmed" not in payload and "class_version" not in payload
    service.close()

    # when today's release opens the same ledger
    monkeypatch.undo()
    upgraded: KeyService = open_service()
    report = rebuild(upgraded.app)

    # then the read side rebuilds without a fault and shows the upcast view
    assert report.events == upgraded.head_position()
    upgraded_backups = BackupService(
        upgraded, BackupKey.load_or_create(tmp_path / "data")
    )
    listed = upgraded_backups.key_backups("k16", after=None, limit=10)["backups"]
    assert len(listed) == 3
    assert all(item["trimmed"] == [] for item in listed)
    # and the stored bytes, hashes and signatures are exactly as written
    assert _stored(upgraded, BACKUP_TAKEN) == written
    verified = verify_ledger(upgraded.ledger, upgraded.public_keys())
    assert verified.ok, verified.first_failure
    # and an export carries the original bytes, which still verify offline
    files = unzip(build_export(upgraded, ExportScope()).data)
    exported = {
        item["position"]: base64.b64decode(item["entry"])
        for item in map(json.loads, files[offline.ENTRIES_FILE].splitlines())
    }
    for row in written:
        assert exported[row["notification_id"]] == bytes(row["state"])
    assert offline.verify_export(files).ok


class Frob(Aggregate):
    """An aggregate of a newer release that this one has never heard of."""

    class Created(Aggregate.Created):
        TOPIC = "keyledger.frob.Created"


def _append_unknown_type(service: KeyService, ctx: CommandContext) -> int:
    service.app.save(Frob(), ledger=LedgerWrite(ctx.actor, ctx.request_id))
    # a process running today's code cannot resolve the newer release's topic
    _topic_cache.pop(Frob.Created.TOPIC, None)
    return service.head_position()


def test_c16_an_unknown_event_type_stops_rebuild_and_start(
    service: KeyService, ctx: CommandContext, tmp_path: Path, store_url: str
) -> None:
    service.create_key(ctx, name="known")
    position = _append_unknown_type(service, ctx)
    service.create_key(ctx, name="after")
    live = key_view.snapshot_tables(service.ledger)

    with pytest.raises(RebuildError) as raised:
        rebuild(service.app)

    assert (raised.value.position, raised.value.topic) == (
        position,
        "keyledger.frob.Created",
    )
    assert key_view.snapshot_tables(service.ledger) == live
    assert service.unknown_event_type() == (position, "keyledger.frob.Created")

    settings = Settings(data_dir=tmp_path / "data", database_url=store_url)
    with pytest.raises(UnknownEventTypeError) as refused:
        build_runtime(settings)
    assert refused.value.details == {
        "position": position,
        "topic": "keyledger.frob.Created",
    }


def test_c16_a_command_on_a_stream_with_an_unknown_event_is_refused(
    service: KeyService, ctx: CommandContext, tmp_path: Path
) -> None:
    """A newer release appended to a key's stream while this one was serving."""
    service.create_key(ctx, name="mixed")
    key = service.app.repository.get(key_id_for("mixed"))

    class Frobbed(type(key).Event):  # type: ignore[misc]
        TOPIC = "keyledger.key.Frobbed"

        def apply(self, aggregate: Any) -> None:
            pass

    key.trigger_event(Frobbed)
    service.app.save(key, ledger=LedgerWrite(ctx.actor, ctx.request_id))
    _topic_cache.pop("keyledger.key.Frobbed", None)
    head = service.head_position()

    runtime = Runtime(
        Settings(data_dir=tmp_path),
        service,
        service.clock,
        token_digest("t"),
        record_access=False,
    )
    with TestClient(create_app(runtime.settings, runtime=runtime)) as client:
        client.headers["Authorization"] = "Bearer t"
        response = client.post("/v1/keys/mixed/rotate")

    assert response.status_code == 500
    assert response.json()["error"]["code"] == "UNKNOWN_EVENT_TYPE"
    assert service.head_position() == head
