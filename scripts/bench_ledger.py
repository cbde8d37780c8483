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
inside a window of ``--seconds`` (timed with ``time.perf_counter``). Because
the ratios matter more than the absolute figures on a shared machine, the raw
INSERT baseline is taken half before and half after the appends, and the raw
verifies are interleaved with the ledger verification runs. The run ends with
the ratios against their targets, marked PASS or MISS: one-writer/raw-insert
at least 0.5, eight-writer/raw-insert above 1.0, verify/raw-verify at least
0.8. The exit status is 0 when every measurement ran, whatever the targets
say, and 1 when a measurement could not run (the verifier missing, the ledger
failing to verify) or the scratch database could not be created, and 130
after Ctrl-C. The scratch database is dropped in every case.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
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
TOP_UP_KEYS_PER_WRITER = 8
RAW_PAYLOAD_BYTES = 500
VERIFY_MESSAGE_BYTES = 100
# Eight separate services would open 8 x 10 pooled connections at once, most of
# the server's default max_connections of 100; each writer only ever holds one.
SEPARATE_POOL_SIZE = "2"
REPO = Path(__file__).resolve().parent.parent

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
    cpu_seconds: float | None = None  # this process's CPU time, where measured

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0

    @property
    def rate_per_cpu(self) -> float | None:
        if not self.cpu_seconds:
            return None
        return self.count / self.cpu_seconds

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
        threading.Thread(
            target=loop, args=(index,), daemon=True, name=f"{label}-{index}"
        )
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


def code_revision() -> str:
    """The commit measured, and whether the write path had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "ledger", "domain", "projections"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    if dirty:
        changed = ", ".join(line[3:] for line in dirty if line.strip())
        return f"{head} + uncommitted changes in {changed}"
    return head


def load_average() -> str:
    try:
        with open("/proc/loadavg", encoding="utf-8") as loadavg:
            return " ".join(loadavg.read().split()[:3])
    except OSError:
        return "unknown"


def server_settings(conninfo: str) -> dict[str, str]:
    names = [
        "server_version",
        "synchronous_commit",
        "fsync",
        "wal_sync_method",
        "commit_delay",
    ]
    settings = {}
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
        for name in names:
            row = conn.execute(
                sql.SQL("SHOW {}").format(sql.Identifier(name))
            ).fetchone()
            settings[name] = str(row[0]) if row else "?"
    return settings


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
            print(
                f"WARNING: could not drop scratch database {name}: {error}",
                file=sys.stderr,
            )


# 1. Raw insert baseline ----------------------------------------------------


def bench_raw_insert(conninfo: str, seconds: float) -> Throughput:
    """Single-row INSERTs, each its own autocommitted transaction, on one connection."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS raw_insert_bench "
            "(id bigserial PRIMARY KEY, payload bytea NOT NULL)"
        )
        payloads = [os.urandom(RAW_PAYLOAD_BYTES) for _ in range(64)]
        statement = "INSERT INTO raw_insert_bench (payload) VALUES (%s)"
        turns = iter(range(1 << 62))
        with conn.cursor() as cursor:

            def insert() -> None:
                payload = payloads[next(turns) % len(payloads)]
                cursor.execute(statement, (payload,), prepare=True)

            return measure("raw-insert", "rows/s", [insert], seconds)


# 2-3. Signed appends through the service ------------------------------------


@dataclass(frozen=True)
class LedgerMark:
    """Where the ledger stood before a measurement, read from PostgreSQL itself."""

    head: int
    rollbacks: int


def ledger_mark(conninfo: str, table: str) -> LedgerMark:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        head = conn.execute(
            sql.SQL("SELECT coalesce(max(notification_id), 0) FROM {}").format(
                sql.Identifier(table)
            )
        ).fetchone()
        rollbacks = conn.execute(
            "SELECT xact_rollback FROM pg_stat_database "
            "WHERE datname = current_database()"
        ).fetchone()
    return LedgerMark(
        int(head[0]) if head else 0, int(rollbacks[0]) if rollbacks else 0
    )


