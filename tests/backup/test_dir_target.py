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
    assert stat.S_IMODE((folder / name).stat().st_mode) == 0o400
    target.put(name, b"first", retain_until=T0 + timedelta(days=1))
    assert (folder / (name + ".retain")).read_text() == retain


@pytest.mark.parametrize(
    "prefix", ["../../escape", "/tmp/escape", "a/../../b", "a\\b"], ids=str
)
def test_a_prefix_that_would_leave_the_folder_writes_nothing(
    tmp_path: Path, prefix: str
) -> None:
    """A target recorded with an unsafe prefix (before prefixes were checked)
    refuses every use as UNSAFE_PREFIX and writes nothing anywhere."""
    inside = tmp_path / "a" / "b"
    inside.mkdir(parents=True)
    target = DirTarget(name="dc1", location="site-a", path=inside, prefix=prefix)
    name = object_name("sha256:" + "cd" * 32)

    for use in (
        lambda: target.put(name, b"bundle", retain_until=T0 + timedelta(days=1)),
        lambda: target.get(name),
        lambda: target.delete(name, now=T0),
    ):
        with pytest.raises(TargetError) as refused:
            use()
        assert refused.value.code == "UNSAFE_PREFIX"

    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == [
        Path("a"),
        Path("a/b"),
    ]
