"""The current view of every key: a row per key and a row per version.

Each event rewrites the key's row and only the version rows it touched, so the
cost of recording an event does not grow with the number of versions a key has.
A key whose minimum versions differ from the defaults also has a ``key_config``
row, and a key with a rotation period a ``key_rotation`` row, each kept in a
table of its own so that ledgers created before it need no change to the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from domain.keys import ManagedKey

if TYPE_CHECKING:
    from ledger.store import LedgerRecorder, LedgerTransaction, Statement

DDL = [
    "CREATE TABLE IF NOT EXISTS key_view ("
    "name TEXT PRIMARY KEY, key_id TEXT NOT NULL, algorithm TEXT NOT NULL, "
    "description TEXT NOT NULL, state TEXT NOT NULL, "
    "primary_version INTEGER NOT NULL, primary_usable INTEGER NOT NULL, "
    "stream_version INTEGER NOT NULL, versions_count INTEGER NOT NULL, "
    "created_at TEXT NOT NULL, updated_at TEXT NOT NULL, "
    "last_position BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS key_versions ("
    "key_name TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL, "
    "fingerprint TEXT NOT NULL, created_at TEXT NOT NULL, "
    "compromised INTEGER NOT NULL, compromise_reason TEXT, scheduled_at TEXT, "
    "destroy_at TEXT, destroyed_at TEXT, PRIMARY KEY (key_name, version))",
    "CREATE INDEX IF NOT EXISTS key_versions_due_idx ON key_versions (destroy_at) "
    "WHERE state = 'destroy_scheduled'",
    "CREATE TABLE IF NOT EXISTS key_config ("
    "name TEXT PRIMARY KEY, min_decryption_version INTEGER NOT NULL, "
    "min_encryption_version INTEGER)",
    "CREATE TABLE IF NOT EXISTS key_rotation ("
    "name TEXT PRIMARY KEY, rotation_period_seconds BIGINT NOT NULL)",
]

TABLES = ("key_view", "key_versions")

_KEY_COLUMNS = (
    "name",
    "key_id",
    "algorithm",
    "description",
    "state",
    "primary_version",
    "primary_usable",
    "stream_version",
    "versions_count",
    "created_at",
    "updated_at",
    "last_position",
)
_CONFIG_COLUMNS = ("name", "min_decryption_version", "min_encryption_version")
_CONFIG_DEFAULTS = {"min_decryption_version": 1, "min_encryption_version": None}
_ROTATION_COLUMNS = ("name", "rotation_period_seconds")
_VERSION_COLUMNS = (
    "key_name",
    "version",
    "state",
    "fingerprint",
    "created_at",
    "compromised",
    "compromise_reason",
    "scheduled_at",
    "destroy_at",
    "destroyed_at",
)

_SELECT_KEY = (
    ", ".join(f"kv.{column}" for column in _KEY_COLUMNS)
    + ", kc.min_decryption_version, kc.min_encryption_version, "
    "kr.rotation_period_seconds "
    "FROM key_view kv LEFT JOIN key_config kc ON kc.name = kv.name "
    "LEFT JOIN key_rotation kr ON kr.name = kv.name"
)

# Which versions each event changes; key-level events change only the key row.
_TOUCHES: dict[type[Any], Callable[[Any], Iterable[int]]] = {
    ManagedKey.Generated: lambda event: [1],
    ManagedKey.Rotated: lambda event: [event.version],
    ManagedKey.VersionDisabled: lambda event: [event.version],
    ManagedKey.VersionEnabled: lambda event: [event.version],
    ManagedKey.MarkedCompromised: lambda event: [event.version],
    ManagedKey.DestructionScheduled: lambda event: [event.version],
    ManagedKey.DestructionCancelled: lambda event: [event.version],
    ManagedKey.VersionDestroyed: lambda event: [event.version],
    ManagedKey.RolledBack: lambda event: [int(v) for v in event.version_states],
    ManagedKey.Disabled: lambda event: [],
    ManagedKey.Enabled: lambda event: [],
    ManagedKey.PrimaryRolledBack: lambda event: [],
    ManagedKey.MinimumVersionsChanged: lambda event: [],
    ManagedKey.RotationPeriodChanged: lambda event: [],
    # Trimmed versions' rows are deleted, not rewritten: see ``removed_versions``.
    ManagedKey.VersionsTrimmed: lambda event: [],
    ManagedKey.Restored: lambda event: [
        int(item["version"]) for item in event.versions
    ],
    ManagedKey.RestoredInPlace: lambda event: [int(v) for v in event.version_states],
}


def touched_versions(events: Iterable[Any]) -> set[int]:
    """The version numbers that ``events`` change."""
    touched: set[int] = set()
    for event in events:
        touched.update(_TOUCHES[type(event)](event))
    return touched


def removed_versions(events: Iterable[Any]) -> set[int]:
    """The version numbers that ``events`` trim away."""
    removed: set[int] = set()
    for event in events:
        if isinstance(event, ManagedKey.VersionsTrimmed):
            removed.update(event.removed)
    return removed


def config_changed(events: Iterable[Any]) -> bool:
    """Whether ``events`` change the key's minimum versions or rotation period."""
    return any(
        isinstance(
            event,
            ManagedKey.MinimumVersionsChanged
            | ManagedKey.RotationPeriodChanged
            | ManagedKey.Restored,
        )
        for event in events
    )


