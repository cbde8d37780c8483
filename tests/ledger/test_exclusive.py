"""An exclusive transaction may compute between statements on a large ledger."""

from __future__ import annotations

import pytest

from ledger.service import KeyService


def test_an_exclusive_transaction_outlives_the_idle_limit_of_others(
    service: KeyService, store_url: str
) -> None:
    """A rebuild of a million entries idles for seconds between two statements;
    the library's 5 s idle-in-transaction limit would end it, so it gets longer."""
    if store_url.startswith("sqlite"):
        pytest.skip("SQLite has no idle-in-transaction limit")
    setting = "SHOW idle_in_transaction_session_timeout"

    with service.ledger.exclusive() as transaction:
        [inside] = transaction.query(setting)
    [outside] = service.ledger.query(setting)

    assert inside["idle_in_transaction_session_timeout"] == "10min"
    assert outside["idle_in_transaction_session_timeout"] == "5s"