def ledger_notes(conninfo: str, table: str, mark: LedgerMark) -> list[str]:
    """How the events since ``mark`` were committed, whatever the recorder does.

    Every row's ``xmin`` names the transaction that inserted it, so the events
    per transaction are exact. Rolled-back transactions (head-moved retries,
    conflicts) come from PostgreSQL's statistics, which lag by up to a second.
    """
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT count(*), count(DISTINCT xmin::text) FROM {} "
                "WHERE notification_id > %s"
            ).format(sql.Identifier(table)),
            (mark.head,),
        ).fetchone()
    events, transactions = (int(row[0]), int(row[1])) if row else (0, 0)
    rollbacks = ledger_mark(conninfo, table).rollbacks - mark.rollbacks
    if not transactions:
        return []
    return [
        f"{events:,} events in {transactions:,} transactions "
        f"({events / transactions:.2f} per transaction), about {rollbacks:,} "
        "rolled back (warm-up included)"
    ]


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


class Rotator:
    """One writer: rotates its own keys round-robin, one signed append per call."""

    def __init__(self, bench: Bench, service: KeyService, names: list[str]) -> None:
        self.bench, self.service, self.names = bench, service, names
        self.calls = 0  # warm-up and failures included

    def __call__(self) -> object:
        name = self.names[self.calls % len(self.names)]
        self.calls += 1
        return self.service.rotate(self.bench.context(), name)


def bench_appends(
    bench: Bench,
    services: list[KeyService],
    label: str,
    keys_per_writer: int,
    seconds: float,
) -> Throughput:
    """Writer ``i`` rotates its own fresh keys through ``services[i]``."""
    writers = [
        Rotator(
            bench,
            service,
            bench.create_keys(service, f"{label}-w{index}", keys_per_writer),
        )
        for index, service in enumerate(services)
    ]
    table = services[0].ledger.events_table_name
    mark = ledger_mark(bench.url, table)
    operations: list[Callable[[], object]] = [*writers]
    result = measure(label, "appends/s", operations, seconds)
    keys = len(writers) * keys_per_writer
    tried = sum(writer.calls for writer in writers)
    result.notes.append(
        f"{keys} fresh key(s), each rotated about {tried // keys:,} times "
        "(warm-up included)"
    )
    result.notes += ledger_notes(bench.url, table, mark)
    return result


