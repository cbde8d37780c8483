"""``keyledger replica``: follow a primary into its own store, and serve reads.

The replica refuses to start unless the primary's signing key is pinned (a PEM
file or its full ``sha256:`` fingerprint) and matches, and unless its data
folder holds the primary's KEK (``kek.bin``, copied by the operator: material
arrives still wrapped and is checked against the ledger's fingerprints).

Exit status: 0 stopped (or caught up, with ``--once``), 1 the primary could not
be reached at start, 2 bad settings, an unpinned or mismatched key, or a store
that was promoted (serve it with ``keyledger serve``), 3 halted on a mismatch
(the status endpoint and the log say where and why).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError

from api.main import create_app
from api.routes.replication import install_replica
from api.runtime import build_runtime
from domain.errors import KeyledgerError
from ledger.replica import (
    PROMOTED,
    Follower,
    HttpSource,
    PinningError,
    ReplicaHalted,
    SourceRefused,
    SourceUnavailable,
    pin_keys,
)
from ledger.service import KEK_FILE
from ledger.settings import Settings
from ledger.signing import LedgerSigner, public_key_pem, save_trusted_key
from scripts.logs import configure_logging

logger = logging.getLogger(__name__)

HALTED_EXIT = 3


def _env_list(name: str) -> list[str]:
    return [item for item in os.environ.get(name, "").split(",") if item.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--source",
        default=env("KEYLEDGER_REPLICA_SOURCE"),
        help="The primary's base URL (KEYLEDGER_REPLICA_SOURCE).",
    )
    parser.add_argument(
        "--token",
        default=env("KEYLEDGER_REPLICA_TOKEN"),
        help="A token of the primary with the replication permission "
        "(KEYLEDGER_REPLICA_TOKEN; prefer the environment to the command line).",
    )
    parser.add_argument(
        "--store",
        help="The replica's own database: sqlite:///file or postgresql://... "
        "(KEYLEDGER_DATABASE_URL; default SQLite in the data folder).",
    )
    parser.add_argument(
        "--data-dir",
        help="The replica's data folder; must hold the primary's kek.bin "
        "(KEYLEDGER_DATA_DIR).",
    )
    parser.add_argument(
        "--pin-key",
        action="append",
        default=_env_list("KEYLEDGER_REPLICA_PIN_KEY"),
        help="A PEM file of the primary's public signing key (repeatable; "
        "KEYLEDGER_REPLICA_PIN_KEY, comma-separated).",
    )
    parser.add_argument(
        "--pin-fingerprint",
        action="append",
        default=_env_list("KEYLEDGER_REPLICA_PIN_FINGERPRINT"),
        help="sha256:<64 hex> of the primary's public signing key (repeatable; "
        "KEYLEDGER_REPLICA_PIN_FINGERPRINT).",
    )
    parser.add_argument(
        "--host", help="Address to serve reads on (KEYLEDGER_HOST, default 127.0.0.1)."
    )
    parser.add_argument(
        "--port", type=int, help="Port to serve reads on (KEYLEDGER_PORT)."
    )
    parser.add_argument(
        "--poll-wait",
        type=float,
        default=float(env("KEYLEDGER_REPLICA_POLL_WAIT", "10")),
        help="Seconds a long-poll of the feed waits for new entries (max 30).",
    )
    parser.add_argument(
        "--http-timeout",
        type=float,
        default=float(env("KEYLEDGER_REPLICA_HTTP_TIMEOUT", "10")),
        help="Seconds a request to the primary may go unanswered, on top of the "
        "poll wait for the feed, before it counts as failed and is retried "
        "(KEYLEDGER_REPLICA_HTTP_TIMEOUT, default 10).",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=int(env("KEYLEDGER_REPLICA_BATCH", "500")),
        help="Entries fetched, verified and applied per transaction.",
    )
    parser.add_argument(
        "--min-position-wait",
        type=float,
        default=float(env("KEYLEDGER_REPLICA_MIN_POSITION_WAIT", "5")),
        help="Seconds a read with Min-Position waits before answering 412.",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="Catch up to the primary's head, then exit (no HTTP).",
    )
    parser.add_argument(
        "--no-serve",
        action="store_true",
        help="Follow in the foreground without serving HTTP; exit 3 on a halt.",
    )
    parser.add_argument(
        "--exit-on-halt",
        action="store_true",
        help="While serving, exit with status 3 on a halt (default: keep serving "
        "reads and report the halt on /v1/replication/status).",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="Try again after a recorded halt (positions held are never replaced).",
    )


def main(args: argparse.Namespace) -> int:
    overrides = {
        name: value
        for name, value in (
            ("host", args.host),
            ("port", args.port),
            ("data_dir", args.data_dir),
            ("database_url", args.store),
        )
        if value is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as error:
        print(f"keyledger replica: invalid settings: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if not args.source or not args.token:
        print("keyledger replica: give --source and --token", file=sys.stderr)
        return 2
    if not (settings.data_dir / KEK_FILE).is_file():
        print(
            f"keyledger replica: {settings.data_dir / KEK_FILE} is missing: copy the "
            "primary's kek.bin there (mode 0600) before the first start",
            file=sys.stderr,
        )
        return 2
    if not 0 < args.http_timeout <= 300:
        print(
            "keyledger replica: --http-timeout is seconds, more than 0 and at most 300",
            file=sys.stderr,
        )
        return 2
    source = HttpSource(args.source, args.token, timeout=args.http_timeout)
    try:
        keys = pin_keys(
            source.signing_key_pem(),
            key_files=[Path(path).read_bytes() for path in args.pin_key],
            fingerprints=args.pin_fingerprint,
        )
    except (PinningError, SourceRefused, OSError) as error:
        print(f"keyledger replica: refusing to start: {error}", file=sys.stderr)
        return 2
    except SourceUnavailable as error:
        print(f"keyledger replica: cannot reach the primary: {error}", file=sys.stderr)
        return 1
    try:
        # A replica appends nothing: not its start, not its bootstrap token's use.
        runtime = build_runtime(settings, appends=False)
    except (KeyledgerError, ValueError, OSError) as error:
        print(f"keyledger replica: cannot start: {error}", file=sys.stderr)
        return 1
    runtime.service.trusted_keys.update(keys)
    for public_key in keys.values():
        save_trusted_key(settings.data_dir, public_key)
    _announce(source, runtime.service.signer)
    follower = Follower(
        runtime.service, source, keys, batch=args.batch, kek=runtime.service.kek
    )
    try:
        try:
            follower.prepare(resume=args.resume)
        except ReplicaHalted as halted:
            print(
                f"keyledger replica: halted earlier at position "
                f"{halted.halt.position}: {halted.halt.reason} ({halted.halt.detail}); "
                "start with --resume to try again",
                file=sys.stderr,
            )
            return HALTED_EXIT
        if follower.status.state == PROMOTED:
            print(
                "keyledger replica: this store was promoted: it is a primary and "
                "follows no more; run it with keyledger serve",
                file=sys.stderr,
            )
            return 2
        if args.once or args.no_serve:
            return _follow_in_foreground(follower, args)
        return _serve(follower, runtime, settings, args)
    finally:
        runtime.close()
        source.close()


def _announce(source: HttpSource, signer: LedgerSigner) -> None:
    """Have this replica's key announced on the primary, so a promotion verifies."""
    try:
        answer = source.announce(public_key_pem(signer.public_key))
    except (SourceRefused, SourceUnavailable) as error:
        logger.warning("replica_key_not_announced", extra={"error": str(error)})
        print(
            f"keyledger replica: warning: {error}; this replica cannot be promoted "
            "until its key is announced",
            file=sys.stderr,
        )
        return
    logger.info("replica_key_announced", extra=answer)


