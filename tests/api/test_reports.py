"""GET /v1/reports/compliance: each section's facts, the PDF as rendered, refusals.

One workload holds every kind of fact the report shows: keys whose rotations
are overdue, due and fine; backups in two locations, one of them failing its
verification; a destroyed version approved under dual control; refused
requests; and actor names and reasons chosen to break a renderer.
"""

from __future__ import annotations

import html
import io
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium
import pytest
from fastapi.testclient import TestClient

from api.runtime import Runtime
from domain.clock import format_time
from ledger.service import CommandContext
from ledger.store import Actor
from tests._tamper import overwrite_entry_hash
from tests.api._access import add_principal, bearer, ledger_entries
from tests.api._support import assert_error, create, head_position, post_ok
from tests.api.test_backups import configure_targets, take
from tests.conftest import T0

DAY = 86400
FROM = format_time(T0 - timedelta(days=1))
TO = format_time(T0 + timedelta(days=80))
# Control, bidi and emoji characters, a spreadsheet formula and markup.
NASTY_ACTOR = "mallory\u202egnp.exe\x1b[31m\x07<script>alert(1)</script>"
NASTY_REASON = "=cmd|' /C calc'!A0 \u202eevil\u202c 😀 <img src=x onerror=alert(1)>"
NASTY_AGENT = '=HYPERLINK("http://x")<script>\u202e😀'.encode()


@pytest.fixture
def workload(client: TestClient, runtime: Runtime, tmp_path: Path) -> dict[str, Any]:
    """The ledger the report is made of; what a reader must find in it."""
    folders = configure_targets(client, tmp_path / "targets")
    create(client, "overdue-key", rotation_period_seconds=30 * DAY)
    create(client, "due-key", rotation_period_seconds=90 * DAY)
    create(client, "fine-key", rotation_period_seconds=90 * DAY)
    create(client, "dc-key")
    post_ok(client, "/v1/keys/dc-key/rotate")

    # Backups in two locations; the copy in site-dc2 of one of them goes missing.
    good = take(client, "overdue-key")
    post_ok(client, f"/v1/backups/{good['backup_id']}/verify")
    lost = take(client, "fine-key")
    (folders["dc2"] / lost["backup"]["copies"][1]["object"]).unlink()
    post_ok(client, f"/v1/backups/{lost['backup_id']}/verify")

    # Dual control: alice asks to destroy dc-key v1, bob approves.
    policy = client.post(
        "/v1/keys/dc-key/dual-control",
        json={"actions": ["schedule-destruction"], "ttl_seconds": 3600},
    )
    assert policy.status_code == 200, policy.text
    alice = bearer(add_principal(client, "alice", ["custodian"])["token"])
    bob = bearer(add_principal(client, "bob", ["custodian"])["token"])
    asked = client.post(
        "/v1/keys/dc-key/versions/1/schedule-destruction",
        json={"days": 7},
        headers=alice,
    )
    assert asked.status_code == 202, asked.text
    approval = asked.json()["approval"]["id"]
    approved = client.post(f"/v1/approvals/{approval}/approve", headers=bob)
    assert approved.status_code == 200, approved.text

    # A reason and an actor name no renderer should trust.
    nasty = CommandContext(Actor(NASTY_ACTOR, "tok_nasty"), "req-nasty")
    runtime.service.mark_compromised(nasty, "due-key", 1, reason=NASTY_REASON)
    runtime.service.mark_compromised(nasty, "dc-key", 2, reason="😀" * 1000)

    runtime.clock.advance(timedelta(days=75))  # type: ignore[attr-defined]
    runtime.service.destroy_due()
    post_ok(client, "/v1/keys/fine-key/rotate")

    # Refused requests, recorded as the service records them.
    runtime.record_access = True
    for _ in range(3):
        refused = client.get(
            "/v1/keys", headers={"Authorization": "Bearer nope", "User-Agent": "x"}
        )
        assert refused.status_code == 401
    nasty_agent = client.get(
        "/v1/keys", headers={"Authorization": "", "User-Agent": NASTY_AGENT}
    )
    assert nasty_agent.status_code == 401
    runtime.coalescer.flush(everything=True)
    auditor = bearer(add_principal(client, "audrey", ["auditor"])["token"])
    checkpoint = runtime.service.checkpoint_now()
    assert checkpoint is not None
    return {"auditor": auditor, "checkpoint": checkpoint}


def _report(client: TestClient, who: dict[str, str], **params: str) -> Any:
    response = client.get(
        "/v1/reports/compliance",
        params={"from": FROM, "to": TO, **params},
        headers=who,
    )
    assert response.status_code == 200, response.text
    return response


def _section(page: str, name: str) -> str:
    found = re.search(f'<section id="{name}">(.*?)</section>', page, re.S)
    assert found, f"no section {name}"
    return found.group(1)


def _rows(section: str) -> list[list[str]]:
    rows = []
    for row in re.findall(r"<tr>(.*?)</tr>", section, re.S):
        cells = re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)
        rows.append([html.unescape(re.sub(r"<[^>]+>", "", c)) for c in cells])
    return rows


