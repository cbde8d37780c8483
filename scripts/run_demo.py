"""``keyledger demo``: drive a realistic key workload at a running service over HTTP.

Each key lives a life: rotations, a disable and re-enable, a scheduled and a
cancelled destruction, a destruction that completes by the service's controlled
clock, a compromise and two kinds of rollback. Some keys are backed up to two
locations, verified, and restored from each. Then the whole ledger is verified,
and an auditor (a principal with the ``auditor`` role and its own token, both
created through the admin API) exports the demo's period and verifies the
export with ``keyledger verify-export``, in a process of its own, against the
checkpoint the demo just had signed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from domain.clock import format_time, parse_time


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
    parser.add_argument(
        "--backup-dir",
        default=None,
        help="A folder the service can write, for the demo's two backup "
        "locations (default: a new temporary folder; the service must run on "
        "this machine).",
    )


class Client:
    """A thin JSON client that raises ``DemoError`` on any unexpected status."""

    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def post(
        self, path: str, body: dict[str, Any] | None = None, expect: int = 200
    ) -> Any:
        response = self.http.post(path, json=body or {})
        if response.status_code != expect:
            raise DemoError(
                f"POST {path} -> {response.status_code}: {response.text[:300]}"
            )
        return response.json()

    def refused(self, path: str, body: dict[str, Any], code: str) -> None:
        """POST that must be refused with ``code``; the refusal is recorded too."""
        response = self.http.post(path, json=body)
        error = response.json().get("error", {}) if response.content else {}
        if response.status_code < 400 or error.get("code") != code:
            raise DemoError(f"POST {path} should be {code}: {response.text[:300]}")

    def get(self, path: str, expect: int = 200) -> Any:
        response = self.http.get(path)
        if response.status_code != expect:
            raise DemoError(
                f"GET {path} -> {response.status_code}: {response.text[:300]}"
            )
        return response.json()


@dataclass(frozen=True)
class Sealed:
    """Data a key's life encrypted: under version 1 (to be destroyed) and version 2."""

    key: str
    plaintext: str
    under_v1: str
    under_v2: str


def live_a_life(client: Client, name: str, rotations: int) -> Sealed:
    """Run one key through its whole life, using it along the way."""
    key = f"/v1/keys/{name}"
    client.post("/v1/keys", {"name": name, "description": "demo key"}, expect=201)
    plaintext = base64.b64encode(f"records of {name}".encode()).decode()
    under_v1 = client.post(f"{key}/encrypt", {"plaintext": plaintext})["ciphertext"]
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
    client.refused(
        f"{key}/decrypt", {"ciphertext": under_v1}, "VERSION_DESTROY_SCHEDULED"
    )
    client.post(f"{key}/versions/3/compromise", {"reason": "demo: leaked in a log"})
    view = client.post(f"{key}/rollback", {"version": 2})["key"]
    under_v2 = client.post(f"{key}/encrypt", {"plaintext": plaintext})["ciphertext"]
    client.post(f"{key}/rollback", {"to_stream_version": view["stream_version"] - 1})
    stream_version = client.get(key)["stream_version"]
    for _ in range(rotations):
        stream_version = client.post(
            f"{key}/rotate", {"expected_version": stream_version}
        )["key"]["stream_version"]
    # after the rollbacks and rotations, data sealed under version 2 still opens
    opened = client.post(f"{key}/decrypt", {"ciphertext": under_v2})
    if opened["plaintext"] != plaintext:
        raise DemoError(f"{name}: data under version 2 did not round-trip")
    return Sealed(name, plaintext, under_v1, under_v2)


def _check_data(client: Client, lives: list[Sealed], destroyed: bool) -> str:
    """Everything that should still decrypt does; nothing under version 1 does."""
    gone = "VERSION_DESTROYED" if destroyed else "VERSION_DESTROY_SCHEDULED"
    for life in lives:
        key = f"/v1/keys/{life.key}"
        if (
            client.post(f"{key}/decrypt", {"ciphertext": life.under_v2})["plaintext"]
            != life.plaintext
        ):
            raise DemoError(f"{life.key}: data under version 2 no longer decrypts")
        client.refused(f"{key}/decrypt", {"ciphertext": life.under_v1}, gone)
    return (
        f"data: {len(lives)} ciphertexts under version 2 still decrypt; "
        f"{len(lives)} under version 1 are refused ({gone})"
    )


