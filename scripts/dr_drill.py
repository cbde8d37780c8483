"""``keyledger dr-drill``: lose the primary mid-write, promote the replica, measure.

On one machine: start a primary and a replica (separate data folders and
stores: SQLite files, or two new databases on the PostgreSQL server given), run a
writing workload, kill the primary (SIGKILL) while writes are in flight, promote
the replica, and carry on writing to it. Reports, measured:

- the recovery point: how many writes the old primary acknowledged that the new
  primary does not hold (expected 0 when the replica had caught up; ``--settle``
  stops the writers and waits for the replica to hold the primary's head before
  the cut, so that it has);
- the recovery time: from the kill to the first write acknowledged by the new
  primary, and how much of it was promotion.

Exit status 0 when the drill ran and the new primary's ledger verifies.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

BIN = Path(sys.executable).parent


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        help="A PostgreSQL database to connect through: the drill creates two "
        "databases on its server for the primary and the replica, and drops them "
        "after; default: SQLite files.",
    )
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="Writing before the cut."
    )
    parser.add_argument(
        "--after-seconds", type=float, default=2.0, help="Writing after promotion."
    )
    parser.add_argument("--writers", type=int, default=2, help="Concurrent writers.")
    parser.add_argument(
        "--settle",
        action="store_true",
        help="Before the cut, stop writing and wait until the replica holds the "
        "primary's head (the recovery point is then expected to be 0); default: "
        "cut mid-write.",
    )
    parser.add_argument("--work-dir", help="Where to keep the drill's folders.")
    parser.add_argument("--json", action="store_true", help="Print the report as JSON.")


@dataclass
class Acknowledged:
    """Writes a primary acknowledged: position and hash of each receipt."""

    receipts: dict[int, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    first_at: float | None = None

    def add(self, body: dict[str, Any]) -> None:
        with self.lock:
            for receipt in body["receipts"]:
                self.receipts[int(receipt["position"])] = str(receipt["hash"])
            if self.first_at is None:
                self.first_at = time.monotonic()


class Process:
    """A ``keyledger`` process with its own data folder and store."""

    def __init__(self, name: str, env: dict[str, str], args: list[str], log: Path):
        self.name, self.env = name, env
        self.url = f"http://127.0.0.1:{env['KEYLEDGER_PORT']}"
        with log.open("ab") as sink:
            self.process = subprocess.Popen(
                [str(BIN / "keyledger"), *args],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{name} did not start:\n{log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


def main(args: argparse.Namespace) -> int:
    with _work_dir(args.work_dir) as work, _stores(args.database_url) as stores:
        report = run_drill(work, stores, args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(describe(report))
    return 0 if report["verified"] else 1


def run_drill(
    work: Path, stores: tuple[str | None, str | None], args: argparse.Namespace
) -> dict[str, Any]:
    token = "kl_drill_" + secrets.token_urlsafe(24)
    headers = {"Authorization": f"Bearer {token}"}
    primary_env = _env(work / "primary", stores[0], token)
    primary = Process("primary", primary_env, ["serve"], work / "primary.log")
    replica = None
    try:
        replica_env = _replica_env(work, primary, stores[1], token, headers)
        replica = Process("replica", replica_env, ["replica"], work / "replica.log")
        for index in range(args.writers):
            httpx.post(
                f"{primary.url}/v1/keys",
                json={"name": f"drill-{index}"},
                headers=headers,
            ).raise_for_status()

        before = Acknowledged()
        stop = threading.Event()
        writers = _start_writers(primary.url, headers, args.writers, before, stop)
        time.sleep(args.seconds)  # the workload runs; this is the drill's schedule
        if args.settle:
            stop.set()
            for thread in writers:
                thread.join()
            _wait_caught_up(primary.url, replica.url, headers)
        lag_at_cut = _status(replica.url, headers)
        cut_at = time.monotonic()
        primary.kill()
        stop.set()
        for thread in writers:
            thread.join()

        promoted, forced = _promote(replica.url, headers)
        promoted_at = time.monotonic()
        after = Acknowledged()
        stop_after = threading.Event()
        writers = _start_writers(replica.url, headers, args.writers, after, stop_after)
        time.sleep(args.after_seconds)  # writing to the new primary
        stop_after.set()
        for thread in writers:
            thread.join()

        lost = _lost(replica.url, headers, before)
        verification = httpx.get(
            f"{replica.url}/v1/ledger/verify", headers=headers, timeout=300
        ).json()
        first_after = after.first_at
        last_acknowledged = max(before.receipts, default=0)
        return {
            "store": "postgresql" if stores[0] else "sqlite",
            "acknowledged_before_cut": len(before.receipts),
            "last_acknowledged_position": last_acknowledged,
            "cut": "settled" if args.settle else "mid-write",
            "acknowledged_after_promotion": len(after.receipts),
            "replica_at_cut": lag_at_cut,
            "recovery_point": {
                # the replica held every write acknowledged before the cut
                "replica_had_caught_up": promoted["applied_position"]
                >= last_acknowledged,
                "events_lost": len(lost),
                "positions_lost": sorted(lost)[:20],
            },
            "recovery_time_seconds": {
                "to_promoted": round(promoted_at - cut_at, 3),
                "to_first_write": None
                if first_after is None
                else round(first_after - cut_at, 3),
            },
            "promotion": {"forced": forced, **promoted},
            "verified": bool(verification.get("ok")),
            "head": verification.get("head"),
        }
    finally:
        if replica is not None:
            replica.stop()
        primary.stop()


def _start_writers(
    url: str,
    headers: dict[str, str],
    count: int,
    acknowledged: Acknowledged,
    stop: threading.Event,
) -> list[threading.Thread]:
    def write(index: int) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=5) as client:
            while not stop.is_set():
                try:
                    answer = client.post(f"/v1/keys/drill-{index}/rotate")
                except httpx.HTTPError:
                    continue  # the primary is gone; keep trying until told to stop
                if answer.status_code == 200:
                    acknowledged.add(answer.json())

    threads = [threading.Thread(target=write, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads


def _wait_caught_up(primary: str, replica: str, headers: dict[str, str]) -> None:
    """Wait until the replica holds the primary's head (its hash)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        head = httpx.get(f"{primary}/v1/ledger/head", headers=headers).json()
        status = httpx.get(f"{replica}/v1/replication/status", headers=headers).json()
        if status["applied"]["hash"] == head["head"]["hash"]:
            return
        time.sleep(0.1)  # polling the replica's state
    raise RuntimeError("the replica did not catch up with the primary")


