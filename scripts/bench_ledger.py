"""Benchmark the ledger's write and verification paths on PostgreSQL.

Run it by hand, never from the tests::

    python -m scripts.bench_ledger --database-url postgresql://postgres@127.0.0.1:5432/postgres

It creates a scratch database ``keyledger_bench_<random>`` on that server, drops
it again at the end (``WITH (FORCE)``), and in one run measures:

1. raw baseline: single-row ``INSERT`` + ``COMMIT`` of ~500 bytes over one
   autocommit psycopg connection, in rows/s;
2. signed appends/s through ``KeyService.rotate`` with one writer;
3. signed appends/s with eight writer threads sharing one ``KeyService``, and
   with eight writers that each have their own ``KeyService`` (own pool, own
   head cache, as separate processes would);
4. raw Ed25519 verification of ~100-byte messages on one core, in verifies/s;
5. ``ledger.verify.verify_ledger`` over the ledger built above, in events/s.

Each measurement warms up briefly and then counts the operations that finish
inside a window of ``--seconds`` (timed with ``time.perf_counter``). The run
ends with the ratios against their targets, marked PASS or MISS. The exit
status is 0 when every measurement ran, whatever the targets say, and 1 when a
measurement could not run (the verifier missing, the ledger failing to verify)
or the scratch database could not be created.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg import sql

from domain.clock import SystemClock
from ledger.application import redact_url
from ledger.material import KeyEncryptionKey
from ledger.service import CommandContext, KeyService
from ledger.signing import LedgerSigner
from ledger.store import Actor

ACTOR = Actor(principal="bench", token_id="tok_bench")
WRITERS = 8
SINGLE_WRITER_KEYS = 4
KEYS_PER_WRITER = 1
RAW_PAYLOAD_BYTES = 500
VERIFY_MESSAGE_BYTES = 100
# Eight separate services would open 8 x 10 pooled connections at once, most of
# the server's default max_connections of 100; each writer only ever holds one.
SEPARATE_POOL_SIZE = "2"

TARGET_ONE_WRITER = 0.5  # one-writer appends / raw inserts, at least
TARGET_EIGHT_WRITERS = 1.0  # eight-writer appends / raw inserts, above
TARGET_VERIFY = 0.8  # ledger verification / raw Ed25519 verifies, at least


# Measuring -----------------------------------------------------------------


@dataclass
class Throughput:
    """Operations that finished inside the measured window, and their latencies."""

    label: str
    unit: str
    count: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def warmup_for(seconds: float) -> float:
    """A brief warm-up: a tenth of the window, between 0.2 s and 1 s."""
    return min(1.0, max(0.2, seconds * 0.1))


def measure(
    label: str,
    unit: str,
    operations: list[Callable[[], object]],
    seconds: float,
) -> Throughput:
    """Run each operation in a loop on its own thread; count those done in the window.

    All threads start together, warm up, and stop once the window has passed.
    An operation that raises is counted by exception type and the loop goes on.
    """
    warmup = warmup_for(seconds)
    barrier = threading.Barrier(len(operations) + 1)
    window: dict[str, float] = {}
    done: list[list[tuple[float, float]]] = [[] for _ in operations]
    errors: list[Counter[str]] = [Counter() for _ in operations]
    stop = threading.Event()

    def loop(index: int) -> None:
        operation, finished, failed = operations[index], done[index], errors[index]
        barrier.wait()
        end = window["end"]
        while not stop.is_set():
            began = time.perf_counter()
            if began >= end:
                return
            try:
                operation()
            except Exception as error:  # measured, never fatal
                failed[type(error).__name__] += 1
                if sum(failed.values()) > 10_000:
                    return
                continue
            finished.append((began, time.perf_counter()))

    threads = [
        threading.Thread(target=loop, args=(index,), daemon=True, name=f"{label}-{index}")
        for index in range(len(operations))
    ]
    for thread in threads:
        thread.start()
    now = time.perf_counter()
    window["start"] = now + warmup
    window["end"] = now + warmup + seconds
    barrier.wait()
    try:
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:
        stop.set()
        raise
    start, end = window["start"], window["end"]
    latencies = [
        finish - began
        for finished in done
        for began, finish in finished
        if start <= finish < end
    ]
    total_errors: Counter[str] = Counter()
    for failed in errors:
        total_errors.update(failed)
    return Throughput(label, unit, len(latencies), seconds, latencies, total_errors)


# Machine -------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def server_settings(conninfo: str) -> dict[str, str]:
    names = ["server_version", "synchronous_commit", "fsync", "wal_sync_method",
             "commit_delay", "max_connections"]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return {
            name: str(conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name)))
                      .fetchone()[0])  # type: ignore[index]
            for name in names
        }


# Scratch database ----------------------------------------------------------


def conninfo_for(database_url: str, dbname: str | None = None) -> str:
    """A libpq URL for psycopg: the query string (``?schema=``) removed."""
    url = urlparse(database_url)
    if dbname is not None:
        url = url._replace(path=f"/{dbname}")
    return url._replace(query="", fragment="").geturl()


@contextmanager
def scratch_database(database_url: str) -> Iterator[str]:
    """Create ``keyledger_bench_<random>``, yield its name, and drop it afterwards."""
    name = f"keyledger_bench_{secrets.token_hex(5)}"
    admin = conninfo_for(database_url)
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        try:
            with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(name)
                    )
                )
            print(f"Dropped scratch database {name}.")
        except psycopg.Error as error:
            print(f"WARNING: could not drop scratch database {name}: {error}",
                  file=sys.stderr)


# 1. Raw insert baseline ----------------------------------------------------


def bench_raw_insert(conninfo: str, seconds: float) -> Throughput:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE raw_insert_bench (id bigserial PRIMARY KEY, payload bytea NOT NULL)"
        )
        payloads = [os.urandom(RAW_PAYLOAD_BYTES) for _ in range(64)]
        statement = "INSERT INTO raw_insert_bench (payload) VALUES (%s)"
        counter = iter(range(1 << 62))
        cursor = conn.cursor()

        def insert() -> None:
            cursor.execute(statement, (payloads[next(counter) % 64],), prepare=True)

        result = measure("raw-insert", "rows/s", [insert], seconds)
        cursor.close()
    return result


# 2-3. Signed appends through the service ------------------------------------


@dataclass
class AppendStats:
    """Counts attempts and head-moved retries inside a recorder's ``_append``."""

    attempts: int = 0
    head_moved: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> tuple[int, int]:
        with self.lock:
            return self.attempts, self.head_moved


