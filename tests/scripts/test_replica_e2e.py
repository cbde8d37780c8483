"""End to end: real primary and replica processes over HTTP, on separate stores.

Each replica has its own data folder (holding a copy of the primary's KEK) and
its own store: another SQLite file, or another PostgreSQL database (created for
the test, dropped after), as a replica in another region would have.
"""

from __future__ import annotations

import http.server
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.signing import public_key_pem
from tests.conftest import wait_until
from tests.scripts.test_end_to_end import BIN, Server, _cli, _free_port

pytestmark = pytest.mark.e2e

TOKEN = "kl_replica-e2e-" + "t" * 32
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Stores:
    """Where the primary and the replicas keep their ledgers.

    On PostgreSQL each store is a database of its own, made through
    ``admin`` (a connection URL to the server) and dropped at the end.
    """

    kind: str
    admin: str | None
    databases: list[str] = field(default_factory=list)
    primary: str | None = None

    def __post_init__(self) -> None:
        self.primary = self.replica()

    def replica(self) -> str | None:
        """A fresh store for one more replica (None: SQLite in its data folder)."""
        if self.admin is None:
            return None
        name = f"kl_e2e_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return f"{self.admin.rpartition('/')[0]}/{name}"

    def drop(self) -> None:
        assert self.admin is not None
        with psycopg.connect(self.admin, autocommit=True) as conn:
            for name in self.databases:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def stores(request: pytest.FixtureRequest) -> Iterator[Stores]:
    if request.param == "sqlite":
        yield Stores("sqlite", None)
        return
    found = Stores("postgres", str(request.getfixturevalue("pg_database")))
    try:
        yield found
    finally:
        found.drop()