def _status(url: str, headers: dict[str, str]) -> dict[str, Any]:
    status = httpx.get(f"{url}/v1/replication/status", headers=headers).json()
    return {
        "applied": status["applied"]["position"],
        "primary_head_seen": status["primary_head"]["position"],
        "lag_events": status["lag"]["events"],
    }


def _promote(url: str, headers: dict[str, str]) -> tuple[dict[str, Any], bool]:
    """Promote; if refused for being behind the head it saw, promote with force."""
    answer = httpx.post(
        f"{url}/v1/replication/promote", json={"force": False}, headers=headers
    )
    if answer.status_code == 409 and answer.json()["error"]["code"] == "REPLICA_BEHIND":
        answer = httpx.post(
            f"{url}/v1/replication/promote", json={"force": True}, headers=headers
        )
        answer.raise_for_status()
        return dict(answer.json()["epoch"]), True
    answer.raise_for_status()
    return dict(answer.json()["epoch"]), False


def _lost(url: str, headers: dict[str, str], before: Acknowledged) -> set[int]:
    """Acknowledged positions whose entry the new primary does not hold."""
    held: dict[int, str] = {}
    after = 0
    while True:
        page = httpx.get(
            f"{url}/v1/events",
            params={"after": after, "limit": 1000},
            headers=headers,
        ).json()
        for event in page["events"]:
            held[int(event["position"])] = str(event["hash"])
        if not page["events"]:
            break
        after = page["next_after"]
    return {p for p, h in before.receipts.items() if held.get(p) != h}


