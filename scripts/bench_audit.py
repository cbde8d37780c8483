"""Benchmark auditor queries, state in the past and exports on a large ledger.

Run it by hand, never from the tests::

    python -m scripts.bench_audit --database-url postgresql://postgres@127.0.0.1:5432/postgres

It creates a scratch database on that server, drops it at the end, and:

1. loads a ledger of ``--events`` entries (default one million). Every entry is
   a real domain event (key creations, rotations, a busy key disabled and
   enabled over and over, key uses by many service principals, refused
   requests), mapped by the application's mapper, sealed and signed one request
   at a time by the ledger's own ``Sequencer``, and stored with the wrapped
   material and the due checkpoints through the recorder's
   ``insert_replicated``, thousands of entries per transaction. The read side
   is then built by the real code: ``projections.rebuild`` (key views, usage
   counts) and ``audit_index.catch_up``. Only the loading is batched; the
   entries, tables and indexes are those the service would have.
2. times a filtered page of ``/v1/audit/events`` (``ledger.audit.search``, the
   function the route calls: by key, by principal, by type, by time range, by
   outcome, and a deep page) against a raw indexed SELECT of the same page on a
   plain psycopg connection;
3. times the state of a key at a time and at a position
   (``ledger.audit.key_state``, through the key's snapshots) for the busy key
   (``--busy-key-events`` lifecycle events) and an ordinary key, against
   reading the key's current state from its projection (``GET
   /v1/keys/{name}``) and against the library's replay of the key from its
   first event (what a past state cost before snapshots);
4. times a compliance export of a period (``ledger.export.build_export``, which
   verifies the whole ledger first) and the offline verification of the
   archive (``ledger.offline.verify_export``, what ``keyledger verify-export``
   runs), in events/s, next to a raw Ed25519 verify loop on one core, taken
   before and after.

Query latencies are medians (and 95th percentiles) of ``--repeats`` calls,
each interleaved with its baseline so both see the same load. The exit status
is 0 when everything was measured, 1 when something could not be (the server
unreachable, a query answering wrong, the export failing to verify), 130 after
Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from eventsourcing.domain import Aggregate

from domain.access_audit import RequestRefusal
from domain.clock import AdjustableClock
from domain.keys import ManagedKey, key_id_for
from domain.usage import KeyUse
from ledger import offline
from ledger.application import redact_url
from ledger.audit import AuditFilter, key_state, search
from ledger.export import ExportScope, build_export
from ledger.material import KeyEncryptionKey, fingerprint, generate_material
from ledger.service import KeyService
from ledger.signing import LedgerSigner
from ledger.store import Actor, LedgerWrite, SealedEntry, Statement, checkpoint_table
from projections import audit_index
from projections.rebuild import rebuild
from scripts.bench_ledger import (
    code_revision,
    conninfo_for,
    cpu_model,
    load_average,
    raw_verifier,
    scratch_database,
    server_settings,
    usable_cores,
)

BUSY_KEY = "busy-key"
START = datetime(2026, 1, 1, tzinfo=UTC)
SPAN = timedelta(days=365)
BATCH = 4000  # entries per transaction: 9 parameters each, under psycopg's 65,535
PAGE = 100
CUSTODIANS = [f"custodian-{n:02d}" for n in range(1, 6)]
SERVICES = [f"svc-{n:02d}" for n in range(1, 41)]
ROTATE_SHARE = 0.01
REFUSED_SHARE = 0.005
RAW_VERIFIES = 20_000


@dataclass
class Timing:
    """Latencies of one call, in seconds."""

    samples: list[float] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


# 1. Loading ----------------------------------------------------------------


@dataclass
class Loaded:
    """What the loader recorded, for the measurements to aim at."""

    events: int
    keys: list[str]
    busy_events: int
    positions_by_time: list[tuple[str, int]] = field(default_factory=list)


class Loader:
    """Seals and stores a generated workload in large transactions."""

    def __init__(self, service: KeyService, clock: AdjustableClock) -> None:
        self.service = service
        self.clock = clock
        self.sequencer = service.app.sequencer
        self.mapper = service.app.mapper
        self.ledger = service.ledger
        self.head = self.ledger.head()
        self.stored = self.head.position
        self.entries: list[SealedEntry] = []
        self.statements: list[Statement] = []
        self.checkpoints_table = checkpoint_table(self.ledger.events_table_name)

    def record(
        self,
        actor: str,
        aggregate: Aggregate,
        subject: str,
        statements: list[Statement] | None = None,
    ) -> None:
        """One request: the aggregate's new events, sealed as the service would."""
        write = LedgerWrite(
            actor=Actor(actor, f"tok_{actor}"),
            request_id=f"bulk-{self.head.position + 1}",
            subjects={str(aggregate.id): subject},
        )
        stored = [self.mapper.to_stored_event(e) for e in aggregate.collect_events()]
        sealed = self.sequencer.seal(self.head, stored, write)
        last = sealed[-1]
        self.head = type(self.head)(last.position, last.hash, last.recorded_at)
        self.entries += sealed
        self.statements += statements or []
        for checkpoint in self.sequencer.due_checkpoints(sealed):
            self.statements.append(
                (
                    f"INSERT INTO {self.checkpoints_table} "
                    "(position, hash, recorded_at, kid, signature) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    (
                        checkpoint.position,
                        checkpoint.hash,
                        checkpoint.recorded_at,
                        checkpoint.kid,
                        checkpoint.signature,
                    ),
                )
            )
        if len(self.entries) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.entries:
            return
        self.ledger.insert_replicated(
            self.entries, self.statements, expected_head=self.stored
        )
        self.stored = self.entries[-1].position
        self.entries, self.statements = [], []

    def material(self, key: ManagedKey, version: int) -> Statement:
        return self.service._put_material(
            str(key.id), version, generate_material(key.algorithm)
        )


