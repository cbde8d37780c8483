"""End to end: the real server process, the demo over real HTTP, then the CLI checks."""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """A ``keyledger serve`` process and what it printed."""

    def __init__(
        self, env: dict[str, str], log: Path, command: Sequence[str] = ("serve",)
    ) -> None:
        self.env = env
        self.port = int(env["KEYLEDGER_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("ab") as sink:
            self.process = subprocess.Popen(
                [str(BIN / "keyledger"), *command],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited early:\n{log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)  # polling for start-up, not a timing assertion
        self.stop()
        raise AssertionError(f"server did not start:\n{log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def server_env(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[dict[str, str]]:
    """The environment of a service with its own data folder and store."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("KEYLEDGER_")
    }
    env.update(
        KEYLEDGER_DATA_DIR=str(tmp_path / "data"),
        KEYLEDGER_PORT=str(_free_port()),
        KEYLEDGER_DEV_CLOCK="true",
        KEYLEDGER_CHECKPOINT_INTERVAL="50",
    )
    if request.param == "postgres":
        env["KEYLEDGER_DATABASE_URL"] = str(request.getfixturevalue("pg_url"))
    yield env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "keyledger"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_demo_against_real_server_then_verify(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    """The demo runs over HTTP against the real server and the ledger verifies."""
    log = tmp_path / "server.log"
    server = Server(server_env, log)
    try:
        token = re.search(r"kl_[A-Za-z0-9_-]+", log.read_text())
        assert token, "the first start must print the bootstrap token"
        demo = _cli(
            server_env,
            "demo",
            "--url",
            server.url,
            "--token",
            token.group(0),
            "--keys",
            "6",
            "--rotations",
            "3",
            "--workers",
            "3",
            "--quiet",
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "verification: OK" in demo.stdout
        # An auditor principal exports the demo's period with its own token, and
        # ``keyledger verify-export`` proves it against the kept checkpoint.
        auditor = re.search(r"^auditor: export intact.*$", demo.stdout, re.MULTILINE)
        assert auditor, demo.stdout
        assert "exported by auditor-" in auditor.group(0)
        assert (
            "checked offline by keyledger verify-export: consistent with your "
            "checkpoint at position" in auditor.group(0)
        )
        assert (
            "data: 6 ciphertexts under version 2 still decrypt; 6 under version 1 "
            "are refused (VERSION_DESTROYED)" in demo.stdout
        )
        assert "6 scheduled destructions completed" in demo.stdout
        assert "backed up to site-a and site-b and verified" in demo.stdout
        assert "restored (one from each site) and decrypt" in demo.stdout
        assert "restoring it is refused (RESTORE_WOULD_UNDESTROY)" in demo.stdout
    finally:
        server.stop()

    verify = _cli(server_env, "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "ledger intact" in verify.stdout
    rebuilt = _cli(server_env, "rebuild", "--check-only")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "equals the live read side" in rebuilt.stdout

    # secrets live only in the data folder, readable by the owner alone
    data = Path(server_env["KEYLEDGER_DATA_DIR"])
    for name in ("signing-key.pem", "kek.bin", "admin-token.sha256", "backup-key.bin"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600
    # the token is printed once, and never logged
    assert log.read_text().count(token.group(0)) == 1


def test_demo_without_the_dev_clock_runs_twice_and_keeps_its_backups_readable(
    tmp_path: Path,
) -> None:
    """Without the dev clock the demo still exits 0; a second run reuses the
    first run's backup folders, so the first run's backups still verify."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYLEDGER_")}
    env.update(
        KEYLEDGER_DATA_DIR=str(tmp_path / "data"), KEYLEDGER_PORT=str(_free_port())
    )
    log = tmp_path / "server.log"
    server = Server(env, log)
    try:
        token = re.search(r"kl_[A-Za-z0-9_-]+", log.read_text())
        assert token
        small = ["--keys", "2", "--rotations", "2", "--workers", "1", "--quiet"]
        runs = [
            _cli(
                env,
                "demo",
                "--url",
                server.url,
                "--token",
                token.group(0),
                "--prefix",
                prefix,
                *small,
            )
            for prefix in ("one", "two")
        ]
        for run in runs:
            assert run.returncode == 0, run.stdout + run.stderr
            assert "scheduled destructions left pending" in run.stdout
            assert "RESTORE_WOULD_UNDESTROY" not in run.stdout
        headers = {"Authorization": f"Bearer {token.group(0)}"}
        listed = httpx.get(f"{server.url}/v1/keys/one-000/backups", headers=headers)
        [first] = listed.json()["backups"]
        verified = httpx.post(
            f"{server.url}/v1/backups/{first['backup_id']}/verify", headers=headers
        )
        assert verified.status_code == 200, verified.text
        assert verified.json()["backup"]["verified_ok"] is True
    finally:
        server.stop()


def test_second_start_reuses_keys_and_token(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    """A restart keeps the signing key and the token, and prints no new token."""
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    server = Server(server_env, first_log)
    token = re.search(r"kl_[A-Za-z0-9_-]+", first_log.read_text())
    assert token
    headers = {"Authorization": f"Bearer {token.group(0)}"}
    created = httpx.post(
        f"{server.url}/v1/keys", json={"name": "kept"}, headers=headers
    )
    assert created.status_code == 201
    server.stop()

    server = Server(server_env, second_log)
    try:
        assert "kl_" not in second_log.read_text()
        # a forwarded address from no trusted proxy is not what the ledger records
        spoofed = {**headers, "X-Forwarded-For": "203.0.113.9"}
        rotated = httpx.post(f"{server.url}/v1/keys/kept/rotate", headers=spoofed)
        assert rotated.status_code == 200
        report = httpx.get(f"{server.url}/v1/ledger/verify", headers=headers).json()
        # per run: started, the first use of the bootstrap token, the command;
        # and the first run's stop
        feed = httpx.get(f"{server.url}/v1/events", headers=headers).json()
        types = [entry["type"] for entry in feed["events"]]
        assert report["ok"] and report["checked"] == 7, types
        assert types[0] == types[4] == "keyledger.service.Started"
        assert types[3] == "keyledger.service.Stopping"
        assert feed["events"][6]["actor"]["client"] == "127.0.0.1"
    finally:
        server.stop()


def test_tampered_ledger_fails_verify_with_position(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    """``keyledger verify`` exits non-zero and names the first broken position."""
    if "KEYLEDGER_DATABASE_URL" in server_env:
        pytest.skip("the SQLite file is tampered with directly here")
    server = Server(server_env, tmp_path / "server.log")
    token = re.search(r"kl_[A-Za-z0-9_-]+", (tmp_path / "server.log").read_text())
    assert token
    headers = {"Authorization": f"Bearer {token.group(0)}"}
    httpx.post(f"{server.url}/v1/keys", json={"name": "t1"}, headers=headers)
    httpx.post(f"{server.url}/v1/keys/t1/rotate", headers=headers)
    server.stop()

    import sqlite3

    path = Path(server_env["KEYLEDGER_DATA_DIR"]) / "ledger.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("DROP TRIGGER stored_events_no_update")
        db.execute(
            "UPDATE stored_events SET entry_hash = 'x' WHERE notification_id = 2"
        )

    result = _cli(server_env, "verify")
    assert result.returncode == 1
    assert "position 2: HASH_MISMATCH" in result.stdout
