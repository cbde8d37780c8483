"""``keyledger report``: the compliance report of a period from the command line.

It runs against a real data folder and store, as an auditor's cron job would,
and writes a new file; the exit code says whether the ledger verified.
"""

from __future__ import annotations

import io
from pathlib import Path

import pypdfium2 as pdfium
import pytest

from backup.key import BackupKey
from domain.clock import SystemClock
from ledger.service import CommandContext, KeyService, load_local_secrets
from scripts.cli import main
from tests._tamper import overwrite_entry_hash
from tests.conftest import ADMIN

PERIOD = ["--from", "2020-01-01T00:00:00Z", "--to", "2029-01-01T00:00:00Z"]


@pytest.fixture
def options(store_url: str, tmp_path: Path) -> list[str]:
    """A data folder and store with key ``k1`` (hourly rotation); the CLI options."""
    data_dir = tmp_path / "data"
    signer, kek, _ = load_local_secrets(data_dir)
    BackupKey.load_or_create(data_dir)
    service = KeyService.open(
        database_url=store_url, signer=signer, kek=kek, clock=SystemClock()
    )
    try:
        context = CommandContext(ADMIN, "req-setup")
        service.create_key(context, name="k1", rotation_period_seconds=3600)
        service.rotate(context, "k1")
    finally:
        service.close()
    return ["--data-dir", str(data_dir), "--database-url", store_url]


def test_report_writes_html_and_pdf(
    options: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both formats are written, exit 0, and say the ledger verified."""
    html_file, pdf_file = tmp_path / "r.html", tmp_path / "r.pdf"

    html_code = main(["report", *PERIOD, "--out", str(html_file), *options])
    pdf_code = main(
        ["report", *PERIOD, "--format", "pdf", "--out", str(pdf_file), *options]
    )

    assert (html_code, pdf_code) == (0, 0)
    assert "the ledger verified" in capsys.readouterr().out
    page = html_file.read_text(encoding="utf-8")
    assert '<section id="inventory">' in page and "<td>k1</td>" in page
    document = pdfium.PdfDocument(io.BytesIO(pdf_file.read_bytes()))
    assert "k1" in document[0].get_textpage().get_text_range()


def test_report_never_replaces_a_file(
    options: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing --out file is left alone: exit 2 and a line saying why."""
    out = tmp_path / "kept.html"
    out.write_text("mine")

    code = main(["report", *PERIOD, "--out", str(out), *options])

    assert code == 2
    assert "choose a new --out file" in capsys.readouterr().err
    assert out.read_text() == "mine"


@pytest.mark.parametrize(
    ("period", "message"),
    [
        pytest.param(
            ["--from", "2030-01-01T00:00:00Z", "--to", "2020-01-01T00:00:00Z"],
            "'to' must be later than 'from'",
            id="to before from",
        ),
        pytest.param(
            ["--from", "2020-01-01", "--to", "2030-01-01T00:00:00Z"],
            "has no UTC offset",
            id="no offset",
        ),
    ],
)
def test_report_refuses_a_bad_period(
    options: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    period: list[str],
    message: str,
) -> None:
    """A bad period exits 2 before opening anything, and writes no file."""
    out = tmp_path / "r.html"

    code = main(["report", *period, "--out", str(out), *options])

    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_report_of_a_broken_ledger_is_written_and_exits_1(
    options: list[str],
    store_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The report is still written, says where the ledger broke, and exits 1."""
    signer, kek, _ = load_local_secrets(tmp_path / "data", create=False)
    service = KeyService.open(
        database_url=store_url, signer=signer, kek=kek, clock=SystemClock()
    )
    try:
        overwrite_entry_hash(service.ledger, 2)
    finally:
        service.close()
    out = tmp_path / "broken.html"

    code = main(["report", *PERIOD, "--out", str(out), *options])

    assert code == 1
    assert "the ledger did NOT verify (position 2)" in capsys.readouterr().out
    assert "broken at position 2 (HASH_MISMATCH)" in out.read_text(encoding="utf-8")
