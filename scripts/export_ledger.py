"""``keyledger export``: write a signed evidence archive for a time range or keys."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from domain.clock import parse_time
from domain.errors import KeyledgerError, LedgerBrokenError
from ledger.export import ExportScope, build_export
from scripts.common import add_ledger_arguments, open_ledger_for, record_cli_export


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", required=True, help="The archive to write (a new .zip file)."
    )
    parser.add_argument(
        "--from",
        dest="from_time",
        help="Entries recorded at or after this time (with offset, e.g. ...Z).",
    )
    parser.add_argument(
        "--to", dest="to_time", help="Entries recorded before this time (with offset)."
    )
    parser.add_argument(
        "--key",
        action="append",
        default=[],
        help="Export this key's whole history instead of a time range (repeatable).",
    )
    add_ledger_arguments(parser)


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists():
        print(
            f"keyledger export: {out} exists; choose a new --out file", file=sys.stderr
        )
        return 2
    try:
        scope = ExportScope(
            parse_time(args.from_time) if args.from_time else None,
            parse_time(args.to_time) if args.to_time else None,
            tuple(args.key),
        ).validated()
    except (KeyledgerError, ValueError) as error:
        print(f"keyledger export: {_message(error)}", file=sys.stderr)
        return 2
    service = open_ledger_for(args, "export")
    if service is None:
        return 2
    try:
        export = build_export(service, scope)
        # Handed out only once it is on the record (fail closed).
        record_cli_export(
            service,
            "export",
            {
                "from": args.from_time,
                "to": args.to_time,
                "keys": list(args.key),
            },
            export.data,
            export.manifest,
        )
    except LedgerBrokenError as error:
        print(f"keyledger export: {error.message}", file=sys.stderr)
        return 1
    except KeyledgerError as error:
        print(f"keyledger export: {error.message}", file=sys.stderr)
        return 2
    finally:
        service.close()

    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(export.data)
    except OSError as error:
        print(
            f"keyledger export: cannot write {out}: {error}; choose a new --out file",
            file=sys.stderr,
        )
        return 2
    covered = export.manifest["covered"]
    span = (
        f"positions {covered['first_position']}..{covered['last_position']}"
        if covered
        else "no entries in that scope"
    )
    print(
        f"exported {export.manifest['counts']['entries']} entries ({span}) to {out}; "
        f"verify with: keyledger verify-export {out}"
    )
    return 0


def _message(error: Exception) -> str:
    return error.message if isinstance(error, KeyledgerError) else str(error)