def instrument(service: KeyService, stats: AppendStats) -> None:
    """Count the recorder's append attempts and "head moved" retries.

    Wraps the PostgreSQL recorder's private ``_append`` on this instance only;
    if that method is gone (the recorder changed) nothing is counted.
    """
    recorder: Any = service.ledger
    original = getattr(recorder, "_append", None)
    if original is None:
        return

    def counted(*args: Any, **kwargs: Any) -> Any:
        with stats.lock:
            stats.attempts += 1
        try:
            return original(*args, **kwargs)
        except Exception as error:
            if type(error).__name__ == "_HeadMovedError":
                with stats.lock:
                    stats.head_moved += 1
            raise

    recorder._append = counted


@dataclass
class Bench:
    """What the service measurements share: the ledger's URL and its secrets."""

    url: str
    signer: LedgerSigner
    kek: KeyEncryptionKey
    clock: SystemClock = field(default_factory=SystemClock)

    def open(self) -> KeyService:
        return KeyService.open(
            database_url=self.url, signer=self.signer, kek=self.kek, clock=self.clock
        )

    def context(self) -> CommandContext:
        return CommandContext(ACTOR, f"bench-{secrets.token_hex(6)}")

    def create_keys(self, service: KeyService, prefix: str, count: int) -> list[str]:
        names = [f"{prefix}-{index}" for index in range(count)]
        for name in names:
            service.create_key(self.context(), name=name)
        return names

    def rotator(self, service: KeyService, names: list[str]) -> Callable[[], object]:
        """One writer: rotate its keys round-robin, one signed append per call."""
        turn = iter(range(1 << 62))

        def rotate() -> object:
            return service.rotate(self.context(), names[next(turn) % len(names)])

        return rotate


def bench_appends(
    bench: Bench,
    services: list[KeyService],
    label: str,
    prefix: str,
    keys_per_writer: int,
    seconds: float,
) -> Throughput:
    """Writer ``i`` rotates its own keys through ``services[i]``."""
    stats = AppendStats()
    for service in {id(service): service for service in services}.values():
        instrument(service, stats)
    operations = [
        bench.rotator(service, bench.create_keys(service, f"{prefix}-w{index}",
                                                 keys_per_writer))
        for index, service in enumerate(services)
    ]
    result = measure(label, "appends/s", operations, seconds)
    attempts, head_moved = stats.snapshot()
    if head_moved:
        result.notes.append(
            f"{head_moved} of {attempts} append attempts (warm-up included) found "
            "the head moved and were re-sealed"
        )
    return result


