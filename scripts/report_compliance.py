"""``keyledger report``: write the compliance report of a period as HTML or PDF."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from domain.clock import SystemClock
from domain.errors import KeyledgerError
from reports import covered, render
from reports.compliance import collect, parse_period
from scripts.common import (
    add_ledger_arguments,
    open_backups,
    open_ledger_for,
    record_cli_export,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from",
        dest="from_time",
        required=True,
        help="The period's start, included (a time with offset, e.g. ...Z).",
    )
    parser.add_argument(
        "--to",
        dest="to_time",
        required=True,
        help="The period's end, excluded (a time with offset).",
    )
    parser.add_argument(
        "--format",
        choices=("html", "pdf"),
        default="html",
        help="html (one self-contained page) or pdf; html if not given.",
    )
    parser.add_argument(
        "--out", required=True, help="The file to write (a new file, never replaced)."
    )
    add_ledger_arguments(parser)


def main(args: argparse.Namespace) -> int:
    try:
        start, end = parse_period(args.from_time, args.to_time)
    except KeyledgerError as error:
        print(f"keyledger report: {error.message}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists():
        print(
            f"keyledger report: {out} exists; choose a new --out file", file=sys.stderr
        )
        return 2
    service = open_ledger_for(args, "report")
    if service is None:
        return 2
    try:
        policy = open_backups(service, args).default_policy()
        report = collect(
            service,
            start=start,
            end=end,
            default_policy=policy,
            now=SystemClock().now(),
        )
        data = render(report, args.format)
        # Handed out only once it is on the record (fail closed).
        record_cli_export(
            service,
            "report",
            {
                "report": "compliance",
                "from": args.from_time,
                "to": args.to_time,
                "format": args.format,
            },
            data,
            covered(report),
        )
    except FileNotFoundError as error:
        print(
            f"keyledger report: {error}; run keyledger serve once to make the "
            "data folder",
            file=sys.stderr,
        )
        return 2
    except KeyledgerError as error:
        print(f"keyledger report: {error.message}", file=sys.stderr)
        return 2
    finally:
        service.close()

    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except OSError as error:
        print(
            f"keyledger report: cannot write {out}: {error}; choose a new --out file",
            file=sys.stderr,
        )
        return 2
    ledger = report["ledger"]
    verified = (
        "the ledger verified"
        if ledger["verified"]
        else "the ledger did NOT verify "
        f"(position {ledger['verification']['first_failure']['position']})"
    )
    print(
        f"wrote the compliance report of {report['period']['from']} to "
        f"{report['period']['to']} to {out} ({args.format}); {verified}"
    )
    return 0 if ledger["verified"] else 1