def has_config(key: ManagedKey) -> bool:
    """Whether ``key`` has a ``key_config`` or a ``key_rotation`` row."""
    return key_config_row(key) is not None or key.rotation_period_seconds is not None


def view_statements(
    key: ManagedKey,
    touched: Iterable[int],
    last_position: int,
    *,
    config: bool = False,
    removed: Iterable[int] = (),
) -> list[Statement]:
    """The writes that make the read side show ``key`` as of ``last_position``.

    With ``config`` the key's ``key_config`` row is written too: kept when the
    minimum versions differ from the defaults, deleted when they do not; and so
    is its ``key_rotation`` row, kept while it has a rotation period. The
    rows of ``removed`` (trimmed) versions are deleted.
    """
    row = key_row(key, last_position)
    statements: list[Statement] = [_upsert("key_view", _KEY_COLUMNS, ("name",), row)]
    if config:
        config_row = key_config_row(key)
        statements.append(
            _upsert("key_config", _CONFIG_COLUMNS, ("name",), config_row)
            if config_row is not None
            else ("DELETE FROM key_config WHERE name = %s", (key.name,))
        )
        statements.append(
            _upsert(
                "key_rotation",
                _ROTATION_COLUMNS,
                ("name",),
                {"name": key.name, "rotation_period_seconds": period},
            )
            if (period := key.rotation_period_seconds) is not None
            else ("DELETE FROM key_rotation WHERE name = %s", (key.name,))
        )
    for number in sorted(removed):
        statements.append(
            (
                "DELETE FROM key_versions WHERE key_name = %s AND version = %s",
                (key.name, number),
            )
        )
    for number in sorted(touched):
        statements.append(
            _upsert(
                "key_versions",
                _VERSION_COLUMNS,
                ("key_name", "version"),
                version_row(key, number),
            )
        )
    return statements


def key_row(key: ManagedKey, last_position: int) -> dict[str, Any]:
    summary = key.summary()
    row = {name: summary[name] for name in _KEY_COLUMNS if name in summary}
    row["primary_usable"] = int(summary["primary_usable"])
    row["last_position"] = last_position
    return row


def key_config_row(key: ManagedKey) -> dict[str, Any] | None:
    """The key's ``key_config`` row, or None when its minimum versions are defaults."""
    row = {name: getattr(key, name) for name in _CONFIG_COLUMNS}
    if all(row[name] == value for name, value in _CONFIG_DEFAULTS.items()):
        return None
    return row


def version_row(key: ManagedKey, number: int) -> dict[str, Any]:
    view = key.version_view(number)
    row = {name: view.get(name) for name in _VERSION_COLUMNS}
    row["key_name"] = key.name
    row["compromised"] = int(view["compromised"])
    return row


def _upsert(
    table: str,
    columns: tuple[str, ...],
    conflict: tuple[str, ...],
    row: dict[str, Any],
) -> Statement:
    updates = ", ".join(
        f"{column} = excluded.{column}" for column in columns if column not in conflict
    )
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) "
        f"VALUES ({', '.join(['%s'] * len(columns))}) "
        f"ON CONFLICT ({', '.join(conflict)}) DO UPDATE SET {updates}",
        tuple(row[column] for column in columns),
    )


def get_key(
    recorder: LedgerRecorder,
    name: str,
    *,
    versions_after: int = 0,
    versions_limit: int = 100,
) -> dict[str, Any] | None:
    """The key called ``name`` with one page of its versions, or None."""
    rows = recorder.query(f"SELECT {_SELECT_KEY} WHERE kv.name = %s", (name,))
    if not rows:
        return None
    view = _key_json(rows[0])
    versions = recorder.query(
        f"SELECT {', '.join(_VERSION_COLUMNS)} FROM key_versions "
        "WHERE key_name = %s AND version > %s ORDER BY version LIMIT %s",
        (name, versions_after, versions_limit + 1),
    )
    view["versions"] = [
        _version_json(row, view["primary_version"]) for row in versions[:versions_limit]
    ]
    view["next_versions_cursor"] = (
        view["versions"][-1]["version"] if len(versions) > versions_limit else None
    )
    return view


