"""The ``keyledger`` command: serve, demo, verify, rebuild, export, report, audit,
backups, restore, principals, tokens, replicas and drills."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from scripts import (
    audit_tools,
    backup_tools,
    compare_ledgers,
    dr_drill,
    export_ledger,
    principals,
    promote,
    rebuild_projections,
    replica,
    report_compliance,
    run_demo,
    run_service,
    tokens,
    verify_export,
    verify_ledger,
)

# A command is a module or a class with add_arguments(parser) and main(args).
COMMANDS: dict[str, tuple[Any, str]] = {
    "serve": (run_service, "Run the HTTP service."),
    "demo": (run_demo, "Drive a realistic workload at a running service, then verify."),
    "verify": (verify_ledger, "Verify the whole ledger; exit 0 only when intact."),
    "rebuild": (rebuild_projections, "Rebuild projections from events and compare."),
    "export": (
        export_ledger,
        "Write a signed evidence archive of a time range or of keys.",
    ),
    "report": (
        report_compliance,
        "Write the compliance report of a period as HTML or PDF.",
    ),
    "audit": (
        audit_tools,
        "Auditor queries: events by filter, a principal's activity, a key's state "
        "at a time or position, verification of a range (each read recorded).",
    ),
    "verify-export": (
        verify_export,
        "Verify an export offline; exit 0 only when everything holds.",
    ),
    "backup": (backup_tools.Backup, "Back a key up now to its policy's targets."),
    "verify-backup": (
        backup_tools.VerifyBackup,
        "Read every copy of a backup back and check it; exit 0 only when all hold.",
    ),
    "restore": (
        backup_tools.Restore,
        "Restore a key from a backup id or a bundle file, in place or as a new key; "
        "exit 3 when the key's dual-control policy makes it wait for approval.",
    ),
    "prune": (
        backup_tools.Prune,
        "Delete one copy of a backup past its retention date, recorded first; "
        "exit 1 when refused or when the target did not delete it.",
    ),
    "backup-target": (
        backup_tools.ConfigureTarget,
        "Add a backup target or replace its settings, as an event.",
    ),
    "backup-targets": (
        backup_tools.ListTargets,
        "The configured backup targets and the default policy.",
    ),
    "backup-ledger": (
        backup_tools.BackupLedger,
        "Archive the whole ledger (entries, checkpoints, material) to the targets.",
    ),
    "restore-ledger": (
        backup_tools.RestoreLedger,
        "Build a new, empty instance from a ledger archive, verifying every entry.",
    ),
    "backup-status": (
        backup_tools.BackupStatus,
        "Every key's backup status (ok, due, overdue, ...), paged, by status.",
    ),
    "backups": (
        backup_tools.ListBackups,
        "A key's backup status and its backups, newest first.",
    ),
    "backup-policy": (
        backup_tools.SetBackupPolicy,
        "Set the default backup policy, or a key's own (--key), as an event.",
    ),
    "scheduler": (
        backup_tools.Scheduler,
        "Carry out due destructions and take due backups (--once for cron).",
    ),
    "principals": (
        principals,
        "List, show, create principals; replace roles; grant and ungrant keys.",
    ),
    "tokens": (tokens, "Issue (printed once) and revoke principals' tokens."),
    "replica": (
        replica,
        "Follow a primary into this replica's own store; serve reads.",
    ),
    "promote": (promote, "Turn a stopped replica into the primary of a new epoch."),
    "compare": (compare_ledgers, "Find where two ledgers or two exports fork."),
    "dr-drill": (dr_drill, "Lose a primary mid-write, promote its replica, measure."),
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


if __name__ == "__main__":
    run()
