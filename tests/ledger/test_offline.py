"""The export archive and the offline verifier: round trips, tampering, scopes, CSV."""

from __future__ import annotations

import ast
import base64
import csv
import io
import json
import sys
import zipfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import rfc8785

from domain.clock import AdjustableClock
from domain.errors import LedgerBrokenError
from ledger import offline
from ledger.export import ExportScope, build_export
from ledger.service import CommandContext, KeyService
from ledger.store import Actor
from tests.conftest import T0

Files = dict[str, bytes]
HOUR = timedelta(hours=1)
NASTY = '=HYPERLINK("http://x")\u2028@SUM(1)\r\n\t-2+3 é 😀 \u202e'


def unzip(data: bytes) -> Files:
    """The members of a zip archive by name."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def workload(service: KeyService, clock: AdjustableClock) -> None:
    """Ten entries over three hours: key a (7), key b (3), with awkward text."""
    nasty = CommandContext(Actor(NASTY, "tok_x"), "req-1")
    service.create_key(nasty, name="a", description=NASTY)
    for _ in range(3):
        service.rotate(nasty, "a")
    clock.advance(HOUR)
    service.create_key(nasty, name="b")
    service.rotate(nasty, "b")
    service.rotate(nasty, "a")
    clock.advance(HOUR)
    service.rotate(nasty, "a")
    service.rotate(nasty, "b")
    service.rotate(nasty, "a")


@pytest.fixture
def ledger(
    open_service: Callable[..., KeyService], clock: AdjustableClock
) -> KeyService:
    """A service with checkpoints every 4 entries and the ten-entry workload."""
    service = open_service(checkpoint_interval=4)
    workload(service, clock)
    return service


def verify(files: Files, **options: Any) -> tuple[bool, int | None, str | None]:
    report = offline.verify_export(files, **options)
    failure = report.first_failure
    return report.ok, failure and failure.position, failure and failure.reason


def lines(files: Files) -> list[dict[str, Any]]:
    return [json.loads(line) for line in files[offline.ENTRIES_FILE].splitlines()]


def with_lines(files: Files, items: list[dict[str, Any]]) -> Files:
    data = b"".join(json.dumps(item).encode() + b"\n" for item in items)
    return {**files, offline.ENTRIES_FILE: data}


# The module itself ----------------------------------------------------------------


def test_offline_module_imports_only_stdlib_and_cryptography() -> None:
    """The verifier can be copied out: it imports only stdlib and cryptography."""
    tree = ast.parse(Path(offline.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0
            imported.add((node.module or "").split(".")[0])

    assert imported - set(sys.stdlib_module_names) == {"cryptography"}


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(
            offline.checkpoint_document(
                position=2**53 - 1,
                hash_hex="ab" * 32,
                recorded_at="2026-03-01T12:00:00.000000Z",
                kid="ed25519:0123456789abcdef",
            ),
            id="checkpoint",
        ),
        pytest.param(
            {"\U0001f600": 1, "\uff61": 2, 'a\u2028\x01"\\é': [True, None, -5]},
            id="awkward names and strings",
        ),
    ],
)
def test_canonical_document_equals_rfc8785(document: dict[str, Any]) -> None:
    """The offline encoder writes the same bytes as the rfc8785 package."""
    assert offline.canonical_document(document) == rfc8785.dumps(document)


# Round trips --------------------------------------------------------------------


def test_whole_ledger_export_verifies(ledger: KeyService) -> None:
    """An export of the whole ledger verifies, with its checkpoints matched."""
    export = build_export(ledger, ExportScope())

    report = offline.verify_export(unzip(export.data))

    assert report.ok, report.first_failure
    assert (report.entries, report.first_position, report.last_position) == (10, 1, 10)
    assert report.checkpoints_matched == 2
    assert not report.completeness_proven
    assert "NOT proven" in report.completeness
    assert export.filename.endswith("-p1-10.zip")


def test_time_range_export_holds_exactly_the_range(
    ledger: KeyService,
) -> None:
    """A range [from, to) exports the entries recorded in it, contiguous, verified."""
    export = build_export(ledger, ExportScope(T0 + HOUR, T0 + 2 * HOUR))
    files = unzip(export.data)

    assert [item["position"] for item in lines(files)] == [5, 6, 7]
    assert verify(files) == (True, None, None)
    checkpoints = json.loads(files[offline.CHECKPOINTS_FILE])
    assert [checkpoint["position"] for checkpoint in checkpoints] == [8]


def test_key_set_export_holds_whole_histories(ledger: KeyService) -> None:
    """An export by key holds every entry of those keys and nothing else."""
    files = unzip(build_export(ledger, ExportScope(keys=("b",))).data)

    assert [item["stream_version"] for item in lines(files)] == [1, 2, 3]
    assert [item["position"] for item in lines(files)] == [5, 6, 9]
    assert verify(files) == (True, None, None)


def test_empty_range_is_a_valid_empty_export(ledger: KeyService) -> None:
    """A range with no entries gives an export that verifies and says it is empty."""
    files = unzip(build_export(ledger, ExportScope(T0 + 10 * HOUR)).data)

    report = offline.verify_export(files)

    assert report.ok and report.entries == 0
    assert "EMPTY" in offline.describe(report)


def test_export_of_a_tampered_ledger_is_refused(ledger: KeyService) -> None:
    """An export over a tampered ledger is refused with the position and reason."""
    table = ledger.ledger.events_table_name
    if type(ledger.ledger).__name__.startswith("Postgres"):
        ledger.ledger.execute([(f"ALTER TABLE {table} DISABLE TRIGGER USER", ())])
    else:
        ledger.ledger.execute([(f"DROP TRIGGER {table}_no_update", ())])
    ledger.ledger.execute(
        [(f"UPDATE {table} SET signature = %s WHERE notification_id = 6", (b"0" * 64,))]
    )

    with pytest.raises(LedgerBrokenError) as refused:
        build_export(ledger, ExportScope(T0 + HOUR))

    assert refused.value.details == {"position": 6, "reason": "BAD_SIGNATURE"}


# Tampering with the archive --------------------------------------------------------


def _change_entry_byte(files: Files) -> Files:
    items = lines(files)
    raw = base64.b64decode(items[3]["entry"])
    items[3]["entry"] = base64.b64encode(
        raw.replace(b'"request_id":"r', b'"request_id":"R', 1)
    ).decode()
    return with_lines(files, items)


def _replace_signature(files: Files) -> Files:
    items = lines(files)
    items[4]["signature"] = "00" * 64
    return with_lines(files, items)


def _remove_middle(files: Files) -> Files:
    items = lines(files)
    del items[5]
    return with_lines(files, items)


def _reorder_pair(files: Files) -> Files:
    items = lines(files)
    items[2], items[3] = items[3], items[2]
    return with_lines(files, items)


def _rehash_entry(files: Files) -> Files:
    items = lines(files)
    raw = base64.b64decode(items[6]["entry"]).replace(b"req-1", b"req-2", 1)
    items[6]["entry"] = base64.b64encode(raw).decode()
    items[6]["hash"] = offline.entry_hash(raw)
    return with_lines(files, items)


def _change_manifest(files: Files) -> Files:
    manifest = files[offline.MANIFEST_FILE]
    return {**files, offline.MANIFEST_FILE: manifest.replace(b'"20', b'"19', 1)}


def _change_member(files: Files) -> Files:
    return {**files, offline.CSV_VIEW_FILE: files[offline.CSV_VIEW_FILE] + b"x"}


def _change_verifier(files: Files) -> Files:
    return {**files, offline.VERIFIER_FILE: files[offline.VERIFIER_FILE] + b"#"}


def _redigest_changed_entries(files: Files) -> Files:
    changed = _change_entry_byte(files)
    manifest = json.loads(changed[offline.MANIFEST_FILE])
    manifest["files"][offline.ENTRIES_FILE] = offline.hashlib.sha256(
        changed[offline.ENTRIES_FILE]
    ).hexdigest()
    return {**changed, offline.MANIFEST_FILE: json.dumps(manifest).encode()}


def _add_member(files: Files) -> Files:
    return {**files, "extra.txt": b"hello"}


def _drop_member(files: Files) -> Files:
    return {name: data for name, data in files.items() if name != "README.txt"}


def _forge_checkpoint(files: Files) -> Files:
    checkpoints = json.loads(files[offline.CHECKPOINTS_FILE])
    checkpoints[0]["hash"] = "ab" * 32
    return {**files, offline.CHECKPOINTS_FILE: json.dumps(checkpoints).encode()}


@pytest.mark.parametrize(
    ("tamper", "position", "reason"),
    [
        pytest.param(_change_entry_byte, 4, "HASH_MISMATCH", id="entry byte"),
        pytest.param(_replace_signature, 5, "BAD_SIGNATURE", id="signature"),
        pytest.param(_remove_middle, 6, "GAP", id="entry removed in the middle"),
        pytest.param(_reorder_pair, 3, "POSITION_MISMATCH", id="pair reordered"),
        pytest.param(_rehash_entry, 7, "BAD_SIGNATURE", id="entry and hash changed"),
        pytest.param(_change_manifest, 0, "MANIFEST_INVALID", id="manifest byte"),
        pytest.param(_change_member, 0, "FILE_DIGEST_MISMATCH", id="member file"),
        pytest.param(_change_verifier, 0, "FILE_DIGEST_MISMATCH", id="verifier"),
        pytest.param(
            _redigest_changed_entries, 0, "MANIFEST_INVALID", id="digest recomputed"
        ),
        pytest.param(_add_member, 0, "FILE_UNLISTED", id="member added"),
        pytest.param(_drop_member, 0, "FILE_MISSING", id="member removed"),
        pytest.param(_forge_checkpoint, 4, "CHECKPOINT_INVALID", id="checkpoint"),
    ],
)
def test_tampered_archive_is_reported_at_its_position(
    ledger: KeyService,
    tamper: Callable[[Files], Files],
    position: int,
    reason: str,
) -> None:
    """Each change to an archive fails verification with its position and reason."""
    files = unzip(build_export(ledger, ExportScope()).data)
    assert verify(files) == (True, None, None)

    assert verify(tamper(files)) == (False, position, reason)


def test_removed_entry_of_a_key_export_is_a_stream_gap(ledger: KeyService) -> None:
    """Removing an entry from an export by key breaks the stream's versions."""
    files = unzip(build_export(ledger, ExportScope(keys=("a", "b"))).data)
    items = lines(files)
    del items[4]  # position 5: key b, version 1

    assert verify(with_lines(files, items)) == (False, 6, "STREAM_GAP")


