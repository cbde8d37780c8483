"""Benchmark key use through the HTTP API: encrypt requests per second.

Run it by hand, never from the tests::

    python -m scripts.bench_key_use --database-url postgresql://postgres@127.0.0.1:5432/postgres

For each store (an SQLite file, and a scratch PostgreSQL database created on
that server and dropped at the end) it measures, in one run:

1. raw baseline: single-row ``INSERT`` + ``COMMIT`` of ~500 bytes on one
   connection to the same store, in rows/s (half before the HTTP runs, half
   after, so a change in the machine's load affects both sides alike);
2. raw AES-256-GCM: encrypting a 32-byte plaintext under a fresh nonce on one
   thread, in encrypts/s (what the ledger adds to this is the point);
3. ``POST /v1/keys/{name}/encrypt`` of a 32-byte plaintext through a real
   ``keyledger`` server process (uvicorn, one process) with 1, 8 and 32
   concurrent clients (threads, each with its own keep-alive connection), every
   use recorded on the ledger before it is answered; on PostgreSQL with group
   commit (concurrent uses share a transaction) and without it (each use its
   own transaction). SQLite's recorder has no group commit: each append is its
   own ``BEGIN IMMEDIATE`` transaction.

It prints every figure and its ratio to the raw insert baseline of the same
store in the same run. The exit status is 0 when every measurement ran, 1 when
one could not (the server did not start, PostgreSQL unreachable), 130 after
Ctrl-C. The server processes are stopped and scratch data removed in every case.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ledger.application import redact_url
from scripts.bench_ledger import (
    RAW_PAYLOAD_BYTES,
    Throughput,
    bench_raw_insert,
    code_revision,
    combine,
    conninfo_for,
    cpu_model,
    ledger_mark,
    ledger_notes,
    load_average,
    measure,
    scratch_database,
    show,
    usable_cores,
    warmup_for,
)

CLIENTS = (1, 8, 32)
PLAINTEXT = base64.b64encode(b"\x42" * 32).decode("ascii")
KEY = "bench"


# Baselines -------------------------------------------------------------------


def bench_raw_sqlite_insert(path: Path, seconds: float) -> Throughput:
    """Single-row INSERTs, each committed, in WAL mode like the ledger's file."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS raw_insert_bench "
            "(id INTEGER PRIMARY KEY, payload BLOB NOT NULL)"
        )
        payloads = [os.urandom(RAW_PAYLOAD_BYTES) for _ in range(64)]
        turns = iter(range(1 << 62))

        def insert() -> None:
            payload = payloads[next(turns) % len(payloads)]
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO raw_insert_bench (payload) VALUES (?)", (payload,)
            )
            conn.execute("COMMIT")

        return measure("raw-insert", "rows/s", [insert], seconds)
    finally:
        conn.close()


def bench_raw_aes(seconds: float) -> Throughput:
    aead = AESGCM(os.urandom(32))
    plaintext = b"\x42" * 32

    def encrypt() -> None:
        aead.encrypt(os.urandom(12), plaintext, None)

    return measure("raw-aes-gcm", "encrypts/s", [encrypt], seconds)


