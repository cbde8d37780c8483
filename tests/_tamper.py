"""Breaking a stored ledger on purpose, as an attacker with database access would."""

from __future__ import annotations

from ledger.store import LedgerRecorder


def overwrite_entry_hash(ledger: LedgerRecorder, position: int) -> None:
    """Lift the append-only guard and overwrite the stored hash at ``position``."""
    table = ledger.events_table_name
    if type(ledger).__name__.startswith("Postgres"):
        ledger.execute([(f"ALTER TABLE {table} DISABLE TRIGGER USER", ())])
    else:
        ledger.execute([(f"DROP TRIGGER {table}_no_update", ())])
    ledger.execute(
        [
            (
                f"UPDATE {table} SET entry_hash = %s WHERE notification_id = %s",
                ("0" * 64, position),
            )
        ]
    )