def _base_env(data_dir: Path, database_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYLEDGER_")}
    env.update(
        KEYLEDGER_DATA_DIR=str(data_dir),
        KEYLEDGER_PORT=str(_free_port()),
        KEYLEDGER_ADMIN_TOKEN=TOKEN,
        KEYLEDGER_CHECKPOINT_INTERVAL="50",
    )
    if database_url is not None:
        env["KEYLEDGER_DATABASE_URL"] = database_url
    return env


def start_primary(tmp_path: Path, stores: Stores, *, dev_clock: bool = False) -> Server:
    env = _base_env(tmp_path / "primary", stores.primary)
    if dev_clock:
        env["KEYLEDGER_DEV_CLOCK"] = "true"  # the demo completes destructions
    return Server(env, tmp_path / "p.log")


def replica_env(
    tmp_path: Path, name: str, primary: Server, stores: Stores, *, source: str = ""
) -> dict[str, str]:
    """A replica's data folder with the primary's KEK and its pinned public key."""
    data = tmp_path / name
    data.mkdir(mode=0o700, exist_ok=True)
    kek = data / "kek.bin"
    if not kek.exists():
        shutil.copyfile(Path(primary.env["KEYLEDGER_DATA_DIR"]) / "kek.bin", kek)
        kek.chmod(0o600)
    head = httpx.get(f"{primary.url}/v1/ledger/head", headers=HEADERS).json()
    pin = tmp_path / "primary-public.pem"
    pin.write_text(head["signing_key"]["public_key_pem"])
    env = _base_env(data, stores.replica())
    env.update(
        KEYLEDGER_REPLICA_SOURCE=source or primary.url,
        KEYLEDGER_REPLICA_TOKEN=TOKEN,
        KEYLEDGER_REPLICA_PIN_KEY=str(pin),
        KEYLEDGER_REPLICA_POLL_WAIT="2",
    )
    return env


class Replica(Server):
    """A ``keyledger replica`` process serving reads."""

    def status(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/v1/replication/status", headers=HEADERS)
        body: dict[str, Any] = response.json()
        return body


def _popen_replica(
    env: dict[str, str], *args: str, log: Path
) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen(
            [str(BIN / "keyledger"), "replica", *args],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def start_replica(env: dict[str, str], log: Path, *extra: str) -> Replica:
    """Start a serving replica and wait for its health check."""
    return Replica(env, log, ("replica", "--min-position-wait", "0.5", *extra))


def head(server: Server) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(
        f"{server.url}/v1/ledger/head", headers=HEADERS
    ).json()["head"]
    return body


def caught_up(replica: Replica, primary: Server) -> bool:
    status = replica.status()
    return bool(status["applied"]["hash"] == head(primary)["hash"])


def verify_replica(env: dict[str, str], pin: str) -> str:
    result = _cli(env, "verify", "--public-key", pin)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _verify(env: dict[str, str]) -> str:
    result = _cli(env, "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_replica_follows_the_demo_serves_reads_and_refuses_commands(
    stores: Stores, tmp_path: Path
) -> None:
    """Done-when: primary and replica on their own databases (or files), the demo."""
    primary = start_primary(tmp_path, stores, dev_clock=True)
    replicas: list[Replica] = []
    try:
        demo = _cli(
            primary.env,
            "demo",
            "--url",
            primary.url,
            "--token",
            TOKEN,
            "--keys",
            "3",
            "--rotations",
            "2",
            "--workers",
            "2",
            "--quiet",
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "verification: OK" in demo.stdout
        env = replica_env(tmp_path, "replica", primary, stores)
        replica = start_replica(env, tmp_path / "r.log")
        replicas.append(replica)
        # the second follows with a token of its own, of a principal with the
        # replica role only
        second_env = replica_env(tmp_path, "replica2", primary, stores)
        second_env["KEYLEDGER_REPLICA_TOKEN"] = replica_token(primary)
        second = start_replica(second_env, tmp_path / "r2.log")
        replicas.append(second)

        # both replicas reach the primary's head hash
        wait_until(lambda: caught_up(replica, primary))
        wait_until(lambda: caught_up(second, primary))
        status = replica.status()
        assert status["state"] == "following"
        assert status["lag"]["events"] == 0
        assert status["source"] == primary.url

        name = httpx.get(f"{primary.url}/v1/keys", headers=HEADERS).json()["keys"][0][
            "name"
        ]
        key_url = f"/v1/keys/{name}"
        read = httpx.get(f"{replica.url}{key_url}", headers=HEADERS)
        assert read.status_code == 200
        assert read.headers["Ledger-Position"] == str(head(primary)["position"])
        assert (
            read.json() == httpx.get(f"{primary.url}{key_url}", headers=HEADERS).json()
        )

        # commands are refused with the primary's address; nothing recorded
        before = replica.status()["applied"]
        refused = httpx.post(f"{replica.url}{key_url}/rotate", headers=HEADERS)
        assert refused.status_code == 421
        assert refused.json()["error"]["code"] == "REPLICA_READ_ONLY"
        assert refused.json()["error"]["details"]["primary"] == primary.url
        assert replica.status()["applied"] == before

        # Min-Position: a position not reached is 412 with the current one
        future = head(primary)["position"] + 1000
        late = httpx.get(
            f"{replica.url}{key_url}",
            headers={**HEADERS, "Min-Position": str(future)},
        )
        assert late.status_code == 412
        assert late.json()["error"]["code"] == "POSITION_NOT_REACHED"
        assert late.json()["error"]["details"]["current"] == before["position"]

        # read-your-writes: a rotation on the primary, then a read that asks for it
        rotated = httpx.post(f"{primary.url}{key_url}/rotate", headers=HEADERS)
        position = rotated.json()["receipts"][-1]["position"]
        fresh = httpx.get(
            f"{replica.url}{key_url}",
            headers={**HEADERS, "Min-Position": str(position)},
            timeout=30,
        )
        if fresh.status_code == 200:
            assert (
                fresh.json()["stream_version"]
                == rotated.json()["key"]["stream_version"]
            )
            assert int(fresh.headers["Ledger-Position"]) >= position
        else:
            assert fresh.status_code == 412

        wait_until(lambda: caught_up(replica, primary))
        for each in replicas:
            each.stop()
        replicas.clear()
        pin = env["KEYLEDGER_REPLICA_PIN_KEY"]
        report = verify_replica(env, pin)
        assert head(primary)["hash"] in report
        # the primary's signed checkpoints came along and verify on the replica
        on_primary = re.search(r"(\d+) checkpoints verified", _verify(primary.env))
        assert on_primary is not None and int(on_primary[1]) > 0
        assert f"{on_primary[1]} checkpoints verified" in report
        rebuilt = _cli(env, "rebuild", "--check-only")
        assert "equals the live read side" in rebuilt.stdout, rebuilt.stdout

        # a replica whose database is lost is rebuilt from scratch
        _drop_store(env, stores)
        again = start_replica(env, tmp_path / "r3.log")
        replicas.append(again)
        wait_until(lambda: caught_up(again, primary))
        again.stop()

        # promoted from the command line, it verifies from its own data folder
        promoted = _cli(env, "promote")
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        assert "promoted: epoch 2" in promoted.stdout
        assert _cli(env, "promote").returncode == 1  # one epoch, not two
        # a promoted store follows no more, and says how to run it
        again_replica = _cli(env, "replica", "--once")
        assert again_replica.returncode == 2
        assert "run it with keyledger serve" in again_replica.stderr
        report = verify_replica(env, pin)
        assert "2 checkpoints" in report or "ledger intact" in report
        assert _cli(env, "verify").returncode == 0
    finally:
        for each in replicas:
            each.stop()
        primary.stop()
    assert TOKEN not in (tmp_path / "r.log").read_text()


def replica_token(primary: Server) -> str:
    """A token of a new principal that holds the ``replica`` role alone."""
    created = httpx.post(
        f"{primary.url}/v1/principals",
        json={"name": "region-b", "roles": ["replica"]},
        headers=HEADERS,
    )
    assert created.status_code == 201, created.text
    issued = httpx.post(
        f"{primary.url}/v1/principals/region-b/tokens", json={}, headers=HEADERS
    )
    assert issued.status_code == 201, issued.text
    return str(issued.json()["token"])


def _drop_store(env: dict[str, str], stores: Stores) -> None:
    url = env.get("KEYLEDGER_DATABASE_URL")
    if url is None:
        for path in Path(env["KEYLEDGER_DATA_DIR"]).glob("ledger.sqlite3*"):
            path.unlink()
        return
    assert stores.admin is not None
    name = url.rpartition("/")[2]
    with psycopg.connect(stores.admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


# Fencing ------------------------------------------------------------------------


def test_an_old_primary_that_rejoined_refuses_commands_when_served_again(
    stores: Stores, tmp_path: Path
) -> None:
    """The old primary follows the promoted replica into epoch 2, then is fenced."""
    primary = start_primary(tmp_path, stores)
    replica = None
    old = None
    try:
        httpx.post(f"{primary.url}/v1/keys", json={"name": "f"}, headers=HEADERS)
        env = replica_env(tmp_path, "replica", primary, stores)
        replica = start_replica(env, tmp_path / "r.log")
        wait_until(lambda: caught_up(replica, primary))
        old_key = signing_key(primary)
        # the region is lost: killed, so it records nothing the replica lacks (its
        # access windows are 5 minutes; a graceful stop would record them)
        primary.process.send_signal(signal.SIGKILL)
        primary.process.wait()

        # the replica is promoted and writes in epoch 2
        promoted = httpx.post(
            f"{replica.url}/v1/replication/promote", json={}, headers=HEADERS
        )
        assert promoted.status_code == 200, promoted.text
        new_kid = promoted.json()["epoch"]["kid"]
        rotated = httpx.post(f"{replica.url}/v1/keys/f/rotate", headers=HEADERS)
        assert rotated.status_code == 200, rotated.text

        # the old primary rejoins as a replica of the new one and catches up
        own_pem = tmp_path / "old-primary.pem"
        own_pem.write_text(old_key["public_key_pem"])
        new_pem = tmp_path / "new-primary.pem"
        new_pem.write_text(signing_key(replica)["public_key_pem"])
        rejoin = {
            **primary.env,
            "KEYLEDGER_REPLICA_SOURCE": replica.url,
            "KEYLEDGER_REPLICA_TOKEN": TOKEN,
            "KEYLEDGER_REPLICA_PIN_KEY": f"{own_pem},{new_pem}",
        }
        followed = _cli(rejoin, "replica", "--once")
        assert followed.returncode == 0, followed.stdout + followed.stderr
        new_head = head(replica)
        assert f"replica at position {new_head['position']} " in followed.stdout

        # served again as a primary, it answers reads and refuses every command
        old = Server(primary.env, tmp_path / "old.log")
        assert head(old) == new_head  # not even its start was recorded
        for path, body in (
            ("/v1/keys/f/rotate", None),
            ("/v1/keys", {"name": "after"}),
            ("/v1/keys/f/encrypt", {"plaintext": "aGVsbG8="}),
        ):
            refused = httpx.post(f"{old.url}{path}", json=body, headers=HEADERS)
            assert refused.status_code == 409, refused.text
            error = refused.json()["error"]
            assert error["code"] == "PRIMARY_FENCED"
            assert (error["details"]["epoch"], error["details"]["kid"]) == (2, new_kid)
        read = httpx.get(f"{old.url}/v1/keys/f", headers=HEADERS)
        assert read.status_code == 200
        assert (
            read.json() == httpx.get(f"{replica.url}/v1/keys/f", headers=HEADERS).json()
        )
        assert head(old) == new_head
        assert "primary_fenced" in (tmp_path / "old.log").read_text()
    finally:
        for each in (old, replica):
            if each is not None:
                each.stop()
        primary.stop()


def store_url(env: dict[str, str]) -> str:
    """The URL of a process's store, as ``keyledger compare`` takes it."""
    if "KEYLEDGER_DATABASE_URL" in env:
        return env["KEYLEDGER_DATABASE_URL"]
    return f"sqlite:///{Path(env['KEYLEDGER_DATA_DIR']) / 'ledger.sqlite3'}"


def test_promotion_while_the_old_primary_still_writes_forks_where_it_promoted(
    stores: Stores, tmp_path: Path
) -> None:
    """Both write after the promotion; the old one, rejoining, halts at the fork."""
    primary = start_primary(tmp_path, stores)
    replica = None
    try:
        httpx.post(f"{primary.url}/v1/keys", json={"name": "f"}, headers=HEADERS)
        env = replica_env(tmp_path, "replica", primary, stores)
        replica = start_replica(env, tmp_path / "r.log")
        wait_until(lambda: caught_up(replica, primary))
        old_key = signing_key(primary)

        # promoted while the primary is alive and reachable
        promoted = httpx.post(
            f"{replica.url}/v1/replication/promote", json={}, headers=HEADERS
        )
        assert promoted.status_code == 200, promoted.text
        epoch = promoted.json()["epoch"]
        assert (epoch["epoch"], epoch["forced"]) == (2, False)
        fork_at = epoch["applied_position"] + 1  # the promotion's own entry

        # the old primary has not seen the epoch: it keeps accepting writes
        for _ in range(2):
            old_write = httpx.post(f"{primary.url}/v1/keys/f/rotate", headers=HEADERS)
            assert old_write.status_code == 200, old_write.text
        old_status = httpx.get(
            f"{primary.url}/v1/replication/status", headers=HEADERS
        ).json()
        assert (old_status["role"], old_status["state"]) == ("primary", "primary")
        assert head(primary)["position"] >= fork_at

        # the promoted replica writes in epoch 2, signed with its own key
        new_write = httpx.post(f"{replica.url}/v1/keys/f/rotate", headers=HEADERS)
        assert new_write.status_code == 200, new_write.text
        assert replica.status()["state"] == "promoted"
        [promotion] = httpx.get(
            f"{replica.url}/v1/events",
            params={"after": fork_at - 1, "limit": 1},
            headers=HEADERS,
        ).json()["events"]
        assert promotion["type"] == "keyledger.ledger.Promoted"
        assert promotion["kid"] == epoch["kid"] != old_key["kid"]
        latest = new_write.json()["receipts"][-1]["position"]
        [written] = httpx.get(
            f"{replica.url}/v1/events",
            params={"after": latest - 1, "limit": 1},
            headers=HEADERS,
        ).json()["events"]
        assert written["kid"] == epoch["kid"]
        replica_head = head(replica)

        # the old primary sees the new epoch by rejoining it: it halts at the
        # fork, keeps its own entries, and takes none of the new primary's
        primary.stop()
        own_pem = tmp_path / "old-primary.pem"
        own_pem.write_text(old_key["public_key_pem"])
        new_pem = tmp_path / "new-primary.pem"
        new_pem.write_text(signing_key(replica)["public_key_pem"])
        rejoin = {
            **primary.env,
            "KEYLEDGER_REPLICA_SOURCE": replica.url,
            "KEYLEDGER_REPLICA_TOKEN": TOKEN,
            "KEYLEDGER_REPLICA_PIN_KEY": f"{own_pem},{new_pem}",
        }
        followed = _cli(rejoin, "replica", "--once")
        assert followed.returncode == 3, followed.stdout + followed.stderr
        assert f"HALTED at position {fork_at}: FORK" in followed.stdout
        old_head = followed.stdout.rsplit("holds ", 1)[1].split()[0]
        assert int(old_head) >= fork_at
        # a later start stays halted (it never takes the new primary's entries)
        again = _cli(rejoin, "replica", "--once")
        assert again.returncode == 3
        assert f"halted earlier at position {fork_at}: FORK" in again.stderr

        # compare says the same from the two stores, each with its own head
        compared = _cli(env, "compare", store_url(primary.env), store_url(env))
        assert compared.returncode == 1, compared.stdout + compared.stderr
        assert f"FORK at position {fork_at}" in compared.stdout
        assert f"agree through {fork_at - 1} " in compared.stdout
        assert f"(heads {old_head} and {head(replica)['position']})" in (
            compared.stdout
        )
        assert head(replica)["position"] >= replica_head["position"]
    finally:
        if replica is not None:
            replica.stop()
        primary.stop()


def test_a_replica_against_a_primary_whose_key_is_not_pinned_exits_2(
    tmp_path: Path,
) -> None:
    """A wrong pin: exit 2 with one line naming the primary's key; no ledger made."""
    stores = Stores("sqlite", None)
    primary = start_primary(tmp_path, stores)
    try:
        env = replica_env(tmp_path, "replica", primary, stores)
        other = tmp_path / "other.pem"
        other.write_text(public_key_pem(Ed25519PrivateKey.generate().public_key()))
        for timeout in ("0", "-1", "301"):
            bad = _cli(env, "replica", "--once", "--http-timeout", timeout)
            assert bad.returncode == 2, bad.stdout + bad.stderr
            assert "--http-timeout is seconds" in bad.stderr
        assert not (Path(env["KEYLEDGER_DATA_DIR"]) / "ledger.sqlite3").exists()
        env["KEYLEDGER_REPLICA_PIN_KEY"] = str(other)
        result = _cli(env, "replica", "--once")
        assert result.returncode == 2, result.stdout + result.stderr
        kid = signing_key(primary)["kid"]
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("keyledger replica: refusing to start:")
        assert f"the primary signs with {kid}" in line
        assert "not pinned" in line
        assert not (Path(env["KEYLEDGER_DATA_DIR"]) / "ledger.sqlite3").exists()
    finally:
        primary.stop()


def signing_key(server: Server) -> dict[str, str]:
    """The key id and public PEM the server signs with, as its head route shows."""
    answer = httpx.get(f"{server.url}/v1/ledger/head", headers=HEADERS).json()
    return dict(answer["signing_key"])


# Faults -------------------------------------------------------------------------


class Proxy:
    """An HTTP proxy in front of the primary: a black hole, a changed byte, or
    one version's material left out."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.released = threading.Event()
        self.released.set()
        self.held = 0  # connections accepted and left unanswered so far
        self.tamper_at: int | None = None
        self.tampered = False
        self.strip_version: int | None = None
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if not proxy.released.is_set():
                    # a black hole: the connection is open, no answer ever comes
                    proxy.held += 1
                    proxy.released.wait()
                    self.close_connection = True
                    return
                answer = httpx.get(
                    proxy.upstream + self.path,
                    headers={"Authorization": self.headers["Authorization"]},
                    timeout=60,
                )
                body = proxy.change(self.path, answer.content)
                self.send_response(answer.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def cut(self) -> None:
        """Hold every request from now on without answering."""
        self.released.clear()

    def restore(self) -> None:
        self.released.set()

    def change(self, path: str, body: bytes) -> bytes:
        """Change one byte of the entry at ``tamper_at`` (once), or strip material."""
        if self.strip_version is not None and "/v1/replication/material" in path:
            answer = json.loads(body)
            answer["material"] = [
                item
                for item in answer["material"]
                if item["version"] != self.strip_version
            ]
            return json.dumps(answer).encode()
        if self.tamper_at is None or self.tampered or "/v1/events" not in path:
            return body
        at = body.find(f'"position":{self.tamper_at},'.encode())
        if at < 0:
            return body
        field = body.index(b'"request_id":"', at) + len(b'"request_id":"')
        changed = bytearray(body)
        changed[field] = ord("A") if changed[field] != ord("A") else ord("B")
        self.tampered = True
        return bytes(changed)

    def close(self) -> None:
        self.restore()
        self.server.shutdown()
        self.server.server_close()


def test_a_byte_changed_in_transit_halts_the_replica(
    stores: Stores, tmp_path: Path
) -> None:
    primary = start_primary(tmp_path, stores)
    proxy = Proxy(primary.url)
    try:
        for index in range(4):
            httpx.post(
                f"{primary.url}/v1/keys", json={"name": f"k{index}"}, headers=HEADERS
            )
        proxy.tamper_at = 3
        env = replica_env(tmp_path, "replica", primary, stores, source=proxy.url)
        result = _cli(env, "replica", "--no-serve")
        assert result.returncode == 3, result.stdout + result.stderr
        assert "HALTED at position 3: HASH_MISMATCH" in result.stdout
        assert "holds 2 " in result.stdout
        # a restart does not silently carry on
        again = _cli(env, "replica", "--once")
        assert again.returncode == 3
        assert "--resume" in again.stderr
    finally:
        proxy.close()
        primary.stop()


def test_a_network_cut_longer_than_the_poll_is_survived(
    stores: Stores, tmp_path: Path
) -> None:
    """A black hole outlasting a poll and its timeout; then it catches up, no gap."""
    primary = start_primary(tmp_path, stores)
    proxy = Proxy(primary.url)
    replica = None
    try:
        httpx.post(f"{primary.url}/v1/keys", json={"name": "cut"}, headers=HEADERS)
        env = replica_env(tmp_path, "replica", primary, stores, source=proxy.url)
        env["KEYLEDGER_REPLICA_POLL_WAIT"] = "1"
        env["KEYLEDGER_REPLICA_HTTP_TIMEOUT"] = "1"
        replica = start_replica(env, tmp_path / "r.log")
        wait_until(lambda: caught_up(replica, primary))
        held = replica.status()["applied"]

        proxy.cut()
        for _ in range(3):
            rotated = httpx.post(f"{primary.url}/v1/keys/cut/rotate", headers=HEADERS)
            assert rotated.status_code == 200, rotated.text

        # held until the replica itself saw a long-poll wait out its poll and its
        # timeout with no answer
        def waited_out_a_poll() -> bool:
            unreachable = replica.status()["unreachable"]
            return (
                unreachable is not None
                and unreachable["timed_out_reads"] >= 1
                and unreachable["longest_wait_seconds"] >= 1 + 1
            )

        wait_until(waited_out_a_poll, timeout=60)
        status = replica.status()
        assert status["source_reachable"] is False
        assert "ReadTimeout" in status["last_error"]
        assert status["state"] == "following"
        assert status["applied"] == held
        assert proxy.held >= 1

        proxy.restore()
        wait_until(lambda: caught_up(replica, primary), timeout=60)
        status = replica.status()
        assert status["source_reachable"] is True
        assert status["unreachable"] is None
        assert status["state"] == "following"
        assert status["applied"]["hash"] == head(primary)["hash"]
        # no gap: every position, each with the primary's hash
        assert feed_hashes(replica) == feed_hashes(primary)
    finally:
        if replica is not None:
            replica.stop()
        proxy.close()
        primary.stop()


def feed_hashes(server: Server) -> list[tuple[int, str]]:
    """Every (position, hash) of a server's ledger, read through its feed."""
    found: list[tuple[int, str]] = []
    while True:
        page = httpx.get(
            f"{server.url}/v1/events",
            params={"after": len(found), "limit": 1000},
            headers=HEADERS,
        ).json()
        if not page["events"]:
            return found
        found += [(event["position"], event["hash"]) for event in page["events"]]


def test_a_serving_replica_with_exit_on_halt_exits_3(
    stores: Stores, tmp_path: Path
) -> None:
    """Live material left out in transit: MATERIAL_MISSING, and the process exits 3."""
    primary = start_primary(tmp_path, stores)
    proxy = Proxy(primary.url)
    replica = None
    try:
        httpx.post(f"{primary.url}/v1/keys", json={"name": "m"}, headers=HEADERS)
        env = replica_env(tmp_path, "replica", primary, stores, source=proxy.url)
        env["KEYLEDGER_REPLICA_POLL_WAIT"] = "1"
        replica = start_replica(env, tmp_path / "r.log", "--exit-on-halt")
        wait_until(lambda: caught_up(replica, primary))
        held = replica.status()["applied"]

        proxy.strip_version = 2
        rotated = httpx.post(f"{primary.url}/v1/keys/m/rotate", headers=HEADERS)
        position = rotated.json()["receipts"][-1]["position"]
        assert replica.process.wait(timeout=60) == 3
        log = (tmp_path / "r.log").read_text()
        assert "replica_halted" in log
        assert "MATERIAL_MISSING" in log

        # what it holds is kept, and the halt is recorded: a restart says so
        again = _cli(env, "replica", "--once")
        assert again.returncode == 3
        assert f"halted earlier at position {position}: MATERIAL_MISSING" in (
            again.stderr
        )
        report = verify_replica(env, env["KEYLEDGER_REPLICA_PIN_KEY"])
        assert held["hash"] in report
    finally:
        if replica is not None:
            replica.stop()
        proxy.close()
        primary.stop()


def test_a_primary_restored_from_an_older_backup_halts_the_replica(
    tmp_path: Path,
) -> None:
    """C28 on SQLite files: the primary comes back behind what the replica holds."""
    stores = Stores("sqlite", None)
    primary = start_primary(tmp_path, stores)
    ledger_file = Path(primary.env["KEYLEDGER_DATA_DIR"]) / "ledger.sqlite3"
    backup = tmp_path / "backup.sqlite3"
    replica = None
    try:
        httpx.post(f"{primary.url}/v1/keys", json={"name": "old"}, headers=HEADERS)
        primary.stop()
        shutil.copyfile(ledger_file, backup)
        primary = Server(primary.env, tmp_path / "p2.log")
        for _ in range(3):
            httpx.post(f"{primary.url}/v1/keys/old/rotate", headers=HEADERS)
        env = replica_env(tmp_path, "replica", primary, stores)
        env["KEYLEDGER_REPLICA_POLL_WAIT"] = "1"
        replica = start_replica(env, tmp_path / "r.log")
        wait_until(lambda: caught_up(replica, primary))
        held = replica.status()["applied"]

        primary.stop()
        for path in ledger_file.parent.glob("ledger.sqlite3*"):
            path.unlink()
        shutil.copyfile(backup, ledger_file)
        primary = Server(primary.env, tmp_path / "p3.log")
        wait_until(lambda: replica.status()["state"] == "halted")
        status = replica.status()
        assert status["halt"]["reason"] == "PRIMARY_HEAD_REGRESSED"
        assert status["applied"] == held
        # the primary writes again at positions the replica holds: still halted,
        # and the replica keeps its own entries
        httpx.post(f"{primary.url}/v1/keys/old/rotate", headers=HEADERS)
        assert replica.status()["applied"] == held
    finally:
        if replica is not None:
            replica.stop()
        primary.stop()


# kill -9 during catch-up --------------------------------------------------------

CATCH_UP_EVENTS = int(os.environ.get("KEYLEDGER_TEST_CATCH_UP_EVENTS", "20000"))


def fill(env: dict[str, str], events: int) -> None:
    """Write ``events`` real entries quickly: usage records and key rotations."""
    script = f"""
import os
from pathlib import Path
from scripts.bench_replica import fill_ledger, open_store
service = open_store(
    Path(os.environ["KEYLEDGER_DATA_DIR"]), os.environ.get("KEYLEDGER_DATABASE_URL")
)
fill_ledger(service, {events})
service.close()
"""
    result = subprocess.run(
        [str(BIN / "python"), "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr


def _applied(env: dict[str, str]) -> int:
    """The replica's position as its state row says, read while it runs."""
    url = env.get("KEYLEDGER_DATABASE_URL")
    query = "SELECT position FROM replica_state WHERE id = 1"
    try:
        if url is None:
            path = Path(env["KEYLEDGER_DATA_DIR"]) / "ledger.sqlite3"
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                row = db.execute(query).fetchone()
        else:
            with psycopg.connect(url) as conn:
                row = conn.execute(query).fetchone()
    except (sqlite3.Error, psycopg.Error):
        return 0  # not created yet
    return int(row[0]) if row else 0


def _verified_head(env: dict[str, str]) -> int:
    """The replica's head after a crash, once its ledger verifies (0: not created)."""
    result = _cli(
        env, "verify", "--json", "--public-key", env["KEYLEDGER_REPLICA_PIN_KEY"]
    )
    if result.returncode == 2:
        return 0
    report = json.loads(result.stdout)
    assert report["ok"], report
    return int(report["head"]["position"])


def test_kill_9_during_catch_up_never_applies_twice_or_skips(
    stores: Stores, tmp_path: Path
) -> None:
    """Five kill -9 at random moments of a catch-up; the end state is exact (C26)."""
    primary_env = _base_env(tmp_path / "primary", stores.primary)
    fill(primary_env, CATCH_UP_EVENTS)
    primary = Server(primary_env, tmp_path / "p.log")
    try:
        env = replica_env(tmp_path, "replica", primary, stores)
        shuffle = random.Random(int(os.environ.get("KEYLEDGER_TEST_SEED", "4")))
        log = tmp_path / "r.log"
        crashed_at: list[int] = []
        # five random positions of the catch-up; the replica is killed as it passes
        targets = sorted(shuffle.sample(range(1, CATCH_UP_EVENTS - 1000), 5))
        for target in targets:
            process = _popen_replica(env, "--once", "--batch", "300", log=log)
            wait_until(
                lambda: process.poll() is not None or _applied(env) >= target,  # noqa: B023
                timeout=600,
            )
            process.send_signal(signal.SIGKILL)
            process.wait()
            crashed_at.append(_verified_head(env))
        final = subprocess.run(
            [str(BIN / "keyledger"), "replica", "--once"],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert final.returncode == 0, final.stdout + final.stderr
        primary_head = head(primary)
        assert f"replica at position {primary_head['position']} " in final.stdout
        assert primary_head["hash"] in final.stdout
        # the fill, then the primary's own records: its start, the bootstrap
        # token's use, the announcement of the replica's signing key
        assert primary_head["position"] > CATCH_UP_EVENTS
        # every crash left a verifiable prefix, and some crashed mid-catch-up
        assert crashed_at == sorted(crashed_at)
        assert any(0 < position < CATCH_UP_EVENTS for position in crashed_at)
    finally:
        primary.stop()
    report = verify_replica(env, env["KEYLEDGER_REPLICA_PIN_KEY"])
    assert f"{primary_head['position']} entries" in report
    rebuilt = _cli(env, "rebuild", "--check-only")
    assert "equals the live read side" in rebuilt.stdout, rebuilt.stdout
