"""The ``keyledger`` command: serve, demo, verify, rebuild, export, verify-export."""

from __future__ import annotations

import argparse
import sys

from scripts import (
    export_ledger,
    rebuild_projections,
    run_demo,
    run_service,
    verify_export,
    verify_ledger,
)

COMMANDS = {
    "serve": (run_service, "Run the HTTP service."),
    "demo": (run_demo, "Drive a realistic workload at a running service, then verify."),
    "verify": (verify_ledger, "Verify the whole ledger; exit 0 only when intact."),
    "rebuild": (rebuild_projections, "Rebuild projections from events and compare."),
    "export": (
        export_ledger,
        "Write a signed evidence archive of a time range or of keys.",
    ),
    "verify-export": (
        verify_export,
        "Verify an export offline; exit 0 only when everything holds.",
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="keyledger",
        description="An audit-first ledger for the lifecycle of cryptographic keys. "
        "Settings also come from KEYLEDGER_* environment variables.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
    args = parser.parse_args(argv)
    module = COMMANDS[args.command][0]
    return int(module.main(args))


def run() -> None:
    sys.exit(main())
