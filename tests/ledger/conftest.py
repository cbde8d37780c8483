"""Fixtures of the replica tests: a second store of the same kind, and a follower."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.material import KeyEncryptionKey
from ledger.replica import Follower, pin_keys, public_key_fingerprint
from ledger.service import KeyService
from ledger.signing import LedgerSigner, load_public_key


@pytest.fixture
def replica_url(store_url: str, tmp_path: Path) -> Iterator[str]:
    """A second store of the same kind: the replica's own "region"."""
    if store_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'replica.sqlite3'}"
        return
    database = store_url.partition("?")[0]
    schema = f"r_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    yield f"{database}?schema={schema}"
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def open_replica(
    open_service: Callable[..., KeyService],
    replica_url: str,
    kek: KeyEncryptionKey,
) -> Callable[..., Follower]:
    """A follower on the replica's store, pinned to the primary's key."""

    def open_(source: Any, *, resume: bool = False, **options: Any) -> Follower:
        own = LedgerSigner(Ed25519PrivateKey.generate())
        replica = open_service(database_url=replica_url, signer=own)
        keys = pin_keys(source.signing_key_pem(), fingerprints=[_pin(source)])
        follower = Follower(replica, source, keys, kek=kek, **options)
        follower.prepare(resume=resume)
        return follower

    return open_


def _pin(source: Any) -> str:
    return public_key_fingerprint(load_public_key(source.signing_key_pem()))