def main(args: argparse.Namespace) -> int:
    if not args.token:
        print("keyledger demo: give --token or set KEYLEDGER_TOKEN", file=sys.stderr)
        return 2
    prefix = args.prefix or f"demo-{secrets.token_hex(3)}"
    clients = [Client(args.url, args.token) for _ in range(max(1, args.workers))]
    try:
        head = clients[0].get("/v1/ledger/head")["head"]
        first_head = head["position"]
    except httpx.HTTPError as error:
        print(
            f"keyledger demo: service not reachable at {args.url}: {error}",
            file=sys.stderr,
        )
        return 2
    except DemoError as error:
        print(
            f"keyledger demo: the service at {args.url} refused the demo: {error}",
            file=sys.stderr,
        )
        return 2
    # The period the auditor exports starts where the demo found the ledger.
    first_recorded_at = head.get("recorded_at") or "1970-01-01T00:00:00Z"
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
            lives = []
            for future in as_completed(futures):
                lives.append(future.result())
                progress.update()
        client = clients[0]
        backup_dir = _backup_folder(client, args.backup_dir)
        backups = _back_up_and_restore(client, lives[:3], backup_dir)
        destroyed = _complete_destructions(client)
        completed = " completed" in destroyed
        data = _check_data(client, lives, destroyed=completed)
        if completed:
            backups += "\n" + _after_destruction(client, lives[0])
        auditor_name, auditor = _enrol_auditor(client, args.url, prefix)
        checkpoint = client.post("/v1/ledger/checkpoints", expect=201)["checkpoint"]
        report = client.get("/v1/ledger/verify")
        period = (first_recorded_at, _just_after(checkpoint["recorded_at"]))
        evidence = _audit_offline(auditor, auditor_name, period, checkpoint)
    except (httpx.HTTPError, DemoError) as error:
        print(f"keyledger demo: {error}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    events = report["head"]["position"] - first_head
    print(
        f"\n{len(names)} keys, {events} events appended over HTTP in {elapsed:.1f} s "
        f"({events / elapsed:.0f} events/s)"
    )
    print(backups)
    print(destroyed)
    print(data)
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


def _enrol_auditor(client: Client, url: str, prefix: str) -> tuple[str, Client]:
    """Create an ``auditor`` principal and its token through the admin API."""
    name = f"auditor-{prefix}"
    client.post(
        "/v1/principals",
        {"name": name, "roles": ["auditor"], "description": "demo auditor"},
        expect=201,
    )
    issued = client.post(
        f"/v1/principals/{name}/tokens",
        {"expires_in_seconds": 3600, "label": "demo export"},
        expect=201,
    )
    return name, Client(url, issued["token"])


def _audit_offline(
    auditor: Client, name: str, period: tuple[str, str], checkpoint: dict[str, Any]
) -> str:
    """As the auditor: export the period, then verify it with no service.

    The export is verified by ``keyledger verify-export`` in a process of its
    own, given only the archive and the checkpoint the auditor kept.
    """
    auditor.refused(f"/v1/keys/{name}-never/rotate", {}, "FORBIDDEN")
    start, end = period
    response = auditor.http.get("/v1/exports", params={"from": start, "to": end})
    if response.status_code != 200:
        raise DemoError(
            f"GET /v1/exports -> {response.status_code}: {response.text[:300]}"
        )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "evidence.zip"
        path.write_bytes(response.content)
        kept = Path(folder) / "checkpoint.json"
        kept.write_text(json.dumps(checkpoint), encoding="utf-8")
        verified = subprocess.run(
            [
                sys.executable,
                "-m",
                "scripts.cli",
                "verify-export",
                str(path),
                "--checkpoint",
                str(kept),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    lines = verified.stdout.splitlines() or [verified.stderr.strip()]
    if verified.returncode != 0:
        return (
            f"auditor: {lines[0]} (keyledger verify-export exit {verified.returncode})"
        )
    return (
        f"auditor: {lines[0]} ({len(response.content):,} bytes, period {start} to "
        f"{end}, exported by {name} with its own token, checked offline by "
        f"keyledger verify-export: {lines[-1]})"
    )


def _just_after(recorded_at: str) -> str:
    """A time one microsecond after ``recorded_at``: the end of a period, exclusive."""
    return format_time(parse_time(recorded_at) + timedelta(microseconds=1))


def _backup_folder(client: Client, asked: str | None) -> Path:
    """The folder of the demo's two backup targets.

    The one asked for; else the one an earlier run configured, so its backups
    stay readable (moving a target leaves its copies behind); else a new one.
    """
    if asked:
        return Path(asked)
    targets = client.get("/v1/backup-targets")["targets"]
    for target in targets:
        if target.get("name") == "demo-site-a":
            return Path(target["options"]["path"]).parent
    return Path(tempfile.mkdtemp(prefix="kl-demo-"))


def _back_up_and_restore(client: Client, lives: list[Sealed], folder: Path) -> str:
    """Back keys up to two locations, verify, and restore from each location."""
    sites = {}
    for site in ("site-a", "site-b"):
        (folder / site).mkdir(parents=True, exist_ok=True)
        sites[site] = folder / site
        client.http.put(
            f"/v1/backup-targets/demo-{site}",
            json={
                "kind": "dir",
                "location": site,
                "options": {"path": str(folder / site)},
            },
        ).raise_for_status()
    taken = []
    for life in lives:
        backup = client.post(f"/v1/keys/{life.key}/backups", expect=201)
        verified = client.post(f"/v1/backups/{backup['backup_id']}/verify")["backup"]
        if not verified["verified_ok"]:
            raise DemoError(f"{life.key}: backup {backup['backup_id']} did not verify")
        taken.append((life, backup["backup"]))
    life, backup = taken[0]
    restored = []
    # From site A by backup id, and from site B by uploading the bundle file.
    copy_b = next(c for c in backup["copies"] if c["location"] == "site-b")
    bundle = (sites["site-b"] / copy_b["object"]).read_bytes()
    for into, body in (
        (f"{life.key}-from-a", {"backup_id": backup["backup_id"]}),
        (f"{life.key}-from-b", {"bundle": base64.b64encode(bundle).decode()}),
    ):
        client.post(f"/v1/keys/{life.key}/restore", {**body, "into": into})
        # The copy is a demo artefact: keep its version 1 from being destroyed.
        client.post(f"/v1/keys/{into}/versions/1/cancel-destruction")
        opened = client.post(f"/v1/keys/{into}/decrypt", {"ciphertext": life.under_v2})
        if opened["plaintext"] != life.plaintext:
            raise DemoError(f"{into}: restored key does not decrypt")
        restored.append(into)
    client.post(f"/v1/keys/{life.key}/rotate")
    client.refused(
        f"/v1/keys/{life.key}/restore",
        {"backup_id": backup["backup_id"]},
        "RESTORE_WOULD_ROLL_BACK",
    )
    return (
        f"backups: {len(taken)} keys backed up to site-a and site-b and verified; "
        f"{', '.join(restored)} restored (one from each site) and decrypt"
    )


def _after_destruction(client: Client, life: Sealed) -> str:
    """After destruction, backups still list what they hold, and never revive it."""
    status = client.get(f"/v1/keys/{life.key}/backups")
    held = status["destroyed_versions_held"]
    [backup] = status["backups"][-1:]
    client.refused(
        f"/v1/keys/{life.key}/restore",
        {"backup_id": backup["backup_id"], "into": f"{life.key}-revived"},
        "RESTORE_WOULD_UNDESTROY",
    )
    return (
        f"backups: {life.key} status {status['status']}; destroyed version 1 is "
        f"still held by {len(held[0]['backups']) if held else 0} immutable backup(s), "
        "and restoring it is refused (RESTORE_WOULD_UNDESTROY)"
    )


def _complete_destructions(client: Client) -> str:
    response = client.http.post("/v1/dev/clock", json={"seconds": 8 * 86400})
    if response.status_code != 200:
        return (
            "scheduled destructions left pending: start the service with "
            "KEYLEDGER_DEV_CLOCK=true to let the demo move its clock 8 days on"
        )
    destroyed = client.post("/v1/scheduler/run")["destroyed"]
    return (
        f"clock moved 8 days forward to {response.json()['now']}; "
        f"{len(destroyed)} scheduled destructions completed"
    )
