"""Tamper tests: every change to stored history is found, with position and reason."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from eventsourcing.persistence import PersistenceError

from ledger.service import CommandContext, KeyService
from ledger.signing import LedgerSigner
from ledger.verify import verify_ledger


def _is_postgres(service: KeyService) -> bool:
    return type(service.ledger).__name__.startswith("Postgres")


def _disable_append_only(service: KeyService) -> None:
    table = service.ledger.events_table_name
    if _is_postgres(service):
        service.ledger.execute([(f"ALTER TABLE {table} DISABLE TRIGGER USER", ())])
    else:
        service.ledger.execute(
            [(f"DROP TRIGGER {table}_no_{op}", ()) for op in ("update", "delete")]
        )


def _workload(service: KeyService, ctx: CommandContext, events: int = 10) -> None:
    service.create_key(ctx, name="tamper")
    for _ in range(events - 1):
        service.rotate(ctx, "tamper")


def _verify(service: KeyService) -> tuple[bool, int | None, str | None]:
    report = verify_ledger(service.ledger, service.public_keys())
    failure = report.first_failure
    return report.ok, failure and failure.position, failure and failure.reason


def test_intact_ledger_verifies(service: KeyService, ctx: CommandContext) -> None:
    """A ledger nobody touched verifies, with every entry and checkpoint counted."""
    _workload(service, ctx)
    service.checkpoint_now()

    report = verify_ledger(service.ledger, service.public_keys())

    assert report.ok
    assert report.checked == 10
    assert report.checkpoints_checked == 1
    assert report.signing_keys == {service.signer.kid: 10}


@pytest.mark.parametrize(
    ("tamper", "position", "reason"),
    [
        pytest.param(
            lambda t: [
                (
                    f"UPDATE {t} SET entry_hash = %s WHERE notification_id = 4",
                    ("0" * 64,),
                )
            ],
            4,
            "HASH_MISMATCH",
            id="hash changed",
        ),
        pytest.param(
            lambda t: [(f"DELETE FROM {t} WHERE notification_id = 6", ())],
            6,
            "GAP",
            id="row deleted in the middle",
        ),
        pytest.param(
            lambda t: [
                (
                    f"UPDATE {t} SET notification_id = 1000 WHERE notification_id = 3",
                    (),
                ),
                (f"UPDATE {t} SET notification_id = 3 WHERE notification_id = 4", ()),
                (
                    f"UPDATE {t} SET notification_id = 4 WHERE notification_id = 1000",
                    (),
                ),
            ],
            3,
            "POSITION_MISMATCH",
            id="two rows reordered",
        ),
        pytest.param(
            lambda t: [
                (
                    f"UPDATE {t} SET signature = %s WHERE notification_id = 5",
                    (b"\0" * 64,),
                )
            ],
            5,
            "BAD_SIGNATURE",
            id="signature replaced",
        ),
        pytest.param(
            lambda t: [
                (f"UPDATE {t} SET kid = 'ed25519:0000' WHERE notification_id = 2", ())
            ],
            2,
            "UNKNOWN_SIGNING_KEY",
            id="unknown key id",
        ),
        pytest.param(
            lambda t: [
                (
                    f"UPDATE {t} SET originator_version = 99 WHERE notification_id = 7",
                    (),
                )
            ],
            7,
            "COLUMN_MISMATCH",
            id="row column changed",
        ),
    ],
)
def test_tampering_is_reported_at_its_position(
    service: KeyService,
    ctx: CommandContext,
    tamper: Callable[[str], list[tuple[str, tuple[object, ...]]]],
    position: int,
    reason: str,
) -> None:
    """Each kind of change to stored rows fails verification at the changed row."""
    # given an intact ledger of ten entries, with the append-only guard removed
    _workload(service, ctx)
    _disable_append_only(service)

    # when a row is tampered with
    service.ledger.execute(tamper(service.ledger.events_table_name))

    # then verification names the position and the reason
    assert _verify(service) == (False, position, reason)


def test_changed_payload_byte_is_a_hash_mismatch(
    service: KeyService, ctx: CommandContext
) -> None:
    """Changing one byte of a stored payload is caught by re-hashing the bytes."""
    _workload(service, ctx)
    _disable_append_only(service)
    table = service.ledger.events_table_name
    if _is_postgres(service):
        statement = (
            f"UPDATE {table} SET state = overlay(state placing 'g'::bytea from "
            "position('sha256:'::bytea in state) + 7 for 1) WHERE notification_id = 4"
        )
    else:
        statement = (
            f"UPDATE {table} SET state = CAST(substr(state, 1, instr(state, "
            "'sha256:') + 6) || 'g' || substr(state, instr(state, 'sha256:') + 8) "
            "AS BLOB) WHERE notification_id = 4"
        )
    before = service.ledger.query(
        f"SELECT state FROM {table} WHERE notification_id = 4"
    )
    service.ledger.execute([(statement, ())])
    after = service.ledger.query(f"SELECT state FROM {table} WHERE notification_id = 4")
    assert before != after

    assert _verify(service) == (False, 4, "HASH_MISMATCH")


def test_entry_signed_by_an_untrusted_key_is_reported(
    service: KeyService, ctx: CommandContext, open_service: Callable[..., KeyService]
) -> None:
    """An entry appended with a key the verifier does not trust is reported."""
    _workload(service, ctx, events=3)
    forger = open_service(signer=LedgerSigner(Ed25519PrivateKey.generate()))
    _disable_append_only(service)

    # the forger appends with its own key: the ledger's verifier does not trust it
    forger.rotate(ctx, "tamper")

    assert _verify(service) == (False, 4, "UNKNOWN_SIGNING_KEY")


def test_deleted_tail_behind_a_checkpoint_is_truncation(
    service: KeyService, ctx: CommandContext
) -> None:
    """Deleting the newest entries is reported once a checkpoint covered them."""
    _workload(service, ctx)
    service.checkpoint_now()
    _disable_append_only(service)

    service.ledger.execute(
        [
            (
                f"DELETE FROM {service.ledger.events_table_name} "
                "WHERE notification_id > 7",
                (),
            )
        ]
    )

    assert _verify(service) == (False, 8, "TRUNCATED")


def test_checkpoints_are_taken_every_interval(
    open_service: Callable[..., KeyService], ctx: CommandContext
) -> None:
    """With an interval of 4, ten appends leave checkpoints at positions 4 and 8."""
    service = open_service(checkpoint_interval=4)
    _workload(service, ctx)

    rows = service.ledger.query(
        f"SELECT position FROM {service.ledger.events_table_name}_checkpoints "
        "ORDER BY position"
    )

    assert [row["position"] for row in rows] == [4, 8]
    assert verify_ledger(service.ledger, service.public_keys()).checkpoints_checked == 2


@pytest.mark.parametrize(
    "statement",
    [
        pytest.param("UPDATE {t} SET topic = 'x'", id="update"),
        pytest.param("DELETE FROM {t}", id="delete"),
        pytest.param("TRUNCATE {t}", id="truncate"),
        pytest.param("UPDATE {t}_checkpoints SET hash = 'x'", id="update checkpoint"),
        pytest.param("DELETE FROM {t}_checkpoints", id="delete checkpoint"),
    ],
)
def test_database_refuses_to_change_history(
    service: KeyService, ctx: CommandContext, statement: str
) -> None:
    """The database itself refuses UPDATE, DELETE and TRUNCATE of ledger tables."""
    _workload(service, ctx, events=5)
    service.checkpoint_now()
    if statement.startswith("TRUNCATE") and not _is_postgres(service):
        pytest.skip("SQLite has no TRUNCATE; DELETE covers it")
    table = service.ledger.events_table_name

    with pytest.raises(PersistenceError):
        service.ledger.execute([(statement.format(t=table), ())])

    assert _verify(service) == (True, None, None)
    assert service.head_position() == 5


def test_entry_retyped_as_text_is_malformed_not_a_crash(
    service: KeyService, ctx: CommandContext
) -> None:
    """An entry whose column was rewritten as text is reported, not a crash."""
    if _is_postgres(service):
        pytest.skip("PostgreSQL's bytea column cannot hold text")
    _workload(service, ctx, events=3)
    _disable_append_only(service)
    table = service.ledger.events_table_name
    service.ledger.execute(
        [
            (
                f"UPDATE {table} SET state = CAST(state AS TEXT) "
                "WHERE notification_id = 2",
                (),
            )
        ]
    )

    assert _verify(service) == (False, 2, "MALFORMED_ENTRY")
