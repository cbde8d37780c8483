"""Benchmark backups: taken per second (1 and 100 versions) and verification throughput.

Run it by hand, never from the tests::

    python -m scripts.bench_backup [--database-url postgresql://...] [--rounds 20]

It builds a scratch ledger (an SQLite file in a temporary folder, or a fresh
schema on the PostgreSQL server given) with one ``dir`` target in a temporary
folder, and in one run measures:

1. raw baseline: writing as many bytes as a bundle into the target's own folder
   the way the target does (create-only, fsync the file, link, fsync the folder)
   and reading them back, per second;
2. backups/s of a key with 1 version and of a key with 100 versions (each is a
   claim, the bundle, the write, the read-back and the record);
3. verifications/s of those backups (read back, digest, signature, history,
   checkpoint, unwrap and fingerprint checks, and the recorded result).

Ratios against the raw baseline of the same bundle size are printed at the end.
The exit status is 0 when every measurement ran.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backup.key import BackupKey
from backup.service import BackupService
from backup.targets import DirTarget
from domain.clock import SystemClock
from ledger.material import KeyEncryptionKey
from ledger.service import CommandContext, KeyService
from ledger.signing import LedgerSigner
from ledger.store import Actor

CONTEXT = CommandContext(Actor("bench", "-"), "bench")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        help="A PostgreSQL server to use a scratch schema on (default: SQLite).",
    )
    parser.add_argument(
        "--rounds", type=int, default=20, help="Operations per measurement."
    )


def rate(rounds: int, step: Callable[[int], object]) -> float:
    """Operations per second of ``step`` over ``rounds`` calls, after one warm-up."""
    step(-1)
    started = time.perf_counter()
    for index in range(rounds):
        step(index)
    return rounds / (time.perf_counter() - started)


def raw_rate(folder: Path, data: bytes, rounds: int) -> float:
    """Write-once (fsync file and folder) plus read-back of ``data``, per second."""
    target = DirTarget(name="raw", location="raw", path=folder)

    def step(index: int) -> None:
        name = f"raw-{index}-{secrets.token_hex(4)}"
        target._write_new(folder / f".partial-{name}", data)
        os.link(folder / f".partial-{name}", folder / name)
        (folder / f".partial-{name}").unlink()
        DirTarget._sync_folder(folder)
        assert (folder / name).read_bytes() == data

    return rate(rounds, step)


def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="kl-bench-backup-") as scratch:
        root = Path(scratch)
        url = f"sqlite:///{root / 'ledger.sqlite3'}"
        schema = None
        if args.database_url:
            schema = f"bench_{secrets.token_hex(6)}"
            with psycopg.connect(args.database_url, autocommit=True) as conn:
                conn.execute(f'CREATE SCHEMA "{schema}"')
            url = f"{args.database_url}?schema={schema}"
        try:
            return _measure(root, url, args.rounds)
        finally:
            if schema is not None:
                with psycopg.connect(args.database_url, autocommit=True) as conn:
                    conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _measure(root: Path, url: str, rounds: int) -> int:
    service = KeyService.open(
        database_url=url,
        signer=LedgerSigner(Ed25519PrivateKey.generate()),
        kek=KeyEncryptionKey(os.urandom(32)),
        clock=SystemClock(),
    )
    try:
        backups = BackupService(service, BackupKey(os.urandom(32)))
        (root / "target").mkdir()
        backups.configure_target(
            CONTEXT,
            name="dc1",
            kind="dir",
            location="dc1",
            options={"path": str(root / "target")},
        )
        service.create_key(CONTEXT, name="one")
        service.create_key(CONTEXT, name="hundred")
        for _ in range(99):
            service.rotate(CONTEXT, "hundred")
        results = {}
        for name in ("one", "hundred"):
            taken: list[str] = []

            def backup(_: int, name: str = name, taken: list[str] = taken) -> None:
                taken.append(backups.take_backup(CONTEXT, name).backup_id)

            def verify(index: int, taken: list[str] = taken) -> None:
                backups.verify_backup(CONTEXT, taken[index + 1])

            backup_rate = rate(rounds, backup)
            verify_rate = rate(rounds - 1, verify)
            size = backups.get_backup(taken[-1])["size"]
            # The baseline writes into the target's own folder, next to the backups.
            raw = raw_rate(root / "target", os.urandom(size), rounds)
            results[name] = (size, raw, backup_rate, verify_rate)
    finally:
        service.close()
    store = "PostgreSQL" if url.startswith("postgres") else "SQLite"
    print(f"store {store}, {rounds} rounds, one dir target on {root}")
    print(
        "| key | bundle bytes | raw write+read/s | backups/s | ratio "
        "| verifies/s | ratio |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, (size, raw, taken_rate, verify_rate) in results.items():
        print(
            f"| {name} version{'s' if name != 'one' else ''} | {size} | {raw:.0f} | "
            f"{taken_rate:.1f} | {taken_rate / raw:.2f} | {verify_rate:.1f} | "
            f"{verify_rate / raw:.2f} |"
        )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
