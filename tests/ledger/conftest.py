"""Fixtures of the replica tests: a second store of the same kind, and a follower."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.material import KeyEncryptionKey
from ledger.replica import Follower, pin_keys, public_key_fingerprint
from ledger.service import KeyService
from ledger.signing import LedgerSigner, load_public_key


@contextmanager
def _another_store(store_url: str, tmp_path: Path, name: str) -> Iterator[str]:
    """One more store of the same kind as ``store_url``, removed afterwards."""
    if store_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / f'{name}.sqlite3'}"
        return
    database = store_url.partition("?")[0]
    schema = f"{name[0]}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    yield f"{database}?schema={schema}"
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def replica_url(store_url: str, tmp_path: Path) -> Iterator[str]:
    """A second store of the same kind: the replica's own "region"."""
    with _another_store(store_url, tmp_path, "replica") as url:
        yield url


@pytest.fixture
def third_url(store_url: str, tmp_path: Path) -> Iterator[str]:
    """A third store of the same kind: a replica of the replica."""
    with _another_store(store_url, tmp_path, "third") as url:
        yield url


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