def test_html_report_shows_each_section_with_its_facts(
    client: TestClient, workload: dict[str, Any], runtime: Runtime
) -> None:
    """Every section is there and holds the facts of the workload."""
    head = runtime.service.ledger.head()

    response = _report(client, workload["auditor"])

    assert response.headers["content-type"] == "text/html; charset=utf-8"
    page = response.text
    summary = _section(page, "summary")
    assert f"position {head.position}, hash <code>{head.hash}</code>" in summary
    checkpoint = workload["checkpoint"]
    assert f"position {checkpoint.position}, hash <code>{checkpoint.hash}" in summary
    assert re.search(r"Ledger verified</th><td><span class=\"good\">yes", summary)
    inventory = {row[0]: row for row in _rows(_section(page, "inventory"))}
    assert {"overdue-key", "due-key", "fine-key", "dc-key"} <= inventory.keys()
    assert inventory["due-key"][7:9] == ["90 days", "due soon"]
    assert inventory["overdue-key"][8] == "OVERDUE"
    assert inventory["fine-key"][8] == "ok"
    assert inventory["dc-key"][7:9] == ["none", "no period set"]
    rotations = [row[:2] for row in _rows(_section(page, "rotations"))[1:]]
    assert rotations == [["overdue-key", "OVERDUE"], ["due-key", "due soon"]]
    backups = {row[0]: row for row in _rows(_section(page, "backups"))}
    assert backups["overdue-key"][3] == "site-dc1: 1, site-dc2: 1"
    assert backups["fine-key"][3] == "site-dc1: 1"
    assert "<svg" in _section(page, "backups")
    verification = _rows(_section(page, "verification"))
    results = {row[2]: row[4:6] for row in verification[1:]}
    assert results["overdue-key"] == ["ok", "dc1 (site-dc1): OK, dc2 (site-dc2): OK"]
    assert results["fine-key"] == [
        "FAILED",
        "dc1 (site-dc1): OK, dc2 (site-dc2): MISSING",
    ]
    destructions = _section(page, "destructions")
    assert "dc-key v1" in destructions
    events = {row[2]: row for row in _rows(destructions)[1:]}
    assert events["DestructionScheduled"][5] == "bob"
    assert events["VersionDestroyed"][3:5] == ["dc-key", "1"]
    assert re.fullmatch(r"[0-9a-f]{64}", events["VersionDestroyed"][6])
    assert events["VersionDestroyed"][7].startswith("ed25519:")
    refusals = _section(page, "refusals")
    assert "4 refused requests in the period; 3 INVALID_TOKEN; 1 MISSING_TOKEN." in (
        refusals
    )
    counted = [(row[2], row[4], row[5]) for row in _rows(refusals)[1:]]
    assert ("2 (repeats)", "INVALID_TOKEN", "GET /v1/keys") in counted
    assert ("1", "MISSING_TOKEN", "GET /v1/keys") in counted
    decisions = {row[2]: row for row in _rows(_section(page, "dual-control"))[1:]}
    assert decisions["Requested"][4:6] == ["schedule-destruction", "alice"]
    assert decisions["Approved"][5:7] == ["alice", "bob"]


def test_report_is_recorded_as_an_export_by_its_auditor(
    client: TestClient, workload: dict[str, Any], runtime: Runtime
) -> None:
    """Handing out a report records who took which period, with its digest."""
    import hashlib

    after = head_position(client)

    response = _report(client, workload["auditor"], format="pdf")

    recorded = [
        entry
        for entry in ledger_entries(runtime, after)
        if entry["type"] == "keyledger.access.EvidenceExported"
    ]
    assert len(recorded) == 1
    assert recorded[0]["actor"]["principal"] == "audrey"
    assert recorded[0]["payload"]["scope"] == {
        "report": "compliance",
        "from": FROM,
        "to": TO,
        "format": "pdf",
    }
    assert (
        recorded[0]["payload"]["sha256"] == hashlib.sha256(response.content).hexdigest()
    )


def test_pdf_report_renders_its_pages_with_the_facts(
    client: TestClient, workload: dict[str, Any]
) -> None:
    """Page 1 rasterises to something not blank, and the text holds the facts."""
    response = _report(client, workload["auditor"], format="pdf")

    assert response.headers["content-type"] == "application/pdf"
    document = pdfium.PdfDocument(io.BytesIO(response.content))
    image = document[0].render(scale=1).to_pil().convert("L")
    dark = sum(image.histogram()[:128])
    assert dark > 0.005 * image.width * image.height
    text = "\n".join(
        document[index].get_textpage().get_text_range()
        for index in range(len(document))
    )
    for fact in ("Compliance report", "overdue-key", "OVERDUE", "due soon"):
        assert fact in text
    for fact in ("site-dc2", "MISSING", "VersionDestroyed", "Approved", "bob"):
        assert fact in text
    assert "Ledger verified" in text and "yes:" in text