def open_separate(bench: Bench, count: int) -> list[KeyService]:
    """Open ``count`` services, each with its own (small) connection pool."""
    variable = "KEYLEDGER_POSTGRES_POOL_SIZE"  # eventsourcing prefers it to the URL's
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
    if service.head_position() >= wanted:
        return service.head_position()
    # Many fresh keys, because an append costs more the more versions its key has.
    names = bench.create_keys(service, "topup", WRITERS * TOP_UP_KEYS_PER_WRITER)
    missing = max(0, wanted - service.head_position())
    shares = [
        missing // WRITERS + (1 if index < missing % WRITERS else 0)
        for index in range(WRITERS)
    ]

    def write(index: int, count: int) -> None:
        rotate = Rotator(bench, service, names[index::WRITERS])
        for _ in range(count):
            rotate()

    threads = [
        threading.Thread(target=write, args=(index, count), daemon=True)
        for index, count in enumerate(shares)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return service.head_position()


# 4-5. Raw Ed25519 verification and ledger verification ---------------------


def raw_verifier() -> Callable[[], None]:
    """One Ed25519 verification of a ~100-byte message per call."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    messages = [os.urandom(VERIFY_MESSAGE_BYTES) for _ in range(256)]
    signed = [(key.sign(message), message) for message in messages]
    turns = iter(range(1 << 62))

    def verify() -> None:
        signature, message = signed[next(turns) % len(signed)]
        public.verify(signature, message)

    return verify


def bench_verification(
    bench: Bench, service: KeyService, seconds: float
) -> tuple[Throughput, Throughput | str]:
    """Raw verifies/s, and events/s of ``verify_ledger`` (or why it was not run).

    The two are interleaved so that both see the same machine load: each timed
    run of ``verify_ledger`` over the whole ledger is followed by raw verifies
    for as long as that run took, until ``seconds`` of ledger verification have
    passed. A first, untimed run is the warm-up and the correctness check.
    """
    raw = raw_verifier()
    try:
        from ledger.verify import verify_ledger
    except ImportError as error:
        reason = f"ledger.verify is not available ({error})"
        return measure("raw-verify", "verifies/s", [raw], seconds), reason
    keys = {bench.signer.kid: bench.signer.public_key}
    try:
        report = verify_ledger(service.ledger, keys)
    except Exception as error:  # the verifier is someone else's work in progress
        reason = f"verify_ledger raised {type(error).__name__}: {error}"
        return measure("raw-verify", "verifies/s", [raw], seconds), reason
    if not report.ok:
        reason = f"the ledger did not verify: {report.first_failure}"
        return measure("raw-verify", "verifies/s", [raw], seconds), reason
    deadline = time.perf_counter() + warmup_for(seconds)
    while time.perf_counter() < deadline:
        raw()
    checked, runs, ledger_time, ledger_cpu = 0, 0, 0.0, 0.0
    verified, raw_time, raw_cpu = 0, 0.0, 0.0
    while ledger_time < seconds:
        cpu, began = time.process_time(), time.perf_counter()
        report = verify_ledger(service.ledger, keys)
        took = time.perf_counter() - began
        ledger_cpu += time.process_time() - cpu
        ledger_time += took
        checked += report.checked
        runs += 1
        cpu, began = time.process_time(), time.perf_counter()
        now = began
        while now - began < took:
            raw()
            verified += 1
            now = time.perf_counter()
        raw_cpu += time.process_time() - cpu
        raw_time += now - began
    raw_result = Throughput("raw-verify", "verifies/s", verified, raw_time)
    raw_result.cpu_seconds = raw_cpu
    raw_result.notes.append("interleaved with the verify_ledger runs below")
    result = Throughput("verify-ledger", "events/s", checked, ledger_time)
    result.cpu_seconds = ledger_cpu
    result.notes.append(
        f"{runs} timed run(s) over all {report.checked:,} events, after one warm-up "
        f"run; this process used {ledger_cpu / ledger_time:.2f} CPU cores meanwhile, "
        f"{checked / ledger_cpu:,.0f} events per CPU second"
    )
    return raw_result, result


# Report --------------------------------------------------------------------


def describe(result: Throughput) -> str:
    line = (
        f"{result.rate:>9,.0f} {result.unit:<10} "
        f"({result.count:,} in {result.seconds:.1f} s"
    )
    if result.latencies:
        line += (
            f"; p50 {result.percentile(0.5) * 1000:.2f} ms, "
            f"p99 {result.percentile(0.99) * 1000:.2f} ms"
        )
    line += ")"
    if result.errors:
        line += "; failed: " + ", ".join(
            f"{name} x{count}" for name, count in result.errors.items()
        )
    return line


def combine(before: Throughput, after: Throughput) -> Throughput:
    """One figure from two halves of a measurement, noting each half's rate."""
    result = Throughput(
        before.label,
        before.unit,
        before.count + after.count,
        before.seconds + after.seconds,
        before.latencies + after.latencies,
        before.errors + after.errors,
    )
    result.notes.append(
        f"half before the appends: {before.rate:,.0f} {before.unit}, "
        f"half after: {after.rate:,.0f} {after.unit}"
    )
    return result


def show(title: str, result: Throughput) -> None:
    print(f"{title:<40} {describe(result)}")
    for note in result.notes:
        print(f"{'':<6}{note}")


def verdict(value: float, target: float, *, strictly: bool) -> str:
    met = value > target if strictly else value >= target
    return "PASS" if met else "MISS"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.bench_ledger",
        description="Measure the ledger's signed appends and its verification on "
        "PostgreSQL against a raw INSERT and a raw Ed25519 verify baseline.",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "KEYLEDGER_BENCH_DATABASE_URL",
            "postgresql://postgres@127.0.0.1:5432/postgres",
        ),
        help="URL of an existing PostgreSQL database to connect to; the benchmark "
        "creates its own scratch database on that server and drops it at the end "
        "(default: $KEYLEDGER_BENCH_DATABASE_URL or the local server).",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=5.0,
        help="How long each measurement's timed window lasts, in seconds, after "
        "a short warm-up (default: 5).",
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
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Failed appends are counted per measurement; their log lines would only bury them.
    logging.getLogger("ledger").setLevel(logging.ERROR)
    started = time.perf_counter()
    try:
        settings = server_settings(conninfo_for(args.database_url))
    except psycopg.Error as error:
        print(
            f"Cannot reach PostgreSQL at {redact_url(args.database_url)}: {error}",
            file=sys.stderr,
        )
        return 1
    print("keyledger benchmark")
    print(f"  CPU:        {cpu_model()}, {usable_cores()} usable core(s)")
    print(
        f"  Python:     {platform.python_implementation()} {platform.python_version()}"
    )
    print(
        f"  PostgreSQL: {settings['server_version']} at "
        f"{redact_url(args.database_url)} "
        f"(synchronous_commit={settings['synchronous_commit']}, "
        f"fsync={settings['fsync']}, wal_sync_method={settings['wal_sync_method']}, "
        f"commit_delay={settings['commit_delay']})"
    )
    print(f"  Code:       {code_revision()}")
    print(f"  Load:       {load_average()} (1, 5, 15 min) before the run")
    print(
        f"  Window:     {args.seconds:g} s per measurement after a "
        f"{warmup_for(args.seconds):g} s warm-up"
    )
    print()
    try:
        with scratch_database(args.database_url) as dbname:
            print(f"Scratch database {dbname}.")
            failed = run(args, conninfo_for(args.database_url, dbname))
    except psycopg.Error as error:
        print(f"The benchmark could not run: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    print(
        f"Total time {time.perf_counter() - started:.0f} s; "
        f"load average {load_average()} after the run."
    )
    return 1 if failed else 0


