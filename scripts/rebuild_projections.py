"""``keyledger rebuild``: rebuild every projection from the events and compare."""

from __future__ import annotations

import argparse
import json
import sys

from projections.rebuild import RebuildError, rebuild
from scripts.common import add_ledger_arguments, open_ledger_for


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_ledger_arguments(parser)
    parser.add_argument(
        "--check-only",
        action="store_true",
        help="Compare with the live read side without replacing it.",
    )


def main(args: argparse.Namespace) -> int:
    service = open_ledger_for(args, "rebuild")
    if service is None:
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