def test_nasty_names_and_reasons_are_shown_escaped_not_obeyed(
    client: TestClient, workload: dict[str, Any]
) -> None:
    """Markup is escaped, control and bidi characters shown as escapes, in both."""
    page = _report(client, workload["auditor"]).text
    document = pdfium.PdfDocument(
        io.BytesIO(_report(client, workload["auditor"], format="pdf").content)
    )
    text = "".join(
        document[index].get_textpage().get_text_range()
        for index in range(len(document))
    )

    for shown in (page, text):
        assert "\u202e" not in shown and "\x1b" not in shown and "\x07" not in shown
    assert "<script>" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "mallory\\u202egnp.exe\\x1b[31m\\x07" in page
    assert "=cmd|&#39; /C calc&#39;!A0 \\u202eevil\\u202c 😀" in page
    assert "\\x80" in page  # the user agent's UTF-8, read as Latin-1 by the server
    # The PDF's font has no emoji: it is shown as its escape, not as a hole.
    flat = re.sub(r"\s+", "", text)
    assert "mallory\\u202egnp.exe\\x1b[31m\\x07<script>alert(1)</script>" in flat
    assert "\\U0001f600" in flat and "=cmd|'/Ccalc'!A0" in flat
    # A reason of 1000 emoji, 10000 characters escaped, is cut to fit a page.
    assert "…(9400morecharacters)" in flat


@pytest.mark.parametrize(
    ("params", "code"),
    [
        pytest.param({"from": TO, "to": FROM}, "INVALID_PERIOD", id="to before from"),
        pytest.param({"from": FROM, "to": FROM}, "INVALID_PERIOD", id="empty period"),
        pytest.param({"to": TO}, "INVALID_PERIOD", id="no from"),
        pytest.param(
            {"from": "9999-12-30T00:00:00Z", "to": "9999-12-31T23:59:59Z"},
            "INVALID_PERIOD",
            id="end of the calendar",
        ),
        pytest.param({"from": "yesterday", "to": TO}, "INVALID_TIME", id="unparsed"),
        pytest.param(
            {"from": "2026-03-01T00:00:00", "to": TO}, "INVALID_TIME", id="no offset"
        ),
        pytest.param(
            {"from": FROM, "to": TO, "format": "docx"},
            "INVALID_FIELD",
            id="unknown format",
        ),
    ],
)
def test_bad_period_or_format_is_refused_and_records_nothing(
    client: TestClient, params: dict[str, str], code: str
) -> None:
    """A malformed period or format is 422 with its code; the ledger does not move."""
    before = head_position(client)

    assert_error(client.get("/v1/reports/compliance", params=params), 422, code)

    assert head_position(client) == before


def test_report_needs_audit_read(client: TestClient, runtime: Runtime) -> None:
    """A custodian is refused with 403; an auditor may read the report."""
    custodian = bearer(add_principal(client, "carol", ["custodian"])["token"])
    auditor = bearer(add_principal(client, "audrey", ["auditor"])["token"])
    params = {"from": FROM, "to": TO}

    refused = client.get("/v1/reports/compliance", params=params, headers=custodian)
    allowed = client.get("/v1/reports/compliance", params=params, headers=auditor)

    assert refused.status_code == 403
    assert allowed.status_code == 200


def test_report_of_a_tampered_ledger_says_it_did_not_verify(
    client: TestClient, runtime: Runtime
) -> None:
    """A broken ledger still gets a report, and its header says where it broke."""
    create(client, "k")
    post_ok(client, "/v1/keys/k/rotate")
    overwrite_entry_hash(runtime.service.ledger, 2)

    page = client.get("/v1/reports/compliance", params={"from": FROM, "to": TO}).text

    summary = _section(page, "summary")
    assert "NO</span>: broken at position 2 (HASH_MISMATCH)" in summary
    assert "NOT verified</span> at position 2" in summary


def test_refusals_beyond_the_listed_bound_are_counted_not_listed(
    client: TestClient, workload: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the bound, refusal entries are left out of the table but counted."""
    monkeypatch.setattr("reports.compliance.MAX_LISTED_REFUSALS", 1)

    page = _report(client, workload["auditor"]).text

    refusals = _section(page, "refusals")
    assert "4 refused requests in the period" in refusals
    assert len(_rows(refusals)) == 2  # the header and one entry
    assert "2 more refusal entries are not listed" in refusals


def test_report_of_a_quiet_period_is_complete_and_renders(
    client: TestClient,
) -> None:
    """A period with no entries says so in every section; its PDF still renders."""
    create(client, "k")
    params = {"from": "2030-01-01T00:00:00Z", "to": "2030-02-01T00:00:00+01:00"}

    page = client.get("/v1/reports/compliance", params=params).text
    pdf = client.get("/v1/reports/compliance", params={**params, "format": "pdf"})

    summary = _section(page, "summary")
    assert "Entries in the period</th><td>none" in summary
    assert "Latest signed checkpoint</th><td>none yet" in summary
    assert "0 refused requests" in _section(page, "refusals")
    assert "No dual-control request" in _section(page, "dual-control")
    assert "<td>k</td>" in _section(page, "inventory")
    document = pdfium.PdfDocument(io.BytesIO(pdf.content))
    assert (
        "nothing to show" in document[len(document) - 1].get_textpage().get_text_range()
    )
