"""Backup targets and the default policy from a settings file, recorded at start-up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from api.runtime import Runtime, build_runtime
from domain.errors import InvalidArgumentError
from ledger.settings import Settings


def _settings(tmp_path: Path, store_url: str, document: object) -> Settings:
    path = tmp_path / "backups.json"
    path.write_text(json.dumps(document))
    return Settings(
        data_dir=tmp_path / "data",
        database_url=store_url,
        admin_token="kl_settings-test",
        backup_settings_file=path,
    )


def test_settings_file_is_recorded_once_and_applied(
    tmp_path: Path, store_url: str
) -> None:
    """The file's targets and policy become events; a restart records nothing more."""
    (tmp_path / "a").mkdir()
    document = {
        "targets": [
            {
                "name": "dc1",
                "kind": "dir",
                "location": "site-a",
                "options": {"path": str(tmp_path / "a")},
            }
        ],
        "default_policy": {"copies": 1, "locations": 1, "interval_hours": 12},
    }
    settings = _settings(tmp_path, store_url, document)
    runtime = build_runtime(settings)
    try:
        recorded = _not_service_runs(runtime)
        assert list(runtime.backups.targets()) == ["dc1"]
        assert runtime.backups.default_policy().interval_hours == 12
        assert len(recorded) == 3  # settings opened, target configured, policy changed
    finally:
        runtime.close()
    again = build_runtime(settings)
    try:
        assert _not_service_runs(again) == recorded
    finally:
        again.close()


def _not_service_runs(runtime: Runtime) -> list[dict[str, Any]]:
    """The entries other than the service's own start and stop."""
    return [
        entry
        for entry in runtime.service.events(limit=1000)
        if not entry["type"].startswith("keyledger.service.")
    ]


@pytest.mark.parametrize(
    "document",
    [
        pytest.param([], id="not an object"),
        pytest.param({"targets": [{"name": "dc1"}]}, id="target without kind"),
        pytest.param({"default_policy": {"copies": 0}}, id="bad policy"),
    ],
)
def test_a_bad_settings_file_stops_the_start(
    tmp_path: Path, store_url: str, document: object
) -> None:
    """A settings file of the wrong shape fails the start with a clear error."""
    with pytest.raises(InvalidArgumentError):
        build_runtime(_settings(tmp_path, store_url, document))


@pytest.mark.parametrize(
    ("options", "code"),
    [
        pytest.param(
            {"path": "relative/dir"}, "TARGET_PATH_NOT_ABSOLUTE", id="relative"
        ),
        pytest.param({"path": "/etc/passwd"}, "TARGET_PATH_NOT_A_DIRECTORY", id="file"),
        pytest.param(
            {"path": "{tmp}", "prefix": "../escape"},
            "INVALID_TARGET_PREFIX",
            id="prefix",
        ),
    ],
)
def test_a_settings_file_with_a_bad_dir_target_stops_the_start(
    tmp_path: Path, store_url: str, options: dict[str, str], code: str
) -> None:
    """A dir target in the file with a bad path or prefix fails the start with its
    code, and records no target."""
    options = {k: v.replace("{tmp}", str(tmp_path)) for k, v in options.items()}
    document = {
        "targets": [
            {"name": "dc1", "kind": "dir", "location": "site-a", "options": options}
        ]
    }
    settings = _settings(tmp_path, store_url, document)

    with pytest.raises(InvalidArgumentError) as refused:
        build_runtime(settings)

    assert refused.value.code == code
    runtime = build_runtime(_settings(tmp_path, store_url, {}))
    try:
        assert runtime.backups.targets() == {}
    finally:
        runtime.close()
