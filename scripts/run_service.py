"""``keyledger serve``: run the HTTP service (embedded SQLite unless told otherwise)."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn
from pydantic import ValidationError

from api.main import create_app
from api.runtime import build_runtime
from domain.errors import KeyledgerError
from ledger.settings import Settings
from scripts.logs import configure_logging

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", help="Address to listen on (KEYLEDGER_HOST, default 127.0.0.1)."
    )
    parser.add_argument(
        "--port", type=int, help="Port to listen on (KEYLEDGER_PORT, default 8000)."
    )
    parser.add_argument(
        "--data-dir",
        help="Folder for the SQLite ledger and local keys (KEYLEDGER_DATA_DIR).",
    )
    parser.add_argument(
        "--database-url",
        help="postgresql://... to use PostgreSQL instead of SQLite "
        "(KEYLEDGER_DATABASE_URL).",
    )
    parser.add_argument(
        "--dev-clock",
        action="store_true",
        default=None,
        help="Experimental: let the admin move the clock forward "
        "(KEYLEDGER_DEV_CLOCK).",
    )


def main(args: argparse.Namespace) -> int:
    overrides = {
        name: value
        for name, value in (
            ("host", args.host),
            ("port", args.port),
            ("data_dir", args.data_dir),
            ("database_url", args.database_url),
            ("dev_clock", args.dev_clock),
        )
        if value is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as error:
        print(f"keyledger: invalid settings: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        runtime = build_runtime(settings)
    except (KeyledgerError, ValueError, OSError) as error:
        print(f"keyledger: cannot start: {error}", file=sys.stderr)
        return 1
    base = f"http://{settings.host}:{settings.port}"
    if runtime.new_admin_token is not None:
        print(
            "First start: a bootstrap admin token was generated. It is shown only "
            f"this once:\n\n    {runtime.new_admin_token}\n",
            flush=True,
        )
    print(f"keyledger listening on {base}  (API docs: {base}/docs)", flush=True)
    runtime.start_scheduler()
    try:
        uvicorn.run(
            create_app(settings, runtime=runtime),
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            # The client address goes into the ledger: believe a forwarded one
            # only from the proxies the operator names.
            proxy_headers=settings.forwarded_allow_ips is not None,
            forwarded_allow_ips=settings.forwarded_allow_ips,
        )
    finally:
        runtime.close()
    return 0
