"""Backup targets: named places outside the ledger that keep bundles write-once.

A target writes an object once and never replaces it, reports success only when
the object is durable, and refuses to delete it before its retention date. Each
failure is a ``TargetError`` with a stable code (``UNREACHABLE``, ``READ_ONLY``,
``FULL``, ``OBJECT_EXISTS``, ``MISSING``, ``RETAINED``, ...) and a message that
names the target, never the bytes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from domain.backups import CLAIM_TIMEOUT
from domain.clock import format_time, parse_time
from domain.errors import InvalidArgumentError

OBJECT_SUFFIX = ".klbackup"
# Objects and their retention files: readable by the service's user alone.
OBJECT_MODE = 0o400
DIR_OPTIONS = frozenset({"path", "prefix"})
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class TargetError(Exception):
    """A target could not do what was asked; ``code`` says which way it failed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def safe_prefix(prefix: object) -> bool:
    """Whether ``prefix`` is one safe folder name (or empty, for none).

    1 to 64 ASCII letters, digits, ``.``, ``_`` or ``-``, starting with a
    letter or digit, without ``..``: never absolute, never a path of its own,
    so the folder is always inside the target's path.
    """
    return prefix == "" or (
        isinstance(prefix, str)
        and bool(_PREFIX.fullmatch(prefix))
        and ".." not in prefix
    )


def check_dir_options(target: str, options: dict[str, Any]) -> None:
    """Refuse the options of a ``dir`` target that cannot be right (HTTP 422).

    ``path`` MUST be an absolute path to a directory that exists now, and
    ``prefix`` (optional) one safe folder name (see ``safe_prefix``).

    Raises:
        InvalidArgumentError: ``INVALID_TARGET`` (a missing or unknown option,
            or one not a string), ``TARGET_PATH_NOT_ABSOLUTE``,
            ``TARGET_PATH_NOT_A_DIRECTORY`` (with ``exists``) or
            ``INVALID_TARGET_PREFIX``; each with the target's name.
    """
    unknown = sorted(set(options) - DIR_OPTIONS)
    path = options.get("path")
    if unknown or not isinstance(path, str):
        raise InvalidArgumentError(
            "A dir target needs the option path (a string) and takes only "
            "path and prefix.",
            code="INVALID_TARGET",
            target=target,
            unknown=unknown,
        )
    if not os.path.isabs(path):
        raise InvalidArgumentError(
            f"The path of target {target!r} must be absolute.",
            code="TARGET_PATH_NOT_ABSOLUTE",
            target=target,
        )
    try:
        exists = os.path.lexists(path)
        is_dir = os.path.isdir(path)
    except ValueError:  # a NUL byte: no such file can exist
        exists = is_dir = False
    if not is_dir:
        raise InvalidArgumentError(
            f"The path of target {target!r} must be an existing directory.",
            code="TARGET_PATH_NOT_A_DIRECTORY",
            target=target,
            exists=exists,
        )
    if not safe_prefix(options.get("prefix", "")):
        raise InvalidArgumentError(
            f"The prefix of target {target!r} must be one folder name: 1 to 64 "
            "ASCII letters, digits, '.', '_' or '-', starting with a letter or "
            "digit, without '..'.",
            code="INVALID_TARGET_PREFIX",
            target=target,
        )


def object_name(digest: str) -> str:
    """The name of a bundle's object: its content digest."""
    return digest.removeprefix("sha256:") + OBJECT_SUFFIX


class Target(Protocol):
    """What the backup service needs from a place that keeps bundles."""

    name: str
    kind: str
    location: str

    def put(self, name: str, data: bytes, *, retain_until: datetime) -> str:
        """Write ``data`` once as ``name``, durable on return; its locator."""

    def get(self, name: str) -> bytes:
        """The object's bytes; ``TargetError("MISSING")`` if it is gone."""

    def delete(self, name: str, *, now: datetime) -> None:
        """Delete the object; ``TargetError("RETAINED")`` before its retention date."""