def describe(report: dict[str, Any]) -> str:
    point, times = report["recovery_point"], report["recovery_time_seconds"]
    at_cut = report["replica_at_cut"]
    return (
        f"dr-drill on {report['store']}: {report['acknowledged_before_cut']} writes "
        f"acknowledged before the cut, the last at position "
        f"{report['last_acknowledged_position']}; the replica held "
        f"{at_cut['applied']} (primary head last seen {at_cut['primary_head_seen']})\n"
        f"recovery point: {point['events_lost']} acknowledged events lost "
        f"{point['positions_lost'] or ''}(cut {report['cut']}; the replica "
        f"{'held' if point['replica_had_caught_up'] else 'lacked'} writes "
        "acknowledged before it)\n"
        f"recovery time: promoted {times['to_promoted']} s after the cut, first "
        f"write acknowledged {times['to_first_write']} s after the cut "
        f"({'forced' if report['promotion']['forced'] else 'not forced'}; epoch "
        f"{report['promotion']['epoch']})\n"
        f"{report['acknowledged_after_promotion']} writes acknowledged by the new "
        f"primary; its ledger "
        f"{'verifies' if report['verified'] else 'does NOT verify'} "
        f"(head {report['head']['position'] if report['head'] else '?'})"
    )


def _env(data_dir: Path, database_url: str | None, token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYLEDGER_")}
    env.update(
        KEYLEDGER_DATA_DIR=str(data_dir),
        KEYLEDGER_PORT=str(_free_port()),
        KEYLEDGER_ADMIN_TOKEN=token,
        KEYLEDGER_LOG_LEVEL="WARNING",
    )
    if database_url is not None:
        env["KEYLEDGER_DATABASE_URL"] = database_url
    return env


def _replica_env(
    work: Path,
    primary: Process,
    database_url: str | None,
    token: str,
    headers: dict[str, str],
) -> dict[str, str]:
    data = work / "replica"
    data.mkdir(mode=0o700)
    shutil.copyfile(
        Path(primary.env["KEYLEDGER_DATA_DIR"]) / "kek.bin", data / "kek.bin"
    )
    (data / "kek.bin").chmod(0o600)
    head = httpx.get(f"{primary.url}/v1/ledger/head", headers=headers).json()
    pin = work / "primary.pem"
    pin.write_text(head["signing_key"]["public_key_pem"])
    env = _env(data, database_url, token)
    env.update(
        KEYLEDGER_REPLICA_SOURCE=primary.url,
        KEYLEDGER_REPLICA_TOKEN=token,
        KEYLEDGER_REPLICA_PIN_KEY=str(pin),
        KEYLEDGER_REPLICA_POLL_WAIT="5",
    )
    return env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def _work_dir(given: str | None) -> Iterator[Path]:
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="keyledger-drill-") as folder:
        yield Path(folder)


@contextmanager
def _stores(database_url: str | None) -> Iterator[tuple[str | None, str | None]]:
    """Two stores: None (SQLite in each data folder) or two new databases."""
    if database_url is None:
        yield None, None
        return
    with scratch_databases(database_url, ("p", "r")) as (primary, replica):
        yield primary, replica


@contextmanager
def scratch_databases(database_url: str, roles: Sequence[str]) -> Iterator[list[str]]:
    """A new database per role on the server of ``database_url``, dropped after."""
    admin = database_url.partition("?")[0]
    server = admin.rpartition("/")[0]
    names = [f"drill_{role}_{uuid.uuid4().hex[:8]}" for role in roles]
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in names:
                conn.execute(f'CREATE DATABASE "{name}"')
        yield [f"{server}/{name}" for name in names]
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