def run(args: argparse.Namespace, conninfo: str) -> bool:
    """Run every measurement on the scratch database; return whether one failed."""
    bench = Bench(
        url=conninfo,
        signer=LedgerSigner(Ed25519PrivateKey.generate()),
        kek=KeyEncryptionKey(os.urandom(32)),
    )
    seconds = args.seconds

    # Half the baseline before the service measurements and half after, so that
    # a change in the machine's load shows and affects both sides alike.
    raw_before = bench_raw_insert(conninfo, seconds / 2)

    service = bench.open()
    try:
        one = bench_appends(bench, [service], "one", SINGLE_WRITER_KEYS, seconds)
        show("2.  signed appends, 1 writer", one)
        shared = bench_appends(
            bench, [service] * WRITERS, "shared", KEYS_PER_WRITER, seconds
        )
        show("3a. signed appends, 8 writers, 1 service", shared)
        separate_services = open_separate(bench, WRITERS)
        try:
            separate = bench_appends(
                bench, separate_services, "separate", KEYS_PER_WRITER, seconds
            )
        finally:
            for other in separate_services:
                other.close()
        show("3b. signed appends, 8 writers, 8 services", separate)
        raw_after = bench_raw_insert(conninfo, seconds / 2)
        raw_insert = combine(raw_before, raw_after)
        show("1.  raw INSERT+COMMIT, 1 connection", raw_insert)

        head = top_up(bench, service, args.verify_events)
        raw_verify, verified = bench_verification(bench, service, seconds)
        show("4.  raw Ed25519 verify, 1 thread", raw_verify)
        if isinstance(verified, str):
            print(f"{'5.  verify_ledger':<40} not measured: {verified}")
        else:
            show(f"5.  verify_ledger, {head:,} events", verified)
    finally:
        service.close()

    verify_ratio = verify_cpu_ratio = None
    if not isinstance(verified, str):
        verify_ratio = verified.rate / raw_verify.rate
        if verified.rate_per_cpu and raw_verify.rate_per_cpu:
            # Like for like if verify_ledger spreads its work over several cores.
            verify_cpu_ratio = verified.rate_per_cpu / raw_verify.rate_per_cpu
    ratios: list[tuple[str, float | None, str, float, bool]] = [
        ("one-writer / raw-insert", one.rate / raw_insert.rate, ">= 0.5",
         TARGET_ONE_WRITER, False),
        ("eight-writer (1 service) / raw-insert", shared.rate / raw_insert.rate,
         "> 1.0", TARGET_EIGHT_WRITERS, True),
        ("eight-writer (8 services) / raw-insert", separate.rate / raw_insert.rate,
         "> 1.0", TARGET_EIGHT_WRITERS, True),
        ("verify / raw-verify", verify_ratio, ">= 0.8", TARGET_VERIFY, False),
        ("verify / raw-verify, per CPU second", verify_cpu_ratio, ">= 0.8",
         TARGET_VERIFY, False),
    ]  # fmt: skip
    print()
    print("Ratios")
    for name, value, shown, target, strictly in ratios:
        if value is None:
            print(f"  {name:<40} {'n/a':>6}  (target {shown:>6})  not measured")
        else:
            mark = verdict(value, target, strictly=strictly)
            print(f"  {name:<40} {value:6.3f}  (target {shown:>6})  {mark}")
    return isinstance(verified, str)


if __name__ == "__main__":
    raise SystemExit(main())
