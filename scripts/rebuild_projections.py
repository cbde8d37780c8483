"""``keyledger rebuild``: rebuild every projection from the events and compare."""

from __future__ import annotations

import argparse
import json
import sys

from domain.errors import KeyledgerError
from ledger.settings import Settings
from projections.rebuild import RebuildError, rebuild
from scripts.common import open_service


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", help="The service's data folder (KEYLEDGER_DATA_DIR)."
    )
    parser.add_argument(
        "--database-url", help="The ledger's database (KEYLEDGER_DATABASE_URL)."
    )
    parser.add_argument(
        "--check-only",
        action="store_true",
        help="Compare with the live read side without replacing it.",
    )


def main(args: argparse.Namespace) -> int:
    overrides = {
        name: value
        for name, value in (
            ("data_dir", args.data_dir),
            ("database_url", args.database_url),
        )
        if value is not None
    }
    try:
        service = open_service(Settings(**overrides))
    except (KeyledgerError, ValueError, OSError) as error:
        print(f"keyledger rebuild: cannot open the ledger: {error}", file=sys.stderr)
        return 2
    try:
        report = rebuild(service.app, apply=not args.check_only)
    except RebuildError as error:
        print(f"keyledger rebuild: {error}; no projection was changed", file=sys.stderr)
        return 1
    finally:
        service.close()
    print(json.dumps(report.as_json(), indent=2))
    summary = f"rebuilt {report.keys} keys from {report.events} events; "
    if report.matched_live:
        print(summary + "result equals the live read side")
        return 0
    if report.applied:
        print(summary + "the live read side DIFFERED and has been replaced")
        return 0
    print(summary + "result DIFFERS FROM the live read side (not changed)")
    return 1