@dataclass
class DirTarget:
    """A directory (a local disk, a mounted share) under ``path/prefix``.

    Objects are written to a temporary file opened create-only, flushed and
    synced, then linked to their final name (which fails if it exists) and the
    directory synced: the final name never shows a partial object. Objects and
    their retention files are then made read-only, for their owner alone
    (0400). ``path`` and ``prefix`` are checked when the target is configured
    (``check_dir_options``); a prefix that would leave ``path`` is refused on
    every use too. A directory without write
    bits, or on a read-only mount, is refused as ``READ_ONLY``, even for root.

    Limitation: a directory cannot stop its owner or root from deleting files;
    the retention date is enforced by this code and recorded on the ledger,
    not by the file system. Use an ``s3`` target with Object Lock for WORM that
    holds against an administrator.
    """

    name: str
    location: str
    path: Path
    prefix: str = ""
    kind: str = "dir"

    @property
    def folder(self) -> Path:
        """Where the objects are: ``path/prefix``, never outside ``path``.

        Raises:
            TargetError: ``UNSAFE_PREFIX`` for a prefix configured before
                prefixes were checked that would leave ``path``.
        """
        if not safe_prefix(self.prefix):
            raise TargetError(
                "UNSAFE_PREFIX",
                f"Target {self.name!r} has a prefix that is not one folder name; "
                "configure it again.",
            )
        return self.path / self.prefix if self.prefix else self.path

    def put(self, name: str, data: bytes, *, retain_until: datetime) -> str:
        folder = self._writable_folder()
        self._remove_stale_partials(folder)
        final = folder / name
        temporary = folder / f".partial-{secrets.token_hex(8)}-{name}"
        try:
            self._write_new(temporary, data)
            try:
                os.link(temporary, final)
            except FileExistsError:
                if self._read(final) != data:
                    raise TargetError(
                        "OBJECT_EXISTS",
                        f"Target {self.name!r} already holds another {name}.",
                    ) from None
            retain = folder / (name + ".retain")
            with contextlib.suppress(FileExistsError):
                self._write_new(retain, format_time(retain_until).encode("ascii"))
            for path in (final, retain):
                os.chmod(path, OBJECT_MODE)
            self._sync_folder(folder)
        except OSError as error:
            raise self._error(error) from None
        finally:
            with contextlib.suppress(OSError):
                temporary.unlink()
        return str(final)

    def get(self, name: str) -> bytes:
        return self._read(self.folder / name)

    def delete(self, name: str, *, now: datetime) -> None:
        final = self.folder / name
        retain = self.folder / (name + ".retain")
        try:
            until = parse_time(retain.read_text("ascii").strip())
        except (OSError, ValueError):
            raise TargetError(
                "RETAINED",
                f"Target {self.name!r} cannot tell the retention date of {name}; "
                "it is kept.",
            ) from None
        if now < until:
            raise TargetError(
                "RETAINED",
                f"{name} on {self.name!r} is retained until {format_time(until)}.",
            )
        try:
            if not self.folder.stat().st_mode & 0o222:
                raise TargetError(
                    "READ_ONLY", f"Target {self.name!r}: {self.folder} is read-only."
                )
            final.unlink()
            retain.unlink()
            self._sync_folder(self.folder)
        except OSError as error:
            raise self._error(error) from None

    @staticmethod
    def _remove_stale_partials(folder: Path) -> None:
        """Remove the temporary files of writers that died (a crash mid-write).

        A temporary file never counts: only a final name does. One older than
        the backup claim timeout belongs to a writer whose claim has lapsed,
        so no live writer can still be writing it.
        """
        stale_before = time.time() - CLAIM_TIMEOUT.total_seconds()
        for path in folder.glob(".partial-*"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < stale_before:
                    path.unlink()

    def _writable_folder(self) -> Path:
        if not self.path.is_dir():
            raise TargetError(
                "UNREACHABLE", f"Target {self.name!r}: {self.path} is not there."
            )
        folder = self.folder
        try:
            folder.mkdir(exist_ok=True)
        except OSError as error:
            raise self._error(error) from None
        if not folder.stat().st_mode & 0o222:
            raise TargetError(
                "READ_ONLY", f"Target {self.name!r}: {folder} is read-only."
            )
        return folder

    @staticmethod
    def _write_new(path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    @staticmethod
    def _sync_folder(folder: Path) -> None:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _read(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise TargetError(
                "MISSING", f"Target {self.name!r} no longer holds {path.name}."
            ) from None
        except OSError as error:
            raise self._error(error) from None

    def _error(self, error: OSError) -> TargetError:
        codes = {
            errno.ENOSPC: "FULL",
            errno.EDQUOT: "FULL",
            errno.EROFS: "READ_ONLY",
            errno.EACCES: "READ_ONLY",
            errno.EPERM: "READ_ONLY",
            errno.ENOENT: "UNREACHABLE",
        }
        code = codes.get(error.errno or 0, "WRITE_FAILED")
        return TargetError(
            code, f"Target {self.name!r} failed: {error.strerror or code}."
        )


def build_target(config: dict[str, Any]) -> Target:
    """The target a recorded configuration describes."""
    options = config["options"]
    if config["kind"] == "dir":
        return DirTarget(
            name=config["name"],
            location=config["location"],
            path=Path(options["path"]),
            prefix=options.get("prefix", ""),
        )
    if config["kind"] == "s3":
        from backup.s3 import S3Target

        target: Target = S3Target.from_options(
            config["name"], config["location"], options
        )
        return target
    raise ValueError(f"Unknown target kind {config['kind']!r}.")