def open_separate(bench: Bench, count: int) -> list[KeyService]:
    """Open ``count`` services, each with its own (small) connection pool."""
    variable = "KEYLEDGER_POSTGRES_POOL_SIZE"  # eventsourcing prefers this to the URL's
    previous = os.environ.get(variable)
    os.environ[variable] = SEPARATE_POOL_SIZE
    try:
        return [bench.open() for _ in range(count)]
    finally:
        if previous is None:
            del os.environ[variable]
        else:
            os.environ[variable] = previous


def top_up(bench: Bench, service: KeyService, wanted: int) -> int:
    """Append until the ledger holds at least ``wanted`` events; return the head."""
    head = service.head_position()
    if head >= wanted:
        return head
    names = bench.create_keys(service, "topup", WRITERS)
    missing = wanted - service.head_position()
    share = [missing // WRITERS + (1 if index < missing % WRITERS else 0)
             for index in range(WRITERS)]

    def write(name: str, count: int) -> None:
        for _ in range(count):
            service.rotate(bench.context(), name)

    threads = [threading.Thread(target=write, args=(name, count), daemon=True)
               for name, count in zip(names, share, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return service.head_position()


# 4. Raw Ed25519 verification -----------------------------------------------


def bench_raw_verify(seconds: float) -> Throughput:
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    messages = [os.urandom(VERIFY_MESSAGE_BYTES) for _ in range(256)]
    signed = [(key.sign(message), message) for message in messages]
    turn = iter(range(1 << 62))

    def verify() -> None:
        signature, message = signed[next(turn) % len(signed)]
        public.verify(signature, message)

    return measure("raw-verify", "verifies/s", [verify], seconds)


# 5. Ledger verification ----------------------------------------------------


def bench_verify_ledger(
    bench: Bench, service: KeyService, seconds: float
) -> Throughput | str:
    """Events/s of ``verify_ledger`` over the whole ledger, or why it was not run.

    The first run is the warm-up (and the correctness check); further runs are
    timed until ``seconds`` have passed. If the warm-up alone took longer than
    that, its own time is reported.
    """
    try:
        from ledger.verify import verify_ledger
    except ImportError as error:
        return f"ledger.verify is not available ({error})"
    keys = {bench.signer.kid: bench.signer.public_key}
    began = time.perf_counter()
    report = verify_ledger(service.ledger, keys)
    first = time.perf_counter() - began
    if not report.ok:
        return f"the ledger did not verify: {report.first_failure}"
    checked, runs, elapsed = 0, 0, 0.0
    while elapsed < seconds:
        began = time.perf_counter()
        report = verify_ledger(service.ledger, keys)
        elapsed += time.perf_counter() - began
        checked += report.checked
        runs += 1
        if first >= seconds:
            break
    result = Throughput("verify-ledger", "events/s", checked, elapsed)
    result.notes.append(
        f"{runs} timed run(s) over {report.checked} events after one warm-up run "
        f"of {first:.2f} s"
    )
    return result


# Report --------------------------------------------------------------------


def describe(result: Throughput) -> str:
    line = f"{result.rate:>10,.0f} {result.unit:<11} ({result.count:,} in {result.seconds:.1f} s"
    if result.latencies and result.unit != "events/s":
        line += (
            f"; latency p50 {result.percentile(0.5) * 1000:.2f} ms, "
            f"p99 {result.percentile(0.99) * 1000:.2f} ms"
        )
    line += ")"
    if result.errors:
        line += " errors: " + ", ".join(f"{name} x{n}" for name, n in result.errors.items())
    return line


def verdict(value: float, target: float, *, strictly: bool) -> str:
    met = value > target if strictly else value >= target
    return "PASS" if met else "MISS"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.bench_ledger",
        description="Measure the ledger's write and verification throughput on "
        "PostgreSQL against a raw INSERT and a raw Ed25519 verify baseline.",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "KEYLEDGER_BENCH_DATABASE_URL",
            "postgresql://postgres@127.0.0.1:5432/postgres",
        ),
        help="URL of a PostgreSQL database the benchmark can connect to and create "
        "(and drop) its own scratch database from "
        "(default: $KEYLEDGER_BENCH_DATABASE_URL or the local server).",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=5.0,
        help="Length of each measured window in seconds, after a short warm-up "
        "(default: 5).",
    )
    parser.add_argument(
        "--verify-events",
        type=int,
        default=5000,
        help="Least number of events the ledger holds when its verification is "
        "timed; it is topped up with rotations if the write measurements left "
        "fewer (default: 5000).",
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.verify_events < 1:
        parser.error("--seconds and --verify-events must be positive.")

    started = time.perf_counter()
    try:
        settings = server_settings(conninfo_for(args.database_url))
    except psycopg.Error as error:
        print(f"Cannot reach PostgreSQL at {redact_url(args.database_url)}: {error}",
              file=sys.stderr)
        return 1
    print("keyledger benchmark")
    print(f"  CPU:        {cpu_model()}, {usable_cores()} usable core(s)")
    print(f"  Python:     {platform.python_implementation()} {platform.python_version()}")
    print(f"  PostgreSQL: {settings['server_version']} at {redact_url(args.database_url)} "
          f"(synchronous_commit={settings['synchronous_commit']}, "
          f"fsync={settings['fsync']}, wal_sync_method={settings['wal_sync_method']}, "
          f"commit_delay={settings['commit_delay']})")
    print(f"  Window:     {args.seconds:g} s per measurement after a "
          f"{warmup_for(args.seconds):g} s warm-up")
    print()

    failed = False
    try:
        with scratch_database(args.database_url) as dbname:
            print(f"Scratch database {dbname}.")
            conninfo = conninfo_for(args.database_url, dbname)
            bench = Bench(
                url=conninfo,
                signer=LedgerSigner(Ed25519PrivateKey.generate()),
                kek=KeyEncryptionKey(os.urandom(32)),
            )

            raw_insert = bench_raw_insert(conninfo, args.seconds)
            print(f"1. raw INSERT+COMMIT, 1 connection    {describe(raw_insert)}")

            service = bench.open()
            try:
                one = bench_appends(bench, [service], "one-writer", "one",
                                    SINGLE_WRITER_KEYS, args.seconds)
                print(f"2. signed appends, 1 writer            {describe(one)}")
                shared = bench_appends(bench, [service] * WRITERS, "shared", "shared",
                                       KEYS_PER_WRITER, args.seconds)
                print(f"3a. signed appends, 8 writers, 1 service {describe(shared)}")
                for note in shared.notes:
                    print(f"      {note}")
                separate_services = open_separate(bench, WRITERS)
                try:
                    separate = bench_appends(bench, separate_services, "separate",
                                             "separate", KEYS_PER_WRITER, args.seconds)
                finally:
                    for other in separate_services:
                        other.close()
                print(f"3b. signed appends, 8 writers, 8 services {describe(separate)}")
                for note in separate.notes:
                    print(f"      {note}")

                raw_verify = bench_raw_verify(args.seconds)
                print(f"4. raw Ed25519 verify, 1 thread       {describe(raw_verify)}")

                head = top_up(bench, service, args.verify_events)
                print(f"   (ledger now holds {head:,} events)")
                verified = bench_verify_ledger(bench, service, args.seconds)
                if isinstance(verified, str):
                    failed = True
                    print(f"5. verify_ledger                       not measured: {verified}")
                else:
                    print(f"5. verify_ledger                       {describe(verified)}")
                    for note in verified.notes:
                        print(f"      {note}")
            finally:
                service.close()

            print()
            print("Ratios (target)")
            rows: list[tuple[str, float | None, str, float, bool]] = [
                ("one-writer / raw-insert", one.rate / raw_insert.rate,
                 ">= 0.5", TARGET_ONE_WRITER, False),
                ("eight-writer (1 service) / raw-insert", shared.rate / raw_insert.rate,
                 "> 1.0", TARGET_EIGHT_WRITERS, True),
                ("eight-writer (8 services) / raw-insert",
                 separate.rate / raw_insert.rate, "> 1.0", TARGET_EIGHT_WRITERS, True),
                ("verify / raw-verify",
                 None if isinstance(verified, str) else verified.rate / raw_verify.rate,
                 ">= 0.8", TARGET_VERIFY, False),
            ]
            for name, value, shown, target, strictly in rows:
                if value is None:
                    print(f"  {name:<40} {'n/a':>6}  (target {shown:>6})  not measured")
                else:
                    mark = verdict(value, target, strictly=strictly)
                    print(f"  {name:<40} {value:6.2f}  (target {shown:>6})  {mark}")
    except psycopg.Error as error:
        print(f"The benchmark could not run: {error}", file=sys.stderr)
        return 1
    print(f"Total time {time.perf_counter() - started:.0f} s.")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