def load(
    service: KeyService, clock: AdjustableClock, args: argparse.Namespace
) -> Loaded:
    """Record ``args.events`` entries; the busy key's events spread evenly."""
    events = args.events
    rng = random.Random(7)
    loader = Loader(service, clock)
    step = SPAN / events
    key_count = max(10, events // 1000)
    names = [f"key-{n:05d}" for n in range(key_count)]
    busy_events = min(args.busy_key_events, max(1, events // 10))
    keys: dict[str, ManagedKey] = {}
    loaded = Loaded(events=events, keys=names, busy_events=busy_events)
    started = time.perf_counter()

    def tick() -> datetime:
        return clock.advance(step)

    for name in [BUSY_KEY, *names]:
        material = generate_material("aes-256-gcm")
        key = ManagedKey.generate(
            name=name,
            algorithm="aes-256-gcm",
            description="benchmark key",
            fingerprint=fingerprint(material),
            now=tick(),
        )
        keys[name] = key
        loader.record(
            rng.choice(CUSTODIANS),
            key,
            f"key:{name}",
            [loader.service._put_material(str(key.id), 1, material)],
        )
    busy = keys[BUSY_KEY]
    busy_done = 1
    busy_every = max(1, (events - loader.head.position) // max(1, busy_events - 1))
    while loader.head.position < events:
        now = tick()
        position = loader.head.position + 1
        if busy_done < busy_events and position % busy_every == 0:
            # Rotate once in nine; disable and enable the key in between.
            turn = busy_done % 9
            if turn == 0:
                version = busy.rotate(fingerprint="sha256:" + "0" * 64, now=now)
                extra = [loader.material(busy, version)]
            else:
                (busy.disable if turn % 2 == 1 else busy.enable)(now=now)
                extra = []
            loader.record(rng.choice(CUSTODIANS), busy, f"key:{BUSY_KEY}", extra)
            busy_done += 1
            continue
        draw = rng.random()
        name = rng.choice(names)
        if draw < ROTATE_SHARE:
            key = keys[name]
            version = key.rotate(fingerprint="sha256:" + "1" * 64, now=now)
            loader.record(
                rng.choice(CUSTODIANS),
                key,
                f"key:{name}",
                [loader.material(key, version)],
            )
        elif draw < ROTATE_SHARE + REFUSED_SHARE:
            principal = rng.choice(SERVICES)
            refusal = RequestRefusal.record(
                fields={
                    "status": 403,
                    "code": "FORBIDDEN",
                    "method": "POST",
                    "route": "/v1/keys/{name}/encrypt",
                    "key": name,
                    "principal": principal,
                    "token_id": f"tok_{principal}",
                    "client": "10.0.0.7",
                    "user_agent": "bench",
                },
                window_seconds=60,
                now=now,
            )
            loader.record(principal, refusal, f"key:{name}")
        else:
            key = keys[name]
            use = KeyUse.record(
                key_name=name,
                key_id=str(key.id),
                operation="encrypt" if draw < 0.6 else "decrypt",
                outcomes={"ok": 1},
                versions_encrypted=[key.primary],
                now=now,
            )
            loader.record(rng.choice(SERVICES), use, f"key:{name}")
        if position % 100_000 == 0:
            print(
                f"  {position:,} entries sealed and stored "
                f"({position / (time.perf_counter() - started):,.0f}/s)",
                flush=True,
            )
    loader.flush()
    loaded.busy_events = busy_done
    return loaded


def build_read_side(service: KeyService) -> tuple[float, float]:
    """Rebuild the projections and index every entry; the seconds each took."""
    started = time.perf_counter()
    report = rebuild(service.app)
    rebuilt = time.perf_counter() - started
    if report.keys == 0:
        raise RuntimeError("the rebuild found no keys")
    started = time.perf_counter()
    audit_index.catch_up(service.ledger)
    indexed = time.perf_counter() - started
    return rebuilt, indexed


def analyze(conninfo: str, table: str) -> None:
    """Planner statistics, as autovacuum would have gathered by now on a live ledger."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for name in (table, "audit_index", "key_view", "key_versions"):
            conn.execute(f"VACUUM ANALYZE {name}".encode())


# 2. Filtered pages ---------------------------------------------------------


def time_at(loaded: Loaded, fraction: float) -> datetime:
    return START + SPAN * fraction


def raw_page(
    conn: psycopg.Connection[Any], table: str, query: AuditFilter, after: int
) -> list[tuple[Any, ...]]:
    """The same page by one indexed SELECT, no projection catch-up, no decoding."""
    clauses, params = query.where()
    sql = (
        "SELECT notification_id, state, entry_hash, signature, kid "
        f"FROM {table} WHERE notification_id IN (SELECT position FROM audit_index "
        f"WHERE {' AND '.join([*clauses, 'position > %s'])} "
        "ORDER BY position LIMIT %s) ORDER BY notification_id"
    )
    return conn.execute(sql.encode(), (*params, after, PAGE + 1)).fetchall()


def bench_pages(
    service: KeyService, conninfo: str, loaded: Loaded, repeats: int
) -> list[tuple[str, Timing, Timing, int]]:
    """Each filter's first page (and one deep page) against the raw SELECT."""
    table = service.ledger.events_table_name
    key = loaded.keys[len(loaded.keys) // 2]
    mid = service.head_position() // 2
    cases: list[tuple[str, AuditFilter, int]] = [
        ("by key", AuditFilter(key=key), 0),
        ("by key, deep page", AuditFilter(key=key), mid),
        ("by principal", AuditFilter(principal=SERVICES[3]), 0),
        ("by principal, deep page", AuditFilter(principal=SERVICES[3]), mid),
        ("by type (Rotated)", AuditFilter(types=("keyledger.key.Rotated",)), 0),
        (
            "by time range (one day)",
            AuditFilter(
                recorded_from=time_at(loaded, 0.5),
                recorded_to=time_at(loaded, 0.5) + timedelta(days=1),
            ),
            0,
        ),
        ("by outcome (refused)", AuditFilter(outcome="refused"), 0),
        (
            "by key and time range",
            AuditFilter(
                key=key,
                recorded_from=time_at(loaded, 0.25),
                recorded_to=time_at(loaded, 0.75),
            ),
            0,
        ),
        (
            "by principal and type",
            AuditFilter(principal=SERVICES[3], types=("keyledger.usage.KeyUsed",)),
            0,
        ),
    ]
    results = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for title, query, after in cases:
            entries, _ = search(service, query, after=after, limit=PAGE)
            raw = raw_page(conn, table, query, after)
            if [e["position"] for e in entries] != [r[0] for r in raw[:PAGE]]:
                raise RuntimeError(f"{title}: the service and raw pages differ")
            timed, baseline = Timing(), Timing()
            for _ in range(repeats):
                t0 = time.perf_counter()
                search(service, query, after=after, limit=PAGE)
                t1 = time.perf_counter()
                raw_page(conn, table, query, after)
                t2 = time.perf_counter()
                timed.samples.append(t1 - t0)
                baseline.samples.append(t2 - t1)
            results.append((title, timed, baseline, len(entries)))
    return results


# 3. State of a key in the past ---------------------------------------------


def bench_states(
    service: KeyService, loaded: Loaded, repeats: int
) -> list[tuple[str, float, Timing, Timing, Timing]]:
    """State at a time and at a position, against the current state's projection
    and against the library's replay of the key from its first event.

    The first call of each replays from the nearest snapshot stored so far and
    stores the ones it passes; its time is shown apart from the timed calls.
    """
    results = []
    head = service.head_position()
    for name, label in (
        (BUSY_KEY, f"busy key ({loaded.busy_events:,} events)"),
        (loaded.keys[0], "ordinary key"),
    ):
        points: list[tuple[str, dict[str, Any]]] = [
            ("at a time, mid-ledger", {"at": time_at(loaded, 0.5)}),
            ("at a time, near the end", {"at": time_at(loaded, 0.99)}),
            ("at a position, mid-ledger", {"position": head // 2}),
        ]
        for point, where in points:
            timed, baseline, replay = Timing(), Timing(), Timing()
            t0 = time.perf_counter()
            version = key_state(service, name, **where)["stream_version"]
            first = time.perf_counter() - t0
            for _ in range(repeats):
                t0 = time.perf_counter()
                key_state(service, name, **where)
                t1 = time.perf_counter()
                service.get_key(name)
                t2 = time.perf_counter()
                # What it cost before snapshots: the library replays from event 1.
                service.app.repository.get(key_id_for(name), version=version)
                t3 = time.perf_counter()
                timed.samples.append(t1 - t0)
                baseline.samples.append(t2 - t1)
                replay.samples.append(t3 - t2)
            results.append((f"{label}, {point}", first, timed, baseline, replay))
    return results


# 4. Export and offline verification ----------------------------------------


def raw_verify_rate(count: int) -> float:
    verify = raw_verifier()
    started = time.perf_counter()
    for _ in range(count):
        verify()
    return count / (time.perf_counter() - started)


@dataclass
class ExportFigures:
    exported: int
    ledger_events: int
    export_seconds: float
    archive_bytes: int
    verify_seconds: float
    raw_before: float
    raw_after: float


def bench_export(service: KeyService, loaded: Loaded, fraction: float) -> ExportFigures:
    """Export a period holding ``fraction`` of the ledger, then verify it offline."""
    scope = ExportScope(
        from_time=time_at(loaded, 0.5 - fraction / 2),
        to_time=time_at(loaded, 0.5 + fraction / 2),
    )
    raw_before = raw_verify_rate(RAW_VERIFIES)
    started = time.perf_counter()
    export = build_export(service, scope)
    export_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="keyledger-bench-") as folder:
        path = Path(folder) / export.filename
        path.write_bytes(export.data)
        started = time.perf_counter()
        files, duplicates = offline.read_archive(path)
        report = offline.verify_export(files, duplicates=duplicates)
        verify_seconds = time.perf_counter() - started
    raw_after = raw_verify_rate(RAW_VERIFIES)
    if not report.ok:
        raise RuntimeError(f"the export did not verify: {offline.describe(report)}")
    return ExportFigures(
        exported=int(export.manifest["counts"]["entries"]),
        ledger_events=service.head_position(),
        export_seconds=export_seconds,
        archive_bytes=len(export.data),
        verify_seconds=verify_seconds,
        raw_before=raw_before,
        raw_after=raw_after,
    )


# Running -------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.bench_audit",
        description="Measure auditor queries, a key's state in the past, and "
        "export plus offline verification on a large PostgreSQL ledger, against "
        "raw baselines measured in the same run.",
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
        "--events",
        type=int,
        default=1_000_000,
        help="How many entries the ledger holds when it is queried "
        "(default: 1,000,000; loading takes about 15 to 25 minutes at that size).",
    )
    parser.add_argument(
        "--busy-key-events",
        type=int,
        default=10_000,
        help="Lifecycle events of the busy key whose past state is asked for, "
        "at most a tenth of --events (default: 10,000).",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=30,
        help="Timed calls per query, each followed by its baseline (default: 30).",
    )
    parser.add_argument(
        "--export-fraction",
        type=float,
        default=0.1,
        help="Share of the ledger's time span the exported period covers "
        "(default: 0.1, about a tenth of the entries).",
    )
    args = parser.parse_args(argv)
    if args.events < 1000 or args.busy_key_events < 2 or args.repeats < 1:
        parser.error(
            "--events must be at least 1000, --busy-key-events at least 2 "
            "and --repeats at least 1."
        )
    if not 0 < args.export_fraction <= 1:
        parser.error("--export-fraction must be in (0, 1].")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
    print("keyledger audit benchmark")
    print(f"  CPU:        {cpu_model()}, {usable_cores()} usable core(s)")
    print(
        f"  Python:     {platform.python_implementation()} {platform.python_version()}"
    )
    print(f"  PostgreSQL: {settings['server_version']}")
    print(f"  Code:       {code_revision()}")
    print(f"  Load:       {load_average()} (1, 5, 15 min) before the run")
    print(f"  Ledger:     {args.events:,} entries, page size {PAGE}")
    print()
    try:
        with scratch_database(args.database_url) as dbname:
            print(f"Scratch database {dbname}.")
            run(args, conninfo_for(args.database_url, dbname))
    except (psycopg.Error, RuntimeError) as error:
        print(f"The benchmark could not run: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    print(
        f"Total time {time.perf_counter() - started:.0f} s; "
        f"load average {load_average()} after the run."
    )
    return 0


def run(args: argparse.Namespace, conninfo: str) -> None:
    clock = AdjustableClock(START)
    service = KeyService.open(
        database_url=conninfo,
        signer=LedgerSigner(Ed25519PrivateKey.generate()),
        kek=KeyEncryptionKey(os.urandom(32)),
        clock=clock,
    )
    try:
        t0 = time.perf_counter()
        loaded = load(service, clock, args)
        loaded_in = time.perf_counter() - t0
        print(
            f"1. Loaded {service.head_position():,} entries in {loaded_in:.0f} s "
            f"({service.head_position() / loaded_in:,.0f}/s), "
            f"{len(loaded.keys) + 1:,} keys, busy key {loaded.busy_events:,} events."
        )
        rebuilt, indexed = build_read_side(service)
        print(
            f"   Read side: projections rebuilt in {rebuilt:.0f} s, "
            f"audit index caught up in {indexed:.0f} s."
        )
        analyze(conninfo, service.ledger.events_table_name)
        print()
        print(f"2. Filtered page of {PAGE} (ledger.audit.search vs raw indexed SELECT)")
        for title, timed, raw, found in bench_pages(
            service, conninfo, loaded, args.repeats
        ):
            print(
                f"   {title:<28} {found:>3} entries  p50 {ms(timed.p50):>10} "
                f"p95 {ms(timed.p95):>10}  raw p50 {ms(raw.p50):>9}  "
                f"ratio {timed.p50 / raw.p50:5.1f}x"
            )
        print()
        print("3. State of a key (ledger.audit.key_state vs current-state projection)")
        for title, first, timed, current, replay in bench_states(
            service, loaded, args.repeats
        ):
            print(
                f"   {title:<52} first {ms(first):>10}  "
                f"p50 {ms(timed.p50):>10} p95 {ms(timed.p95):>10}  "
                f"projection p50 {ms(current.p50):>8} "
                f"(ratio {timed.p50 / current.p50:5.1f}x)  "
                f"replay from event 1 p50 {ms(replay.p50):>10}"
            )
        print()
        figures = bench_export(service, loaded, args.export_fraction)
        raw_rate = (figures.raw_before + figures.raw_after) / 2
        export_rate = figures.exported / figures.export_seconds
        verify_rate = figures.exported / figures.verify_seconds
        print("4. Export of a period and its offline verification")
        print(
            f"   export: {figures.exported:,} entries, "
            f"{figures.archive_bytes / 1e6:,.1f} MB, in {figures.export_seconds:.1f} s "
            f"= {export_rate:,.0f} exported entries/s (the whole ledger of "
            f"{figures.ledger_events:,} is verified first: "
            f"{figures.ledger_events / figures.export_seconds:,.0f} ledger entries/s)"
        )
        print(
            f"   offline verify-export: {figures.verify_seconds:.1f} s = "
            f"{verify_rate:,.0f} entries/s"
        )
        print(
            f"   raw Ed25519 verify, one core: {figures.raw_before:,.0f}/s before, "
            f"{figures.raw_after:,.0f}/s after"
        )
        print(
            f"   ratios: export {export_rate / raw_rate:.2f}, "
            f"offline verify {verify_rate / raw_rate:.2f} of raw verify"
        )
    finally:
        service.close()


if __name__ == "__main__":
    sys.exit(main())
