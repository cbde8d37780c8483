"""``keyledger verify``: check the whole ledger; exit 0 only when it is intact."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ledger.signing import load_public_key
from ledger.verify import verify_ledger
from scripts.common import add_ledger_arguments, open_ledger_for


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_ledger_arguments(parser)
    parser.add_argument(
        "--public-key",
        action="append",
        default=[],
        help="A PEM file of another trusted signing key (repeatable).",
    )
    parser.add_argument("--json", action="store_true", help="Print the report as JSON.")


def main(args: argparse.Namespace) -> int:
    service = open_ledger_for(args, "verify")
    if service is None:
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
