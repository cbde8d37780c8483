"""The ``dir`` target writes each object once and never replaces what it holds."""

from __future__ import annotations

import stat
from datetime import timedelta
from pathlib import Path

import pytest

from backup.targets import DirTarget, TargetError, object_name
from tests.conftest import T0


def test_other_bytes_under_a_held_name_are_refused_and_alter_nothing(
    tmp_path: Path,
) -> None:
    """A second put of other bytes is OBJECT_EXISTS; the object, its retention
    file and the folder stay as they were; the same bytes again are accepted."""
    target = DirTarget(name="dc1", location="site-a", path=tmp_path, prefix="keys")
    name = object_name("sha256:" + "ab" * 32)
    target.put(name, b"first", retain_until=T0 + timedelta(days=30))
    folder = tmp_path / "keys"
    listing = sorted(p.name for p in folder.iterdir())
    retain = (folder / (name + ".retain")).read_text()

    with pytest.raises(TargetError) as refused:
        target.put(name, b"second", retain_until=T0 + timedelta(days=1))

    assert refused.value.code == "OBJECT_EXISTS"
    assert target.get(name) == b"first"
    assert (folder / (name + ".retain")).read_text() == retain
    assert sorted(p.name for p in folder.iterdir()) == listing
    assert stat.S_IMODE((folder / name).stat().st_mode) == 0o444
    target.put(name, b"first", retain_until=T0 + timedelta(days=1))
    assert (folder / (name + ".retain")).read_text() == retain
