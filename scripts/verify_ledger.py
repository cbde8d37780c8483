"""``keyledger verify``: check the whole ledger; exit 0 only when it is intact."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from domain.errors import KeyledgerError
from ledger.settings import Settings
from ledger.signing import load_public_key
from ledger.verify import verify_ledger
from scripts.common import open_service


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", help="The service's data folder (KEYLEDGER_DATA_DIR)."
    )
    parser.add_argument(
        "--database-url", help="The ledger's database (KEYLEDGER_DATABASE_URL)."
    )
    parser.add_argument(
        "--public-key",
        action="append",
        default=[],
        help="A PEM file of another trusted signing key (repeatable).",
    )
    parser.add_argument("--json", action="store_true", help="Print the report as JSON.")


def main(args: argparse.Namespace) -> int:
    settings = Settings(**_overrides(args))
    try:
        service = open_service(settings)
    except (KeyledgerError, ValueError, OSError) as error:
        print(f"keyledger verify: cannot open the ledger: {error}", file=sys.stderr)
        return 2
    try:
        keys = service.public_keys()
        for path in args.public_key:
            from ledger.signing import key_id

            public_key = load_public_key(Path(path).read_bytes())
            keys[key_id(public_key)] = public_key
        report = verify_ledger(service.ledger, keys)
    finally:
        service.close()
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    elif report.ok:
        print(
            f"ledger intact: {report.checked} entries, head {report.head_position} "
            f"{report.head_hash}, {report.checkpoints_checked} checkpoints verified"
        )
    else:
        failure = report.first_failure
        assert failure is not None
        print(
            f"ledger BROKEN at position {failure.position}: {failure.reason} "
            f"({failure.detail}); {report.checked} entries verified before it"
        )
    return 0 if report.ok else 1


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        name: value
        for name, value in (
            ("data_dir", args.data_dir),
            ("database_url", args.database_url),
        )
        if value is not None
    }
