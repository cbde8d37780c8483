"""``keyledger verify``: check the whole ledger; exit 0 only when it is intact.

``--fingerprints`` instead prints the ``sha256:`` fingerprint of a signing key,
the form ``keyledger replica --pin-fingerprint`` takes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from domain.errors import KeyledgerError
from ledger.replica import public_key_fingerprint
from ledger.service import load_local_secrets
from ledger.settings import Settings
from ledger.signing import key_id, load_public_key
from ledger.verify import verify_ledger
from scripts.common import add_ledger_arguments, open_ledger_for


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_ledger_arguments(parser)
    parser.add_argument(
        "--public-key",
        action="append",
        default=[],
        help="A PEM file of another trusted signing key (repeatable).",
    )
    parser.add_argument("--json", action="store_true", help="Print the report as JSON.")
    parser.add_argument(
        "--fingerprints",
        action="store_true",
        help="Verify nothing: print the sha256: fingerprint (and key id) of each "
        "--public-key file or, without one, of the data folder's own signing key, "
        "as keyledger replica --pin-fingerprint takes it. Run it on the primary's "
        "host, and carry the line to the replica's operator yourself.",
    )


def main(args: argparse.Namespace) -> int:
    if args.fingerprints:
        return _print_fingerprints(args)
    service = open_ledger_for(args, "verify")
    if service is None:
        return 2
    try:
        keys = service.public_keys()
        for path in args.public_key:
            public_key = load_public_key(Path(path).read_bytes())
            keys[key_id(public_key)] = public_key
        report = verify_ledger(service.ledger, keys)
    finally:
        service.close()
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    elif report.ok:
        print(
            f"ledger intact: {report.checked} entries, head {report.head_position} "
            f"{report.head_hash}, {report.checkpoints_checked} checkpoints verified"
        )
    else:
        failure = report.first_failure
        assert failure is not None
        print(
            f"ledger BROKEN at position {failure.position}: {failure.reason} "
            f"({failure.detail}); {report.checked} entries verified before it"
        )
    return 0 if report.ok else 1


def _print_fingerprints(args: argparse.Namespace) -> int:
    """One line per key: fingerprint, key id, where it was read from."""
    keys: list[tuple[str, Ed25519PublicKey]] = []
    try:
        for path in args.public_key:
            keys.append((path, load_public_key(Path(path).read_bytes())))
        if not args.public_key:
            overrides = {} if args.data_dir is None else {"data_dir": args.data_dir}
            data_dir = Settings(**overrides).data_dir
            signer, _, _ = load_local_secrets(data_dir, create=False)
            keys.append((f"{data_dir} (its signing key)", signer.public_key))
    except (OSError, ValueError, KeyledgerError) as error:
        print(f"keyledger verify: cannot read the key: {error}", file=sys.stderr)
        return 2
    for source, public_key in keys:
        print(f"{public_key_fingerprint(public_key)}  {key_id(public_key)}  {source}")
    return 0