# Checkpoints an auditor kept -------------------------------------------------------


def _kept(service: KeyService, position: int, hash_hex: str | None = None) -> Any:
    rows = service.ledger.query(
        f"SELECT entry_hash, recorded_at FROM {service.ledger.events_table_name} "
        "WHERE notification_id = %s",
        (position,),
    )
    checkpoint = service.app.sequencer.checkpoint(
        position, hash_hex or rows[0]["entry_hash"], rows[0]["recorded_at"]
    )
    return offline.load_checkpoint(json.dumps(checkpoint.as_json()).encode())


def test_kept_checkpoint_inside_the_export_proves_consistency(
    ledger: KeyService,
) -> None:
    """A kept checkpoint that matches an exported entry proves the chain reaches it."""
    files = unzip(build_export(ledger, ExportScope(T0 + HOUR)).data)

    report = offline.verify_export(files, outside_checkpoint=_kept(ledger, 9))

    assert report.ok and report.completeness_proven
    assert "position 9" in report.completeness


@pytest.mark.parametrize(
    ("position", "hash_hex", "expected"),
    [
        pytest.param(7, "cd" * 32, (False, 7, "CHECKPOINT_MISMATCH"), id="forked"),
        pytest.param(3, None, (True, None, None), id="before the range"),
    ],
)
def test_kept_checkpoint_is_checked_against_the_export(
    ledger: KeyService, position: int, hash_hex: str | None, expected: Any
) -> None:
    """A kept checkpoint must match the export where they overlap."""
    files = unzip(build_export(ledger, ExportScope(T0 + HOUR)).data)

    outside = _kept(ledger, position, hash_hex)

    assert verify(files, outside_checkpoint=outside) == expected