# The server ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def server(
    database_url: str, data_dir: Path, token: str, *, group_commit: bool
) -> Iterator[str]:
    """A ``keyledger`` server process (this script in --serve mode); its URL."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYLEDGER_")}
    env.update(
        KEYLEDGER_DATA_DIR=str(data_dir),
        KEYLEDGER_DATABASE_URL=database_url,
        KEYLEDGER_PORT=str(port),
        KEYLEDGER_ADMIN_TOKEN=token,
        KEYLEDGER_LOG_LEVEL="WARNING",
    )
    command = [sys.executable, "-m", "scripts.bench_key_use", "--serve"]
    if not group_commit:
        command.append("--no-group-commit")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError("the server exited while starting")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start within 60 s")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve(group_commit: bool) -> int:
    """Run the service as ``keyledger serve`` does, optionally one append at a time."""
    import uvicorn

    from api.main import create_app
    from api.runtime import build_runtime
    from ledger.settings import Settings

    settings = Settings()
    runtime = build_runtime(settings)
    if not group_commit:
        one_at_a_time(runtime.service.ledger)
    try:
        uvicorn.run(
            create_app(settings, runtime=runtime),
            host=settings.host,
            port=settings.port,
            http="h11",
            log_level="warning",
            access_log=False,
        )
    finally:
        runtime.close()
    return 0


def one_at_a_time(recorder: object) -> None:
    """Let only one append into the recorder at a time: no group ever forms.

    The recorder's group commit takes whatever appends are queued when it gets
    the append lock; with callers let in one by one, each commits alone.
    """
    append = recorder.insert_events  # type: ignore[attr-defined]
    gate = threading.Lock()

    def insert_events(*args: object, **kwargs: object) -> object:
        with gate:
            return append(*args, **kwargs)

    recorder.insert_events = insert_events  # type: ignore[attr-defined]


# Clients ---------------------------------------------------------------------


def encrypter(url: str, token: str) -> Callable[[], None]:
    """One client: its own connection, one encrypt per call."""
    client = httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    path = f"/v1/keys/{KEY}/encrypt"

    def encrypt() -> None:
        response = client.post(path, json={"plaintext": PLAINTEXT})
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}")

    return encrypt


def bench_http(
    url: str, token: str, label: str, seconds: float, conninfo: str | None
) -> list[Throughput]:
    """Encrypt requests/s with each number of concurrent clients.

    With ``conninfo`` (PostgreSQL) each figure notes how many usage entries
    each transaction committed, read from PostgreSQL itself.
    """
    created = httpx.post(
        f"{url}/v1/keys",
        json={"name": KEY},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    if created.status_code not in (201, 409):
        raise RuntimeError(f"creating the key answered {created.status_code}")
    results = []
    for clients in CLIENTS:
        operations: list[Callable[[], object]] = [
            encrypter(url, token) for _ in range(clients)
        ]
        table = events_table(conninfo) if conninfo else None
        mark = ledger_mark(conninfo, table) if conninfo and table else None
        result = measure(f"{label}-{clients}", "encrypts/s", operations, seconds)
        if conninfo and table and mark:
            result.notes += ledger_notes(conninfo, table, mark)
        results.append(result)
        show(f"  HTTP encrypt, {clients:>2} client(s), {label}", result)
        if result.count == 0:
            raise RuntimeError(f"no encrypt succeeded ({label}, {clients} clients)")
    return results


def events_table(conninfo: str) -> str | None:
    """The ledger's events table: the one with an ``entry_hash`` column."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT table_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND column_name = 'entry_hash' LIMIT 1"
        ).fetchone()
    return str(row[0]) if row else None


# Running ---------------------------------------------------------------------