def list_keys(
    recorder: LedgerRecorder,
    *,
    after: str | None = None,
    limit: int = 100,
    state: str | None = None,
    prefix: str | None = None,
    algorithm: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of keys (without versions) in name order, and the next cursor."""
    clauses: list[str] = ["1 = 1"]
    params: list[Any] = []
    if after is not None:
        clauses.append("kv.name > %s")
        params.append(after)
    if state is not None:
        clauses.append("kv.state = %s")
        params.append(state)
    if algorithm is not None:
        clauses.append("kv.algorithm = %s")
        params.append(algorithm)
    if prefix is not None:
        clauses.append("substr(kv.name, 1, %s) = %s")
        params += [len(prefix), prefix]
    rows = recorder.query(
        f"SELECT {_SELECT_KEY} WHERE {' AND '.join(clauses)} ORDER BY kv.name LIMIT %s",
        (*params, limit + 1),
    )
    items = [_key_json(row) for row in rows[:limit]]
    cursor = items[-1]["name"] if len(rows) > limit else None
    return items, cursor


def primary_created_at(recorder: LedgerRecorder) -> dict[str, str]:
    """When each key's primary version was made: its last rotation, by key name."""
    rows = recorder.query(
        "SELECT kv.name, v.created_at FROM key_view kv JOIN key_versions v "
        "ON v.key_name = kv.name AND v.version = kv.primary_version"
    )
    return {row["name"]: row["created_at"] for row in rows}


def due_destructions(
    recorder: LedgerRecorder, now: str, limit: int = 100
) -> list[tuple[str, int]]:
    """Scheduled destructions whose time has come, oldest first."""
    rows = recorder.query(
        "SELECT key_name, version FROM key_versions "
        "WHERE state = 'destroy_scheduled' AND destroy_at <= %s "
        "ORDER BY destroy_at, key_name, version LIMIT %s",
        (now, limit),
    )
    return [(row["key_name"], row["version"]) for row in rows]


def snapshot_tables(
    recorder: LedgerRecorder | LedgerTransaction,
) -> dict[str, list[dict[str, Any]]]:
    """Every row of this projection's tables, in a stable order."""
    return {
        "key_view": recorder.query(
            f"SELECT {', '.join(_KEY_COLUMNS)} FROM key_view ORDER BY name"
        ),
        "key_versions": recorder.query(
            f"SELECT {', '.join(_VERSION_COLUMNS)} FROM key_versions "
            "ORDER BY key_name, version"
        ),
        "key_config": recorder.query(
            f"SELECT {', '.join(_CONFIG_COLUMNS)} FROM key_config ORDER BY name"
        ),
        "key_rotation": recorder.query(
            f"SELECT {', '.join(_ROTATION_COLUMNS)} FROM key_rotation ORDER BY name"
        ),
    }


def expected_tables(
    keys: Iterable[tuple[ManagedKey, int]],
) -> dict[str, list[dict[str, Any]]]:
    """The rows ``snapshot_tables`` should return for keys at their last positions."""
    key_rows, version_rows, config_rows = [], [], []
    rotation_rows: list[dict[str, Any]] = []
    for key, last_position in keys:
        key_rows.append(key_row(key, last_position))
        version_rows += [version_row(key, number) for number in sorted(key.versions)]
        config_row = key_config_row(key)
        if config_row is not None:
            config_rows.append(config_row)
        if key.rotation_period_seconds is not None:
            rotation_rows.append(
                {
                    "name": key.name,
                    "rotation_period_seconds": key.rotation_period_seconds,
                }
            )
    key_rows.sort(key=lambda row: row["name"])
    version_rows.sort(key=lambda row: (row["key_name"], row["version"]))
    config_rows.sort(key=lambda row: row["name"])
    rotation_rows.sort(key=lambda row: row["name"])
    return {
        "key_view": key_rows,
        "key_versions": version_rows,
        "key_config": config_rows,
        "key_rotation": rotation_rows,
    }


def _key_json(row: dict[str, Any]) -> dict[str, Any]:
    view = dict(row)
    view["primary_usable"] = bool(view["primary_usable"])
    if view["min_decryption_version"] is None:
        # No key_config row: the key has the default minimum versions.
        view.update(_CONFIG_DEFAULTS)
    return view


def _version_json(row: dict[str, Any], primary: int) -> dict[str, Any]:
    view = dict(row)
    del view["key_name"]
    view["compromised"] = bool(view["compromised"])
    view["primary"] = view["version"] == primary
    return view
