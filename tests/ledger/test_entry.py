"""The entry format: canonical bytes, no floating-point numbers, known answers."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from eventsourcing.persistence import StoredEvent

from domain.clock import AdjustableClock
from ledger.entry import (
    ENTRY_SIGNING_CONTEXT,
    GENESIS_HASH,
    canonical_json,
    entry_hash,
    parse_entry,
)
from ledger.signing import LedgerSigner, verify_signature
from ledger.store import Actor, Head, LedgerWrite, Sequencer
from tests.conftest import T0


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(1.5, id="float"),
        pytest.param({"nested": [1, 2.0]}, id="nested float"),
        pytest.param({"a": {"b": float("nan")}}, id="nan"),
    ],
)
def test_floats_are_refused_in_signed_payloads(value: object) -> None:
    """A floating-point number anywhere in a payload is refused before signing."""
    with pytest.raises(TypeError):
        canonical_json(value)


def test_canonical_json_sorts_keys_and_drops_whitespace() -> None:
    """RFC 8785: keys sorted, no insignificant whitespace, UTF-8 as is."""
    assert canonical_json({"b": 1, "a": "é", "c": [True, None]}) == (
        '{"a":"é","b":1,"c":[true,null]}'.encode()
    )


def test_sealed_entry_hashes_its_bytes_and_signs_the_hash() -> None:
    """A sealed entry's hash is SHA-256 of its bytes, signed under the entry context."""
    signer = LedgerSigner(Ed25519PrivateKey.generate())
    sequencer = Sequencer(signer, AdjustableClock(T0), checkpoint_interval=100)
    stored = StoredEvent(
        originator_id="5f97f28c-fa43-5afd-914f-6c5a458e31fb",  # type: ignore[arg-type]
        originator_version=1,
        topic="keyledger.key.Rotated",
        state=canonical_json(
            {"version": 2, "timestamp": "2026-03-01T12:00:00.000000Z"}
        ),
    )
    write = LedgerWrite(actor=Actor("alice", "tok_1"), request_id="req-1")

    [entry] = sequencer.seal(Head(0, GENESIS_HASH, ""), [stored], write)

    parsed = parse_entry(entry.entry_bytes)
    assert canonical_json(parsed) == entry.entry_bytes
    assert entry.hash == hashlib.sha256(entry.entry_bytes).hexdigest()
    assert entry.hash == entry_hash(entry.entry_bytes)
    assert parsed["position"] == 1 and parsed["prev_hash"] == GENESIS_HASH
    assert parsed["actor"] == {"principal": "alice", "token_id": "tok_1"}
    assert parsed["recorded_at"] == "2026-03-01T12:00:00.000000Z"
    message = ENTRY_SIGNING_CONTEXT + bytes.fromhex(entry.hash)
    assert verify_signature(signer.public_key, entry.signature, message)
    assert entry.kid == signer.kid