def run_store(
    name: str,
    database_url: str,
    raw: Callable[[float], Throughput],
    modes: list[tuple[str, bool]],
    seconds: float,
    conninfo: str | None = None,
) -> list[tuple[str, float]]:
    """Every measurement on one store; the ratios to its raw insert baseline."""
    print(f"{name}:")
    token = "kl_bench_" + secrets.token_urlsafe(16)
    before = raw(seconds / 2)
    aes = bench_raw_aes(seconds)
    http: list[tuple[str, Throughput]] = []
    # One data folder (signing key, KEK) for every server on this store: the
    # servers share the ledger, so they must share its secrets.
    with tempfile.TemporaryDirectory(prefix="keyledger-bench-") as data_dir:
        for label, group_commit in modes:
            with server(
                database_url, Path(data_dir), token, group_commit=group_commit
            ) as url:
                results = bench_http(url, token, label, seconds, conninfo)
            http += [(label, result) for result in results]
    after = raw(seconds / 2)
    raw_insert = combine(before, after)
    raw_insert.notes = [
        f"half before the HTTP runs: {before.rate:,.0f} rows/s, "
        f"half after: {after.rate:,.0f} rows/s"
    ]
    show("  raw INSERT+COMMIT, 1 connection", raw_insert)
    show("  raw AES-256-GCM encrypt, 1 thread", aes)
    ratios = [(f"{name} raw AES-GCM / raw insert", aes.rate / raw_insert.rate)]
    for label, result in http:
        clients = result.label.rsplit("-", 1)[1]
        ratios.append(
            (
                f"{name} HTTP {label}, {clients} clients / raw insert",
                result.rate / raw_insert.rate,
            )
        )
    print()
    return ratios


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.bench_key_use",
        description="Measure encrypt requests/s through the HTTP API with 1, 8 "
        "and 32 clients, every use recorded, against a raw insert baseline, on "
        "SQLite and PostgreSQL.",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "KEYLEDGER_BENCH_DATABASE_URL",
            "postgresql://postgres@127.0.0.1:5432/postgres",
        ),
        help="A PostgreSQL server to create a scratch database on (dropped at the "
        "end); default: $KEYLEDGER_BENCH_DATABASE_URL or the local server.",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=5.0,
        help="Each measurement's timed window after a short warm-up (default: 5).",
    )
    parser.add_argument(
        "--stores",
        default="sqlite,postgres",
        help="Which stores to measure, comma-separated (default: sqlite,postgres).",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--no-group-commit", action="store_true", help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive.")
    args.stores = [store.strip() for store in args.stores.split(",") if store.strip()]
    if not set(args.stores) <= {"sqlite", "postgres"} or not args.stores:
        parser.error("--stores takes sqlite, postgres or both.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        return serve(group_commit=not args.no_group_commit)
    print("keyledger key-use benchmark")
    print(f"  CPU:    {cpu_model()}, {usable_cores()} usable core(s)")
    print(f"  Code:   {code_revision()}")
    print(f"  Load:   {load_average()} (1, 5, 15 min) before the run")
    print(
        f"  Window: {args.seconds:g} s per measurement after a "
        f"{warmup_for(args.seconds):g} s warm-up; clients and server share the machine"
    )
    print()
    ratios: list[tuple[str, float]] = []
    try:
        if "sqlite" in args.stores:
            with tempfile.TemporaryDirectory(prefix="keyledger-bench-") as folder:
                ledger_file = Path(folder) / "ledger.sqlite3"
                raw_file = Path(folder) / "raw.sqlite3"
                ratios += run_store(
                    "SQLite",
                    f"sqlite:///{ledger_file}",
                    lambda seconds: bench_raw_sqlite_insert(raw_file, seconds),
                    [("no group commit", True)],
                    args.seconds,
                )
        if "postgres" in args.stores:
            with scratch_database(args.database_url) as dbname:
                conninfo = conninfo_for(args.database_url, dbname)
                url = _with_dbname(args.database_url, dbname)
                print(f"PostgreSQL scratch database {dbname} at {redact_url(url)}")
                ratios += run_store(
                    "PostgreSQL",
                    url,
                    lambda seconds: bench_raw_insert(conninfo, seconds),
                    [("group commit", True), ("no group commit", False)],
                    args.seconds,
                    conninfo,
                )
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except (RuntimeError, OSError, psycopg.Error) as error:
        print(f"The benchmark could not run: {error}", file=sys.stderr)
        return 1
    print("Ratios (against the raw insert baseline of the same store, same run)")
    for name, value in ratios:
        print(f"  {name:<58} {value:7.3f}")
    print(f"Load average {load_average()} after the run.")
    return 0


def _with_dbname(url: str, dbname: str) -> str:
    base, _, rest = url.rpartition("/")
    query = rest.partition("?")[2]
    return f"{base}/{dbname}" + (f"?{query}" if query else "")


if __name__ == "__main__":
    raise SystemExit(main())
