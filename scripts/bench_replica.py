"""Benchmark replication: catch-up throughput and steady-state lag, on PostgreSQL.

Run it by hand, never from the tests::

    python -m scripts.bench_replica --database-url postgresql://postgres@127.0.0.1:5432/postgres

It creates three scratch databases on that server (the primary's, the catch-up
replica's, the lag replica's), drops them at the end, and in one run measures:

1. catch-up: a primary holding ``--events`` entries (usage records with a key
   rotation every 500) is served by a real ``keyledger serve``; a follower
   reads it over HTTP, verifies every entry and applies it, in events/s;
2. raw Ed25519 verification on one core of the same number of signatures;
3. raw inserts of the same entry bytes into a plain table, 500 rows per
   transaction (the follower's batch), in rows/s;
4. steady-state lag: writers rotate keys on the primary for ``--lag-seconds``
   while a ``keyledger replica`` process follows; for each acknowledged write,
   the time until the replica answers a read with ``Min-Position`` of it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from domain.clock import SystemClock
from domain.usage import KeyUse
from ledger.replica import Follower, HttpSource, pin_keys
from ledger.service import CommandContext, KeyService, load_local_secrets
from ledger.signing import public_key_pem
from ledger.store import Actor, LedgerWrite
from scripts.dr_drill import Process, _env, _replica_env, scratch_databases

ACTOR = Actor("bench", "tok_bench")
BATCH = 500


def fill_ledger(service: KeyService, events: int) -> None:
    """Append ``events`` real entries fast: usage records, a rotation every 500."""
    context = CommandContext(ACTOR, "fill")
    service.create_key(context, name="busy")
    key_id = str(service._load("busy").id)
    written = 1
    while written < events:
        uses = [
            KeyUse.record(
                key_name="busy",
                key_id=key_id,
                operation="encrypt",
                outcomes={"ok": 1},
                now=SystemClock().now(),
            )
            for _ in range(min(BATCH - 1, events - written))
        ]
        service.app.save(*uses, ledger=LedgerWrite(ACTOR, "fill"))
        written += len(uses)
        if written < events:
            service.rotate(context, "busy")
            written += 1


def open_store(data_dir: Path, database_url: str | None) -> KeyService:
    signer, kek, _ = load_local_secrets(data_dir)
    url = database_url or f"sqlite:///{data_dir / 'ledger.sqlite3'}"
    return KeyService.open(
        database_url=url, signer=signer, kek=kek, clock=SystemClock()
    )


def bench_catch_up(
    work: Path, stores: tuple[str | None, str | None], primary: Process, token: str
) -> tuple[float, int, list[tuple[bytes, bytes, str]]]:
    """Events/s of a follower catching up over HTTP; and signatures to re-verify."""
    headers = {"Authorization": f"Bearer {token}"}
    env = _replica_env(work, primary, stores[1], token, headers)
    replica = open_store(Path(env["KEYLEDGER_DATA_DIR"]), stores[1])
    source = HttpSource(primary.url, token)
    pem = source.signing_key_pem()
    keys = pin_keys(pem, key_files=[pem.encode()])
    follower = Follower(replica, source, keys, batch=BATCH, kek=replica.kek)
    follower.prepare()
    started = time.perf_counter()
    halt = follower.run(threading.Event(), until_caught_up=True)
    elapsed = time.perf_counter() - started
    if halt is not None:
        raise RuntimeError(f"the follower halted: {halt}")
    count = follower.status.position
    rows = replica.ledger.query(
        f"SELECT state, signature, entry_hash FROM {replica.ledger.events_table_name} "
        "ORDER BY notification_id LIMIT %s",
        (count,),
    )
    samples = [
        (bytes(row["state"]), bytes(row["signature"]), str(row["entry_hash"]))
        for row in rows
    ]
    replica.close()
    source.close()
    return count / elapsed, count, samples


def bench_raw_verify(samples: list[tuple[bytes, bytes, str]], public_pem: str) -> float:
    from ledger.offline import entry_signing_message
    from ledger.signing import load_public_key

    key = load_public_key(public_pem)
    messages = [(sig, entry_signing_message(h)) for _, sig, h in samples]
    started = time.perf_counter()
    for signature, message in messages:
        key.verify(signature, message)
    return len(messages) / (time.perf_counter() - started)


def bench_raw_insert(
    database_url: str, samples: list[tuple[bytes, bytes, str]]
) -> float:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE raw_insert (position bigint PRIMARY KEY, entry bytea, "
            "signature bytea, hash text)"
        )
        started = time.perf_counter()
        for start in range(0, len(samples), BATCH):
            chunk = samples[start : start + BATCH]
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO raw_insert VALUES (%s, %s, %s, %s)",
                    [
                        (start + offset + 1, entry, signature, hash_hex)
                        for offset, (entry, signature, hash_hex) in enumerate(chunk)
                    ],
                )
        return len(samples) / (time.perf_counter() - started)


def bench_lag(
    work: Path,
    store: str,
    primary: Process,
    token: str,
    seconds: float,
    writers: int,
) -> dict[str, Any]:
    """Seconds from each acknowledged write until the replica serves it."""
    headers = {"Authorization": f"Bearer {token}"}
    lag_dir = work / "lag"
    lag_dir.mkdir()
    env = _replica_env(lag_dir, primary, store, token, headers)
    replica = Process("replica", env, ["replica"], lag_dir / "replica.log")
    delays: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()
    try:
        httpx.get(
            f"{replica.url}/v1/replication/status",
            headers={**headers, "Min-Position": str(_head(primary, headers))},
            timeout=600,
        )

        def write(index: int) -> None:
            with (
                httpx.Client(base_url=primary.url, headers=headers) as writer,
                httpx.Client(
                    base_url=replica.url, headers=headers, timeout=30
                ) as reader,
            ):
                writer.post("/v1/keys", json={"name": f"lag-{index}"})
                while not stop.is_set():
                    answer = writer.post(f"/v1/keys/lag-{index}/rotate")
                    acked = time.perf_counter()
                    position = answer.json()["receipts"][-1]["position"]
                    seen = reader.get(
                        "/v1/replication/status",
                        headers={"Min-Position": str(position)},
                    )
                    if seen.status_code == 200:
                        with lock:
                            delays.append(time.perf_counter() - acked)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
        for thread in threads:
            thread.start()
        time.sleep(seconds)  # the sustained load runs for this long
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        replica.stop()
    delays.sort()
    return {
        "writes": len(delays),
        "writes_per_second": len(delays) / seconds,
        "p50_ms": 1000 * statistics.median(delays) if delays else None,
        "p95_ms": 1000 * delays[int(0.95 * (len(delays) - 1))] if delays else None,
        "max_ms": 1000 * delays[-1] if delays else None,
    }


def _head(primary: Process, headers: dict[str, str]) -> int:
    answer = httpx.get(f"{primary.url}/v1/ledger/head", headers=headers)
    return int(answer.json()["head"]["position"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_replica", description=__doc__)
    parser.add_argument(
        "--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--lag-seconds", type=float, default=10.0)
    parser.add_argument("--writers", type=int, default=4)
    args = parser.parse_args(argv)
    token = "kl_bench_replica_token_not_secret"
    with (
        tempfile.TemporaryDirectory() as folder,
        scratch_databases(args.database_url, ("p", "r", "lag")) as databases,
    ):
        work = Path(folder)
        stores: tuple[str | None, str | None] = (databases[0], databases[1])
        primary_store = open_store(work / "primary", stores[0])
        fill_ledger(primary_store, args.events)
        public = public_key_pem(primary_store.signer.public_key)
        primary_store.close()
        primary = Process(
            "primary",
            _env(work / "primary", stores[0], token),
            ["serve"],
            work / "p.log",
        )
        try:
            rate, count, samples = bench_catch_up(work, stores, primary, token)
            raw_verify = bench_raw_verify(samples, public)
            raw_insert = bench_raw_insert(databases[1], samples)
            lag = bench_lag(
                work, databases[2], primary, token, args.lag_seconds, args.writers
            )
        finally:
            primary.stop()
    print(f"cpu: {os.cpu_count()} cores; python {sys.version.split()[0]}")
    print(f"catch-up: {count} events in {count / rate:.1f} s = {rate:,.0f} events/s")
    print(f"raw Ed25519 verify, one core: {raw_verify:,.0f}/s")
    print(f"raw insert, {BATCH} rows per transaction: {raw_insert:,.0f} rows/s")
    print(
        f"ratios: catch-up / raw verify = {rate / raw_verify:.2f}; "
        f"catch-up / raw insert = {rate / raw_insert:.2f}"
    )
    print(
        f"steady-state lag under {args.writers} writers "
        f"({lag['writes_per_second']:.0f} writes/s): p50 {lag['p50_ms']:.1f} ms, "
        f"p95 {lag['p95_ms']:.1f} ms, max {lag['max_ms']:.1f} ms "
        f"({lag['writes']} writes)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
