"""``keyledger compare``: find where two ledgers, or two exports, fork.

Each side is a store URL (``sqlite:///file``, ``postgresql://...``) or an
export archive (or its unpacked folder). Hashes are compared position by
position; signatures are not checked here (``verify`` and ``verify-export`` do
that). Exit status: 0 when one is a prefix of the other, 1 at a fork, 2 when a
side cannot be read.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from domain.clock import SystemClock
from domain.errors import KeyledgerError
from ledger import offline
from ledger.material import KeyEncryptionKey
from ledger.service import KeyService
from ledger.signing import LedgerSigner

PAGE = 5000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("left", help="A store URL or an export archive.")
    parser.add_argument("right", help="A store URL or an export archive.")


def main(args: argparse.Namespace) -> int:
    try:
        left, right = _hashes(args.left), _hashes(args.right)
        comparison = offline.compare_hashes(left, right)
    except (KeyledgerError, ValueError, OSError, offline.UnreadableError) as error:
        print(f"keyledger compare: cannot read: {error}", file=sys.stderr)
        return 2
    print(comparison.describe())
    return 1 if comparison.fork_at is not None else 0


def _hashes(where: str) -> Iterator[tuple[int, str]]:
    if where.startswith(("sqlite:", "postgresql:", "postgres:")):
        return _store_hashes(where)
    files, _ = offline.read_archive(Path(where))
    rows = offline.parse_export_lines(files.get(offline.ENTRIES_FILE, b""))
    return iter([(row.position, row.hash) for row in rows])


def _store_hashes(url: str) -> Iterator[tuple[int, str]]:
    # Only read: a throwaway signer and KEK are never used.
    service = KeyService.open(
        database_url=url,
        signer=LedgerSigner(Ed25519PrivateKey.generate()),
        kek=KeyEncryptionKey(os.urandom(32)),
        clock=SystemClock(),
        create=False,
    )
    table = service.ledger.events_table_name

    def rows() -> Iterator[tuple[int, str]]:
        after = 0
        try:
            while True:
                page = service.ledger.query(
                    f"SELECT notification_id, entry_hash FROM {table} "
                    "WHERE notification_id > %s ORDER BY notification_id LIMIT %s",
                    (after, PAGE),
                )
                for row in page:
                    yield int(row["notification_id"]), str(row["entry_hash"])
                if len(page) < PAGE:
                    return
                after = int(page[-1]["notification_id"])
        finally:
            service.close()

    return rows()
