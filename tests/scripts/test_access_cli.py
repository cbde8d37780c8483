"""``keyledger principals`` and ``keyledger tokens`` on the service's data folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from domain.clock import AdjustableClock
from domain.errors import AuthenticationError
from ledger.access import AccessService
from ledger.service import KeyService, load_local_secrets
from scripts.cli import main
from tests.conftest import T0


@pytest.fixture
def data_dir(tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data folder and an empty ledger on either store, as a first start of the
    service leaves them; the commands find the store through KEYLEDGER_DATABASE_URL."""
    folder = tmp_path / "data"
    signer, kek, _ = load_local_secrets(folder)
    KeyService.open(
        database_url=store_url,
        signer=signer,
        kek=kek,
        clock=AdjustableClock(T0),
    ).close()
    monkeypatch.setenv("KEYLEDGER_DATABASE_URL", store_url)
    return folder


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _open(data_dir: Path) -> KeyService:
    signer, kek, _ = load_local_secrets(data_dir, create=False)
    return KeyService.open(
        database_url=os.environ["KEYLEDGER_DATABASE_URL"],
        signer=signer,
        kek=kek,
        clock=AdjustableClock(T0),
        create=False,
    )


def test_principals_and_tokens_from_the_command_line(
    data_dir: Path, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Create, issue (printed once), use, revoke; every change on the ledger."""
    folder = str(data_dir)
    code, out, _ = _run(
        capsys, "principals", "create", "ops", "--role", "custodian",
        "--data-dir", folder,
    )  # fmt: skip
    assert code == 0 and json.loads(out)["roles"] == ["custodian"]
    code, out, _ = _run(capsys, "tokens", "issue", "ops", "--data-dir", folder)
    issued = json.loads(out)
    assert code == 0 and issued["token"].startswith("kl_")

    service = _open(data_dir)
    try:
        access = AccessService(service.app, service.clock)
        actor = access.authenticate(issued["token"])
        assert actor is not None and actor.principal == "ops"
        entries = service.events()
        assert [entry["actor"]["principal"] for entry in entries] == ["local-admin"] * 2
        assert issued["token"] not in json.dumps(entries)
    finally:
        service.close()

    code, out, _ = _run(
        capsys, "tokens", "revoke", issued["token_id"], "--reason", "rotated",
        "--data-dir", folder,
    )  # fmt: skip
    assert code == 0
    service = _open(data_dir)
    try:
        with pytest.raises(AuthenticationError) as refused:
            AccessService(service.app, service.clock).authenticate(issued["token"])
        assert refused.value.code == "TOKEN_REVOKED"
    finally:
        service.close()
    code, out, _ = _run(
        capsys, "principals", "list", "--data-dir", folder,
        "--database-url", store_url,
    )  # fmt: skip
    assert [p["name"] for p in json.loads(out)] == ["ops"]
    # The commands used the store given, never a default file in the data folder.
    assert not (data_dir / "ledger.sqlite3").exists()
    code, out, _ = _run(
        capsys, "principals", "grant", "ops", "--keys", "pay-*",
        "--permission", "key:read", "--data-dir", folder,
    )  # fmt: skip
    assert code == 0
    assert json.loads(out)["grants"] == [{"keys": "pay-*", "permissions": ["key:read"]}]
    code, out, _ = _run(
        capsys, "principals", "ungrant", "ops", "--keys", "pay-*", "--data-dir", folder
    )
    assert code == 0 and json.loads(out)["grants"] == []


def test_refusals_exit_1_with_the_code(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown principal or role is refused with its code; nothing is recorded."""
    folder = str(data_dir)
    code, _, err = _run(capsys, "tokens", "issue", "nobody", "--data-dir", folder)
    assert code == 1 and "PRINCIPAL_NOT_FOUND" in err
    code, _, err = _run(
        capsys, "principals", "create", "x", "--role", "root", "--data-dir", folder
    )
    assert code == 1 and "INVALID_ROLE" in err
    service = _open(data_dir)
    try:
        assert service.head_position() == 0
    finally:
        service.close()
