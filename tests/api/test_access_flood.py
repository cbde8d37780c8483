"""A caller without a token cannot grow the ledger by naming ever new keys."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.runtime import Runtime
from domain.clock import AdjustableClock
from tests.api._access import ledger_entries
from tests.api._support import assert_error

REFUSED = "keyledger.access.RequestRefused"
REPEATED = "keyledger.access.RefusalsRepeated"


def test_unauthenticated_requests_for_many_keys_cost_two_entries_per_window(
    recording_client: TestClient,
    recording_runtime: Runtime,
    clock: AdjustableClock,
) -> None:
    head = recording_runtime.service.head_position()

    for number in range(300):
        assert_error(recording_client.get(f"/v1/keys/x{number}"), 401, "MISSING_TOKEN")
    clock.advance(recording_runtime.coalescer.window)
    recording_runtime.coalescer.flush()

    entries = ledger_entries(recording_runtime, after=head)
    assert [e["type"] for e in entries] == [REFUSED, REPEATED]
    assert entries[1]["payload"]["repeats"] == 299