def _follow_in_foreground(follower: Follower, args: argparse.Namespace) -> int:
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    halt = follower.run(stopping, wait=args.poll_wait, until_caught_up=args.once)
    status = follower.status
    if halt is not None:
        print(
            f"replica HALTED at position {halt.position}: {halt.reason} "
            f"({halt.detail}); holds {status.position} {status.hash}",
            flush=True,
        )
        return HALTED_EXIT
    print(f"replica at position {status.position} {status.hash}", flush=True)
    return 0


def _serve(
    follower: Follower, runtime: Any, settings: Settings, args: argparse.Namespace
) -> int:
    base = f"http://{settings.host}:{settings.port}"
    if runtime.new_admin_token is not None:
        print(
            "First start: a bootstrap admin token was generated. It is shown only "
            f"this once:\n\n    {runtime.new_admin_token}\n",
            flush=True,
        )
    app = create_app(settings, runtime=runtime)
    install_replica(app, follower, min_position_wait=args.min_position_wait)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            proxy_headers=settings.forwarded_allow_ips is not None,
            forwarded_allow_ips=settings.forwarded_allow_ips,
        )
    )
    stopping = threading.Event()
    outcome = {"exit": 0}

    def follow() -> None:
        halt = follower.run(stopping, wait=args.poll_wait)
        if halt is not None and args.exit_on_halt:
            outcome["exit"] = HALTED_EXIT
            server.should_exit = True

    thread = threading.Thread(target=follow, name="replica", daemon=True)
    print(
        f"keyledger replica of {follower.source.name} listening on {base}", flush=True
    )
    thread.start()
    try:
        server.run()
    finally:
        stopping.set()
        thread.join(timeout=40)
    return outcome["exit"]