def test_kept_checkpoint_beyond_the_export_head_is_truncation(
    ledger: KeyService, clock: AdjustableClock
) -> None:
    """An export whose ledger head is behind a kept checkpoint is TRUNCATED."""
    files = unzip(build_export(ledger, ExportScope()).data)
    ledger.rotate(CommandContext(Actor("x", "t"), "r"), "a")

    outside = _kept(ledger, 11)

    assert verify(files, outside_checkpoint=outside) == (False, 11, "TRUNCATED")


def test_kept_checkpoint_with_a_bad_signature_is_invalid(ledger: KeyService) -> None:
    """A kept checkpoint whose signature does not verify is refused."""
    files = unzip(build_export(ledger, ExportScope()).data)
    outside = {**_kept(ledger, 8), "signature": b"\0" * 64}

    assert verify(files, outside_checkpoint=outside) == (
        False,
        8,
        "CHECKPOINT_INVALID",
    )


# Views -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        pytest.param("=1+1", "'=1+1", id="equals"),
        pytest.param("+1", "'+1", id="plus"),
        pytest.param("-1", "'-1", id="minus"),
        pytest.param("@SUM(A1)", "'@SUM(A1)", id="at"),
        pytest.param("\tx", "'\\u0009x", id="tab"),
        pytest.param("\rx", "'\\u000dx", id="carriage return"),
        pytest.param("a\nb\u2028c\x00", "a\\u000ab\\u2028c\\u0000", id="breaks"),
        pytest.param("\u202eevil", "\\u202eevil", id="bidi override"),
        pytest.param("é 😀 a-b", "é 😀 a-b", id="unicode kept"),
        pytest.param(None, "", id="none"),
    ],
)
def test_csv_cells_are_neutralised(value: str | None, cell: str) -> None:
    """Formula starts get an apostrophe; control characters become visible escapes."""
    assert offline.csv_cell(value) == cell


