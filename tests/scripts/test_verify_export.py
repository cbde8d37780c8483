"""``keyledger export`` and ``keyledger verify-export``, and the archived verifier
run from a virtual environment that holds nothing but ``cryptography``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from domain.clock import AdjustableClock
from ledger.service import CommandContext, KeyService, load_local_secrets
from ledger.store import Actor
from scripts.cli import main
from tests.conftest import T0

T = "2026-03-01T00:00:00Z"
_NETWORK_TROUBLE = (
    "Could not find a version",
    "No matching distribution",
    "connection",
    "Temporary failure",
    "Network is unreachable",
    "Max retries",
)


def _six_entries(folder: Path, database_url: str) -> Path:
    signer, kek, _ = load_local_secrets(folder)
    service = KeyService.open(
        database_url=database_url,
        signer=signer,
        kek=kek,
        clock=AdjustableClock(T0),
        checkpoint_interval=4,
    )
    context = CommandContext(Actor("auditor-test", "tok_1"), "req-1")
    service.create_key(context, name="k", description="=cmd|'/C calc'!A0")
    for _ in range(5):
        service.rotate(context, "k")
    service.close()
    return folder


@pytest.fixture
def data_dir(tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data folder and a ledger of six entries on either store, as the service
    leaves them; the commands find the store through KEYLEDGER_DATABASE_URL."""
    monkeypatch.setenv("KEYLEDGER_DATABASE_URL", store_url)
    return _six_entries(tmp_path / "data", store_url)


@pytest.fixture
def sqlite_data_dir(tmp_path: Path) -> Path:
    """A data folder holding its ledger of six entries in SQLite."""
    folder = tmp_path / "data"
    return _six_entries(folder, f"sqlite:///{folder / 'ledger.sqlite3'}")


def _export(data_dir: Path, out: Path, *extra: str) -> int:
    return main(["export", "--out", str(out), "--data-dir", str(data_dir), *extra])


def test_export_then_verify_export_succeeds(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An exported archive verifies with exit 0 and says completeness is not proven."""
    out = tmp_path / "evidence.zip"

    assert _export(data_dir, out) == 0
    assert main(["verify-export", str(out)]) == 0

    printed = capsys.readouterr().out
    assert "exported 6 entries (positions 1..6)" in printed
    assert "export intact: 6 entries" in printed
    assert "completeness NOT proven" in printed


def test_verify_export_with_a_kept_checkpoint_as_json(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kept checkpoint inside the export proves completeness in the JSON report."""
    out = tmp_path / "evidence.zip"
    assert _export(data_dir, out, "--key", "k") == 0
    with zipfile.ZipFile(out) as archive:
        [kept] = json.loads(archive.read("checkpoints.json"))
    checkpoint = tmp_path / "kept.json"
    checkpoint.write_text(json.dumps({"checkpoint": kept}))
    capsys.readouterr()

    status = main(
        ["verify-export", str(out), "--checkpoint", str(checkpoint), "--json"]
    )

    report = json.loads(capsys.readouterr().out)
    assert status == 0 and report["ok"]
    assert report["scope"] == {"kind": "keys", "keys": ["k"]}


def test_export_of_a_period_and_of_an_empty_one_verify(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A period holding the entries exports them all; a later one exports none.

    (Each export is recorded as it is made, at the real time: the later period
    ends long before now, so it holds none of those records.)"""
    period = tmp_path / "period.zip"
    empty = tmp_path / "empty.zip"

    assert _export(data_dir, period, "--from", T, "--to", "2026-03-02T00:00:00Z") == 0
    later = ["--from", "2026-03-02T00:00:00Z", "--to", "2026-04-01T00:00:00Z"]
    assert _export(data_dir, empty, *later) == 0
    assert "exported 0 entries (no entries in that scope)" in capsys.readouterr().out

    assert main(["verify-export", str(period)]) == 0
    assert "export intact: 6 entries, positions 1..6" in capsys.readouterr().out
    assert main(["verify-export", str(empty)]) == 0
    assert "export intact and EMPTY" in capsys.readouterr().out


def test_verify_export_exit_codes(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 1 names a broken archive's position and reason; exit 2 if unreadable."""
    out = tmp_path / "evidence.zip"
    assert _export(data_dir, out) == 0
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(out) as archive:
        archive.extractall(folder)
    lines = (folder / "entries.jsonl").read_text().splitlines()
    del lines[2]
    (folder / "entries.jsonl").write_text("\n".join(lines) + "\n")
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    capsys.readouterr()

    assert main(["verify-export", str(folder)]) == 1
    assert "export BROKEN at position 3: GAP" in capsys.readouterr().out
    assert main(["verify-export", str(junk)]) == 2
    assert main(["verify-export", str(out), "--checkpoint", str(junk)]) == 2


def test_export_refuses_an_existing_file_and_a_mixed_scope(
    data_dir: Path, tmp_path: Path
) -> None:
    """The export never overwrites a file and refuses keys mixed with times."""
    out = tmp_path / "evidence.zip"
    out.write_bytes(b"keep me")

    assert _export(data_dir, out) == 2
    assert out.read_bytes() == b"keep me"
    assert _export(data_dir, tmp_path / "b.zip", "--key", "k", "--from", T) == 2


def test_archived_verifier_runs_with_only_cryptography(
    sqlite_data_dir: Path, tmp_path: Path
) -> None:
    """The verifier copied into an export runs from a venv holding only cryptography."""
    out = tmp_path / "evidence.zip"
    assert _export(sqlite_data_dir, out) == 0
    auditor = tmp_path / "auditor"
    auditor.mkdir()
    with zipfile.ZipFile(out) as archive:
        (auditor / "offline.py").write_bytes(archive.read("verifier/offline.py"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "cryptography"],
        capture_output=True,
        text=True,
    )
    if installed.returncode != 0:
        trouble = installed.stdout + installed.stderr
        if os.environ.get("CI", "").lower() != "true" and any(
            sign in trouble for sign in _NETWORK_TROUBLE
        ):
            pytest.skip("the package index is unreachable: cannot install cryptography")
        pytest.fail(f"pip install cryptography failed:\n{trouble}")
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    )
    names = {item["name"].lower() for item in json.loads(listed.stdout)}

    ran = subprocess.run(
        [str(python), "offline.py", str(out)],
        cwd=auditor,
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONNOUSERSITE": "1"},
    )

    assert names - {"pip", "setuptools", "cffi", "pycparser"} == {"cryptography"}
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "export intact: 6 entries" in ran.stdout
