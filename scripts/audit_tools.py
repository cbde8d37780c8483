"""``keyledger audit``: the auditor's queries from the command line.

The same four questions as ``/v1/audit/...``: entries by filter, one principal's
activity, a key's state at a time or position, and verification of a range.
Every read is recorded first (``AuditTrailRead``, attributed to the user who ran
it, with the options asked for); if it cannot be recorded, nothing is shown.
Output is JSON: one entry per line for listings, one document otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from domain.errors import KeyledgerError
from ledger.audit import AuditFilter, key_state, search, verify_range
from ledger.service import KeyService, parse_optional_time
from scripts.common import add_ledger_arguments, open_ledger_for, record_cli_read

PAGE = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    queries = parser.add_subparsers(dest="query", required=True)

    events = queries.add_parser(
        "events", help="Entries matching every filter, in position order (JSON lines)."
    )
    events.add_argument("--key", help="Entries about this key.")
    events.add_argument("--principal", help="Entries by this principal.")
    events.add_argument(
        "--type",
        dest="types",
        action="append",
        default=[],
        help="An event type, e.g. keyledger.key.Rotated (repeatable).",
    )
    events.add_argument(
        "--from", dest="from_time", help="Recorded at or after this time (with offset)."
    )
    events.add_argument(
        "--to", dest="to_time", help="Recorded before this time (with offset)."
    )
    events.add_argument("--outcome", help="success or refused.")
    _paging(events)

    activity = queries.add_parser(
        "activity", help="Everything one principal did or was refused (JSON lines)."
    )
    activity.add_argument("principal")
    _paging(activity)

    state = queries.add_parser(
        "key-state", help="A key as recorded at a time or a ledger position (JSON)."
    )
    state.add_argument("name")
    point = state.add_mutually_exclusive_group(required=True)
    point.add_argument("--at", help="A time with offset, e.g. 2026-03-01T12:00:00Z.")
    point.add_argument("--position", type=int, help="A ledger position.")

    verify = queries.add_parser(
        "verify-range",
        help="Verify positions FROM..TO inclusive; exit 0 only when they hold.",
    )
    verify.add_argument("from_position", type=int)
    verify.add_argument("to_position", type=int)

    for sub in (events, activity, state, verify):
        add_ledger_arguments(sub)


def _paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--after", type=int, default=0, help="Only entries after this position."
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="At most this many entries (all)."
    )


def main(args: argparse.Namespace) -> int:
    service = open_ledger_for(args, "audit")
    if service is None:
        return 2
    try:
        return _run(service, args)
    except KeyledgerError as error:
        print(f"keyledger audit: {error.message} ({error.code})", file=sys.stderr)
        return 2
    finally:
        service.close()


def _run(service: KeyService, args: argparse.Namespace) -> int:
    asked = _asked(args)
    if args.query == "key-state":
        if args.position is not None and args.position < 1:
            print("keyledger audit: --position is 1 or more", file=sys.stderr)
            return 2
        at = parse_optional_time(args.at)
        record_cli_read(service, "audit key-state", args.name, asked)
        state = key_state(service, args.name, at=at, position=args.position)
        print(json.dumps(state, indent=2, ensure_ascii=False))
        return 0
    if args.query == "verify-range":
        if not 1 <= args.from_position <= args.to_position:
            print(
                "keyledger audit: give 1 <= FROM <= TO (INVALID_RANGE)", file=sys.stderr
            )
            return 2
        record_cli_read(service, "audit verify-range", None, asked)
        found = verify_range(service, args.from_position, args.to_position)
        print(json.dumps(found, indent=2, ensure_ascii=False))
        return 0 if found["ok"] else 1
    if args.query == "activity":
        query = AuditFilter(principal=args.principal)
        key = None
    else:
        query = AuditFilter(
            key=args.key,
            principal=args.principal,
            types=tuple(args.types),
            recorded_from=parse_optional_time(args.from_time),
            recorded_to=parse_optional_time(args.to_time),
            outcome=args.outcome,
        )
        key = args.key
    if args.after < 0 or (args.limit is not None and args.limit < 1):
        print(
            "keyledger audit: --after is 0 or more, --limit 1 or more", file=sys.stderr
        )
        return 2
    query.where()  # refuse a bad filter before anything is recorded
    record_cli_read(service, f"audit {args.query}", key, asked)
    _print_all(service, query, args.after, args.limit)
    return 0


def _print_all(
    service: KeyService, query: AuditFilter, after: int, limit: int | None
) -> None:
    left = limit
    cursor: int | None = after
    while cursor is not None and (left is None or left > 0):
        page = PAGE if left is None else min(PAGE, left)
        entries, cursor = search(service, query, after=cursor, limit=page)
        for entry in entries:
            sys.stdout.write(json.dumps(entry, ensure_ascii=False) + "\n")
        if left is not None:
            left -= len(entries)


def _asked(args: argparse.Namespace) -> list[list[str]]:
    """The options of this read as [name, value] pairs, for its record."""
    skip = {"query", "data_dir", "database_url", "command"}
    asked: list[list[str]] = []
    for name, value in sorted(vars(args).items()):
        if name in skip or value is None or value == []:
            continue
        values: list[Any] = value if isinstance(value, list) else [value]
        asked += [[name, str(item)[:200]] for item in values]
    return asked
