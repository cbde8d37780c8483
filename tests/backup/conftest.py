"""Helpers of the backup tests."""

from __future__ import annotations

from pathlib import Path

from backup.service import BackupService
from ledger.service import CommandContext


def add_dir_target(
    backups: BackupService,
    ctx: CommandContext,
    folder: Path,
    name: str,
    location: str | None = None,
) -> Path:
    """Configure a ``dir`` target in a new ``folder / name``; return that folder."""
    path = folder / name
    path.mkdir()
    backups.configure_target(
        ctx,
        name=name,
        kind="dir",
        location=location or name,
        options={"path": str(path)},
    )
    return path
