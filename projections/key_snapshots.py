"""Snapshots of keys every ``INTERVAL`` stream versions, for a key's past state.

The state of a key at a time or a position is the key replayed up to a stream
version. With these snapshots the replay starts from the nearest snapshot at or
below that version, so it applies fewer than ``INTERVAL`` events however long
the key's history is, instead of every event from the first.

Snapshots are written on the read path, while a past state is replayed, and
cost the write path nothing. They are a cache, never evidence: each names the
hash of the entry it stands for and a digest over its format, that hash and its
state. One whose entry no longer has that hash, whose format is not ``FORMAT``
(written by another release), whose digest does not match (damaged bytes) or
that does not decode is discarded: the key is replayed from its first event and
the snapshot rewritten on the way (case C17). Entries never change, so a
snapshot never goes stale otherwise.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from domain.clock import format_time, parse_time
from domain.keys import KeyVersion, ManagedKey

if TYPE_CHECKING:
    from ledger.store import Statement

DDL = [
    "CREATE TABLE IF NOT EXISTS key_snapshots ("
    "key_id TEXT NOT NULL, stream_version INTEGER NOT NULL, "
    "format INTEGER NOT NULL, entry_hash TEXT NOT NULL, state TEXT NOT NULL, "
    "digest TEXT NOT NULL, PRIMARY KEY (key_id, stream_version))",
]

INTERVAL = 200
FORMAT = 1
_TIME_FIELDS = frozenset({"_created_on", "_modified_on"})
_SKIPPED = frozenset({"_pending_events"})


class SnapshotFormatError(TypeError):
    """A key holds a value the snapshot format has no encoding for."""


def encode(key: ManagedKey) -> str:
    """The key's state as JSON.

    Raises:
        SnapshotFormatError: an attribute is of a type the format does not
            know; the caller then takes no snapshot rather than a wrong one.
    """
    state: dict[str, Any] = {}
    for name, value in vars(key).items():
        if name in _SKIPPED:
            continue
        if name == "_id":
            state[name] = str(value)
        elif name in _TIME_FIELDS:
            state[name] = format_time(value)
        elif name == "versions":
            state[name] = [record.fields() for record in value.values()]
        elif _plain(value):
            state[name] = value
        else:
            raise SnapshotFormatError(
                f"Key attribute {name!r} of type {type(value).__name__} has no "
                "snapshot encoding."
            )
    return json.dumps(state, separators=(",", ":"), sort_keys=True)


def decode(text: str) -> ManagedKey:
    """The key a snapshot's state describes, ready to apply later events to."""
    state = json.loads(text)
    key: ManagedKey = object.__new__(ManagedKey)
    for name, value in state.items():
        if name == "_id":
            value = uuid.UUID(value)
        elif name in _TIME_FIELDS:
            value = parse_time(value)
        elif name == "versions":
            value = {int(record["version"]): KeyVersion(**record) for record in value}
        setattr(key, name, value)
    key._pending_events = []
    return key


def snapshot_statement(key: ManagedKey, entry_hash: str) -> Statement:
    """Store ``key`` as it is at its current stream version, replacing any other."""
    state = encode(key)
    return (
        "INSERT INTO key_snapshots (key_id, stream_version, format, entry_hash, "
        "state, digest) VALUES (%s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (key_id, stream_version) DO UPDATE SET "
        "format = excluded.format, entry_hash = excluded.entry_hash, "
        "state = excluded.state, digest = excluded.digest",
        (
            str(key.id),
            key.version,
            FORMAT,
            entry_hash,
            state,
            digest_of(FORMAT, entry_hash, state),
        ),
    )


def digest_of(format: int, entry_hash: str, state: str) -> str:
    """What a snapshot row must carry for its state to be used."""
    text = f"keyledger/key-snapshot\n{format}\n{entry_hash}\n{state}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def usable(row: Mapping[str, Any], entry_hash: str | None) -> ManagedKey | None:
    """The key a snapshot row holds, or None when it must be discarded.

    ``entry_hash`` is the stored hash of the entry at the row's stream version.
    """
    if row["format"] != FORMAT or row["entry_hash"] != entry_hash:
        return None
    if row["digest"] != digest_of(row["format"], row["entry_hash"], row["state"]):
        return None
    try:
        return decode(row["state"])
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def due(version: int) -> bool:
    """Whether a key at this stream version should have a snapshot."""
    return version % INTERVAL == 0


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, str | bool | int | float):
        return True
    if isinstance(value, list):
        return all(_plain(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False