def test_csv_view_has_one_line_per_entry(ledger: KeyService) -> None:
    """Awkward actor names and descriptions neither break rows nor run as formulas."""
    files = unzip(build_export(ledger, ExportScope()).data)
    text = files[offline.CSV_VIEW_FILE].decode("utf-8-sig")

    physical = text.split("\r\n")
    rows = list(csv.reader(io.StringIO(text)))

    assert len(physical) == 12 and physical[-1] == ""
    assert len(rows) == 11 and all(len(row) == 12 for row in rows)
    header = rows[0]
    principal = rows[1][header.index("actor_principal")]
    assert principal.startswith("'=HYPERLINK")
    assert "\\u2028" in principal and "é 😀" in principal
    jsonl = files[offline.JSONL_VIEW_FILE].decode().split("\n")
    assert len(jsonl) == 11
    assert json.loads(jsonl[0])["actor_principal"] == NASTY


def test_malformed_manifest_members_are_broken_not_a_crash(
    ledger: KeyService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A manifest whose members have the wrong shapes is reported, exit 1."""
    files = unzip(build_export(ledger, ExportScope()).data)
    manifest = json.loads(files[offline.MANIFEST_FILE])
    manifest["signing_keys"], manifest["counts"] = ["not an object"], 7
    files[offline.MANIFEST_FILE] = json.dumps(manifest).encode()
    folder = tmp_path / "export"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)

    assert offline.main([str(folder)]) == 1
    assert "MANIFEST_INVALID" in capsys.readouterr().out
