"""``keyledger demo``: drive a realistic key workload at a running service over HTTP.

Each key lives a life: rotations, a disable and re-enable, a scheduled and a
cancelled destruction, a destruction that completes by the service's controlled
clock, a compromise and two kinds of rollback. Then the whole ledger is verified,
and an auditor exports the period and verifies the export offline against the
checkpoint the demo just had signed.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from ledger import offline


class DemoError(Exception):
    """A request of the demo did not get the answer a healthy service gives."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default="http://127.0.0.1:8000", help="The service's base URL."
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("KEYLEDGER_TOKEN"),
        help="An admin bearer token (or KEYLEDGER_TOKEN).",
    )
    parser.add_argument("--keys", type=int, default=50, help="How many keys to create.")
    parser.add_argument(
        "--rotations",
        type=int,
        default=25,
        help="Extra rotations per key (more events).",
    )
    parser.add_argument(
        "--workers", type=int, default=4, help="Concurrent HTTP clients."
    )
    parser.add_argument(
        "--prefix", default=None, help="Key name prefix (default: demo-<random>)."
    )
    parser.add_argument("--quiet", action="store_true", help="No progress bar.")


class Client:
    """A thin JSON client that raises ``DemoError`` on any unexpected status."""

    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        self.events = 0

    def post(
        self, path: str, body: dict[str, Any] | None = None, expect: int = 200
    ) -> Any:
        response = self.http.post(path, json=body or {})
        if response.status_code != expect:
            raise DemoError(
                f"POST {path} -> {response.status_code}: {response.text[:300]}"
            )
        data = response.json()
        self.events += len(data.get("receipts", []))
        return data

    def get(self, path: str, expect: int = 200) -> Any:
        response = self.http.get(path)
        if response.status_code != expect:
            raise DemoError(
                f"GET {path} -> {response.status_code}: {response.text[:300]}"
            )
        return response.json()


def live_a_life(client: Client, name: str, rotations: int) -> int:
    """Run one key through its whole life; return how many events it appended."""
    before = client.events
    key = f"/v1/keys/{name}"
    client.post("/v1/keys", {"name": name, "description": "demo key"}, expect=201)
    for _ in range(3):
        client.post(f"{key}/rotate")  # v4 is primary
    client.post(f"{key}/disable")
    refused = client.http.post(f"{key}/rotate", json={})
    if refused.status_code != 409 or refused.json()["error"]["code"] != "KEY_DISABLED":
        raise DemoError(f"a disabled key was rotated: {refused.status_code}")
    client.post(f"{key}/enable")
    client.post(f"{key}/versions/2/disable")
    client.post(f"{key}/versions/2/enable")
    client.post(f"{key}/versions/3/schedule-destruction", {"days": 7})
    client.post(f"{key}/versions/3/cancel-destruction")
    client.post(f"{key}/versions/1/schedule-destruction", {"days": 7})
    client.post(f"{key}/versions/3/compromise", {"reason": "demo: leaked in a log"})
    view = client.post(f"{key}/rollback", {"version": 2})["key"]
    client.post(f"{key}/rollback", {"to_stream_version": view["stream_version"] - 1})
    stream_version = client.get(key)["stream_version"]
    for _ in range(rotations):
        stream_version = client.post(
            f"{key}/rotate", {"expected_version": stream_version}
        )["key"]["stream_version"]
    return client.events - before


def main(args: argparse.Namespace) -> int:
    if not args.token:
        print("keyledger demo: give --token or set KEYLEDGER_TOKEN", file=sys.stderr)
        return 2
    prefix = args.prefix or f"demo-{secrets.token_hex(3)}"
    clients = [Client(args.url, args.token) for _ in range(max(1, args.workers))]
    try:
        clients[0].get("/healthz")
    except (httpx.HTTPError, DemoError) as error:
        print(
            f"keyledger demo: service not reachable at {args.url}: {error}",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    names = [f"{prefix}-{index:03d}" for index in range(args.keys)]
    try:
        with (
            ThreadPoolExecutor(len(clients)) as pool,
            tqdm(
                total=len(names), unit="key", disable=args.quiet, desc="keys"
            ) as progress,
        ):
            futures = [
                pool.submit(
                    live_a_life, clients[i % len(clients)], name, args.rotations
                )
                for i, name in enumerate(names)
            ]
            for future in as_completed(futures):
                future.result()
                progress.update()
        client = clients[0]
        destroyed = _complete_destructions(client)
        checkpoint = client.post("/v1/ledger/checkpoints", expect=201)["checkpoint"]
        report = client.get("/v1/ledger/verify")
        evidence = _audit_offline(client, checkpoint)
    except (httpx.HTTPError, DemoError) as error:
        print(f"keyledger demo: {error}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    events = sum(c.events for c in clients)
    print(
        f"\n{len(names)} keys, {events} events appended over HTTP in {elapsed:.1f} s "
        f"({events / elapsed:.0f} events/s)"
    )
    print(destroyed)
    print(
        f"checkpoint signed at position {checkpoint['position']}: {checkpoint['hash']}"
    )
    print(evidence)
    if report["ok"] and evidence.startswith("auditor: export intact"):
        print(
            f"verification: OK, {report['checked']} entries, "
            f"head {report['head']['hash']}"
        )
        return 0
    failure = report["first_failure"]
    print(f"verification: FAILED at {failure['position']}: {failure['reason']}")
    return 1


def _audit_offline(client: Client, checkpoint: dict[str, Any]) -> str:
    """As an auditor: export the whole period, then verify it with no service."""
    response = client.http.get("/v1/exports")
    if response.status_code != 200:
        raise DemoError(
            f"GET /v1/exports -> {response.status_code}: {response.text[:300]}"
        )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "evidence.zip"
        path.write_bytes(response.content)
        files, duplicates = offline.read_archive(path)
        kept = offline.load_checkpoint(json.dumps(checkpoint).encode())
        result = offline.verify_export(
            files, duplicates=duplicates, outside_checkpoint=kept
        )
    summary = offline.describe(result).splitlines()[0]
    return f"auditor: {summary} ({len(response.content):,} bytes, checked offline)"


def _complete_destructions(client: Client) -> str:
    response = client.http.post("/v1/dev/clock", json={"seconds": 8 * 86400})
    if response.status_code != 200:
        return (
            "scheduled destructions left pending: start the service with "
            "KEYLEDGER_DEV_CLOCK=true to let the demo move its clock 8 days on"
        )
    client.events += len(response.json().get("receipts", []))
    destroyed = client.post("/v1/scheduler/run")["destroyed"]
    client.events += len(destroyed)
    return (
        f"clock moved 8 days forward to {response.json()['now']}; "
        f"{len(destroyed)} scheduled destructions completed"
    )
