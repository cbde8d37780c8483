"""Following a primary: verify every entry, store it byte for byte, apply it.

A replica reads the primary's feed (``GET /v1/events``, long-polled), and for
each entry checks, before it keeps anything, that:

- its position is exactly the next one, and its ``prev_hash`` is the hash of
  the entry the replica holds before it;
- SHA-256 of its bytes is the hash the primary gave, and that hash is signed by
  one of the public keys the operator pinned;
- its recorded time does not go backwards.

Verified entries are stored exactly as the primary sealed them (same bytes, same
hash, same signature), so the replica's ledger verifies with the same tool and
has the same head hash. The projections, the key material and the replica's own
state (what it last saw of the primary) are written in the same transaction as
the entries: a crash at any point leaves either all of a batch or none of it.

On any mismatch the replica halts: it keeps what it has, records the position
and the reason, and never accepts the primary's new version of a position it
already holds. Reasons are the verifier's codes (``GAP``, ``BROKEN_LINK``,
``HASH_MISMATCH``, ``BAD_SIGNATURE``, ``UNKNOWN_SIGNING_KEY``,
``POSITION_MISMATCH``, ``MALFORMED_ENTRY``, ``TIME_REGRESSION``) and these:

``PRIMARY_HEAD_REGRESSED`` the primary's head is behind a head it showed before
                           (or behind the replica): restored from an old backup?
``FORK``                   the primary holds a different entry at a position the
                           replica already holds
``MALFORMED_FEED``         the feed is not what the primary sends
``UNREADABLE_EVENT``       a verified entry cannot be applied to the key it names
``MATERIAL_MISMATCH``      replicated key material does not match its fingerprint
``MATERIAL_MISSING``       the primary sent no material for a version, and no
                           entry signed by it erases that version
``REPLICA_CONFLICT``       something else appended to the replica's own ledger
``CHECKPOINT_INVALID``     a checkpoint of the primary is not signed by a trusted key
``CHECKPOINT_MISMATCH``    a checkpoint of the primary names another hash than the
                           entry the replica holds at its position

The primary's signed checkpoints follow too: the feed carries those over the
positions it delivers (and any made later over positions already held), and
the replica stores each once it holds the entry it covers, after checking its
signature and that it names that entry's hash.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import OriginatorVersionError
from eventsourcing.persistence import IntegrityError, PersistenceError, StoredEvent
from eventsourcing.utils import TopicError

from domain.backups import KeyBackups
from domain.clock import format_time
from domain.epochs import (
    PROMOTED_TOPIC,
    SIGNER_ANNOUNCED_TOPIC,
    Epoch,
    SignerAnnouncement,
    announcement_id,
)
from domain.keys import ManagedKey
from domain.principals import Principal
from domain.usage import KeyUse
from ledger.entry import canonical_json
from ledger.material import KeyEncryptionKey, UnwrapError, fingerprint
from ledger.offline import (
    KeyBook,
    StoredEntry,
    _Signed,
    check_checkpoint_signature,
    entry_hash,
    verify_entries,
)
from ledger.service import KeyService
from ledger.signing import key_id, load_public_key
from ledger.signing import public_key_pem as pem_of
from ledger.store import (
    Actor,
    Checkpoint,
    Head,
    LedgerRecorder,
    LedgerWrite,
    SealedEntry,
    Statement,
    checkpoint_table,
)
from projections import access_view, backup_status, key_view, usage_counts

logger = logging.getLogger(__name__)

STATE_DDL = [
    "CREATE TABLE IF NOT EXISTS replica_state ("
    "id INTEGER PRIMARY KEY CHECK (id = 1), source TEXT NOT NULL, "
    "position BIGINT NOT NULL, primary_head BIGINT NOT NULL, "
    "state TEXT NOT NULL, reason TEXT, detail TEXT, halted_position BIGINT, "
    "updated_at TEXT NOT NULL)",
    # One row, written with the promotion's entry: a second promotion of this
    # store, racing the first past its checks, fails on the key (one epoch).
    "CREATE TABLE IF NOT EXISTS replica_promotion ("
    "id INTEGER PRIMARY KEY CHECK (id = 1), epoch BIGINT NOT NULL, "
    "promoted_at TEXT NOT NULL)",
]

FOLLOWING = "following"
HALTED = "halted"
PROMOTED = "promoted"


def _topics(aggregate: type) -> frozenset[str]:
    return frozenset(
        topic
        for item in vars(aggregate).values()
        if isinstance(item, type)
        and isinstance(topic := getattr(item, "TOPIC", 0), str)
    )


# Streams with a read side: keys, principals with their tokens, key backups.
_PROJECTED_TOPICS = _topics(ManagedKey) | _topics(Principal) | _topics(KeyBackups)
# Usage records feed only the usage counts, written as on the primary.
_USAGE_TOPIC = KeyUse.KeyUsed.TOPIC
MATERIAL_PAGE = 200
FEED_CHECKPOINTS = 100  # at most, per feed page
IDLE_PAUSE = 1.0  # seconds, after a long-poll the primary answered without waiting
_AGGREGATE_CACHE = 1000


# Errors ------------------------------------------------------------------------


class PinningError(Exception):
    """The primary's signing key is not one the operator pinned."""


class SourceUnavailable(Exception):  # noqa: N818 - a condition, retried
    """The primary could not be reached or answered with a server error.

    ``waited`` is the timeout of a request that ran out of it (seconds), else 0.
    """

    def __init__(self, message: str, *, waited: float = 0.0) -> None:
        super().__init__(message)
        self.waited = waited


class SourceRefused(Exception):  # noqa: N818 - a condition, not retried
    """The primary refused the replica's token (401/403)."""


@dataclass(frozen=True)
class Halt:
    """Why the replica stopped applying, and at which position."""

    position: int
    reason: str
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {"position": self.position, "reason": self.reason, "detail": self.detail}


class ReplicaHalted(Exception):  # noqa: N818 - carries the halt, not an error class
    """The replica halted; it applies nothing more until the operator acts."""

    def __init__(self, halt: Halt) -> None:
        super().__init__(f"halted at position {halt.position}: {halt.reason}")
        self.halt = halt


class _MalformedFeedError(Exception):
    def __init__(self, position: int, detail: str) -> None:
        super().__init__(detail)
        self.position = position
        self.detail = detail

    def halt(self) -> Halt:
        return Halt(self.position, "MALFORMED_FEED", self.detail)


# Pinning -----------------------------------------------------------------------


def public_key_fingerprint(public_key: Ed25519PublicKey) -> str:
    """The full SHA-256 of the raw public key, as an operator pins it."""
    raw = public_key.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def pin_keys(
    advertised_pem: str,
    *,
    key_files: Iterable[bytes] = (),
    fingerprints: Iterable[str] = (),
) -> dict[str, Ed25519PublicKey]:
    """The keys to trust: the pinned ones, after checking the primary's against them.

    The operator pins PEM files or full ``sha256:`` fingerprints (never a kid:
    64 bits is too short to pin). The key the primary advertises must be one of
    them; a fingerprint alone trusts the advertised key it matches.

    Raises:
        PinningError: nothing is pinned, or the primary's key is not pinned.
    """
    pinned = {}
    for data in key_files:
        try:
            public_key = load_public_key(data)
        except ValueError as error:
            raise PinningError(f"a pinned key file is not usable: {error}") from None
        pinned[key_id(public_key)] = public_key
    wanted = {text.strip().lower() for text in fingerprints if text.strip()}
    for text in wanted:
        if not text.startswith("sha256:") or len(text) != 7 + 64:
            raise PinningError(
                f"{text!r} is not a pinned fingerprint: give sha256: and 64 hex "
                "digits of the primary's public key"
            )
    if not pinned and not wanted:
        raise PinningError(
            "no public key is pinned: give the primary's public key file or its "
            "sha256: fingerprint"
        )
    try:
        advertised = load_public_key(advertised_pem)
    except ValueError as error:
        raise PinningError(f"the primary's public key is not usable: {error}") from None
    if public_key_fingerprint(advertised) in wanted:
        pinned[key_id(advertised)] = advertised
    if pinned.get(key_id(advertised)) is None or public_key_fingerprint(
        pinned[key_id(advertised)]
    ) != public_key_fingerprint(advertised):
        raise PinningError(
            f"the primary signs with {key_id(advertised)} "
            f"({public_key_fingerprint(advertised)}), which is not pinned"
        )
    return pinned


# The source --------------------------------------------------------------------


@dataclass(frozen=True)
class FeedPage:
    """One answer of the feed: entries after a position, and the primary's head."""

    entries: list[SealedEntry]
    head_position: int
    malformed: Halt | None = None  # an item after ``entries`` that is not an entry
    checkpoints: list[Checkpoint] = field(default_factory=list)
    wait_refused: bool = False  # the primary did not long-poll (``Long-Poll: refused``)


@dataclass
class Materials:
    """The primary's answer for a batch's versions: material, or where it was erased.

    ``erased`` maps a version left out to the position of the entry that erased
    it (a destruction, or a trim past it); the replica checks that entry before
    accepting that the material is gone.
    """

    wrapped: dict[tuple[str, int], bytes] = field(default_factory=dict)
    erased: dict[tuple[str, int], int] = field(default_factory=dict)


class Source(Protocol):
    """Where a replica reads the primary's ledger from."""

    name: str

    def signing_key_pem(self) -> str: ...
    def page(
        self,
        after: int,
        limit: int,
        wait: float,
        checkpoints_after: int | None = None,
    ) -> FeedPage: ...
    def materials(self, wanted: Sequence[tuple[str, int]]) -> Materials: ...


class HttpSource:
    """The primary's HTTP API, read with a token holding the replication permission."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.name = url.rstrip("/")
        self._timeout = timeout
        self._client = httpx.Client(
            base_url=self.name,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"HttpSource({self.name!r})"

    def close(self) -> None:
        self._client.close()

    def signing_key_pem(self) -> str:
        body = self._get("/v1/ledger/head", {}, self._timeout)
        try:
            return str(body["signing_key"]["public_key_pem"])
        except (KeyError, TypeError):
            raise SourceUnavailable(
                "the primary did not name its signing key"
            ) from None

    def page(
        self,
        after: int,
        limit: int,
        wait: float,
        checkpoints_after: int | None = None,
    ) -> FeedPage:
        params: dict[str, Any] = {"after": after, "limit": limit, "wait": wait}
        if checkpoints_after is not None:
            params["checkpoints_after"] = checkpoints_after
        response = self._request("/v1/events", params, wait + self._timeout)
        page = decode_page(_json(response, after), after)
        if response.headers.get("Long-Poll") == "refused":
            page = replace(page, wait_refused=True)
        return page

    def announce(self, public_key_pem: str) -> dict[str, Any]:
        """Ask the primary to announce this replica's signing key on its ledger."""
        try:
            response = self._client.post(
                "/v1/replication/signers", json={"public_key_pem": public_key_pem}
            )
        except httpx.HTTPError as error:
            raise SourceUnavailable(f"{type(error).__name__}: {error}") from None
        if response.status_code != 200:
            raise SourceRefused(
                f"the primary answered {response.status_code} ({_code(response)}) "
                "to the announcement of this replica's signing key"
            )
        body: dict[str, Any] = response.json()
        return body

    def materials(self, wanted: Sequence[tuple[str, int]]) -> Materials:
        """Wrapped material of the versions asked for, and where the rest was erased."""
        found = Materials()
        for start in range(0, len(wanted), MATERIAL_PAGE):
            chunk = wanted[start : start + MATERIAL_PAGE]
            query = ",".join(f"{key}:{version}" for key, version in chunk)
            body = self._get(
                "/v1/replication/material", {"versions": query}, self._timeout
            )
            try:
                for item in body["material"]:
                    version_key = (str(item["key_id"]), int(item["version"]))
                    found.wrapped[version_key] = base64.b64decode(
                        str(item["wrapped"]), validate=True
                    )
                for item in body.get("erased", []):
                    version_key = (str(item["key_id"]), int(item["version"]))
                    found.erased[version_key] = int(item["position"])
            except (KeyError, TypeError, ValueError, AttributeError):
                raise _MalformedFeedError(
                    0, "replicated material is malformed"
                ) from None
        return found

    def _get(
        self,
        path: str,
        params: Mapping[str, Any],
        timeout: float,
    ) -> Any:
        response = self._request(path, params, timeout)
        return _json(response, int(params.get("after", 0)))

    def _request(
        self,
        path: str,
        params: Mapping[str, Any],
        timeout: float,
    ) -> httpx.Response:
        try:
            response = self._client.get(path, params=dict(params), timeout=timeout)
        except httpx.TimeoutException as error:
            raise SourceUnavailable(
                f"{type(error).__name__}: no answer within {timeout:g} s",
                waited=timeout,
            ) from None
        except httpx.HTTPError as error:
            raise SourceUnavailable(f"{type(error).__name__}: {error}") from None
        if response.status_code in (401, 403):
            raise SourceRefused(
                f"the primary answered {response.status_code} to {path}: "
                "the token needs the replication permission"
            )
        if response.status_code != 200:
            raise SourceUnavailable(f"the primary answered {response.status_code}")
        return response


def _json(response: httpx.Response, after: int) -> Any:
    try:
        return response.json()
    except ValueError:
        raise _MalformedFeedError(after + 1, "the feed is not JSON") from None


def _code(response: httpx.Response) -> str | None:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


def decode_page(body: Any, after: int) -> FeedPage:
    """A feed page as stored entries; the entry bytes are re-made canonically.

    The entries are RFC 8785 canonical JSON, so encoding the parsed entry again
    gives back exactly the signed bytes; any change in transit changes the hash.
    """
    if not isinstance(body, dict) or not isinstance(body.get("events"), list):
        raise _MalformedFeedError(after + 1, "the feed page has no event list")
    head = body.get("head_position")
    if not isinstance(head, int) or isinstance(head, bool):
        raise _MalformedFeedError(after + 1, "the feed page has no head position")
    checkpoints = decode_checkpoints(body.get("checkpoints", []), after)
    entries = []
    for offset, item in enumerate(body["events"]):
        try:
            entries.append(decode_entry(item, after + 1 + offset))
        except _MalformedFeedError as error:
            return FeedPage(entries, head, error.halt(), checkpoints)
    return FeedPage(entries, head, checkpoints=checkpoints)


def decode_checkpoints(items: Any, after: int) -> list[Checkpoint]:
    """The checkpoints of a feed page (or _MalformedFeedError for the whole page)."""
    if not isinstance(items, list):
        raise _MalformedFeedError(after + 1, "the feed's checkpoints are not a list")
    checkpoints = []
    for item in items:
        try:
            position = item["position"]
            if not isinstance(position, int) or isinstance(position, bool):
                raise TypeError("a checkpoint's position must be an integer")
            checkpoints.append(
                Checkpoint(
                    position=position,
                    hash=str(item["hash"]),
                    recorded_at=str(item["recorded_at"]),
                    kid=str(item["kid"]),
                    signature=bytes.fromhex(str(item["signature"])),
                )
            )
        except (KeyError, TypeError, ValueError) as error:
            raise _MalformedFeedError(
                after + 1, f"a checkpoint in the feed is malformed: {error}"
            ) from None
    return checkpoints


def feed_checkpoints(
    ledger: LedgerRecorder, after: int, upto: int
) -> list[dict[str, Any]]:
    """The signed checkpoints over positions after ``after`` up to ``upto``.

    As the feed gives them, to replicas asking with ``checkpoints_after``: the
    first ``FEED_CHECKPOINTS`` in position order.
    """
    rows = ledger.query(
        "SELECT position, hash, recorded_at, kid, signature FROM "
        f"{checkpoint_table(ledger.events_table_name)} "
        "WHERE position > %s AND position <= %s ORDER BY position LIMIT %s",
        (after, upto, FEED_CHECKPOINTS),
    )
    return [
        {
            "position": int(row["position"]),
            "hash": str(row["hash"]),
            "recorded_at": str(row["recorded_at"]),
            "kid": str(row["kid"]),
            "signature": bytes(row["signature"]).hex(),
        }
        for row in rows
    ]


def decode_entry(item: Any, expected: int) -> SealedEntry:
    """One feed item as the entry the primary stored (or _MalformedFeedError)."""
    if not isinstance(item, dict):
        raise _MalformedFeedError(expected, "a feed item is not an object")
    entry = dict(item)
    try:
        hash_hex = str(entry.pop("hash"))
        signature = bytes.fromhex(str(entry.pop("signature")))
        kid = str(entry.pop("kid"))
        entry_bytes = canonical_json(entry)
        position = entry["position"]
        version = entry["stream_version"]
        if not isinstance(position, int) or not isinstance(version, int):
            raise ValueError("position and stream version must be integers")
        return SealedEntry(
            position=position,
            originator_id=uuid.UUID(str(entry["stream_id"])),
            originator_version=version,
            topic=str(entry["type"]),
            entry_bytes=entry_bytes,
            hash=hash_hex,
            signature=signature,
            kid=kid,
            recorded_at=str(entry["recorded_at"]),
        )
    except (KeyError, ValueError, TypeError) as error:
        raise _MalformedFeedError(
            expected, f"a feed item is malformed: {error}"
        ) from None


# The follower ------------------------------------------------------------------


@dataclass
class ReplicaStatus:
    """What the replica knows about itself and about the primary."""

    source: str
    state: str
    position: int
    hash: str
    primary_head: int
    primary_head_seen_at: str | None = None
    caught_up_at: float | None = None
    reachable: bool = True
    last_error: str | None = None
    unreachable_since: str | None = None
    failed_reads: int = 0  # since the source was last reached
    timed_out_reads: int = 0  # of those, requests that ran out of their timeout
    longest_wait: float = 0.0  # the longest timeout one of them waited out
    halt: Halt | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        behind = max(self.primary_head - self.position, 0)
        seconds = 0.0
        if behind and self.caught_up_at is not None:
            seconds = round(time.time() - self.caught_up_at, 3)
        return {
            "role": "replica" if self.state != PROMOTED else "primary",
            "source": self.source,
            "state": self.state,
            "reason": self.halt.reason if self.halt else None,
            "halt": self.halt.as_json() if self.halt else None,
            "applied": {"position": self.position, "hash": self.hash},
            "primary_head": {
                "position": self.primary_head,
                "seen_at": self.primary_head_seen_at,
            },
            "lag": {"events": behind, "seconds": seconds},
            "source_reachable": self.reachable,
            "last_error": self.last_error,
            "unreachable": None
            if self.reachable
            else {
                "since": self.unreachable_since,
                "failed_reads": self.failed_reads,
                "timed_out_reads": self.timed_out_reads,
                "longest_wait_seconds": round(self.longest_wait, 3),
            },
            **self.extra,
        }


class Follower:
    """Applies the primary's verified entries to the replica's own ledger."""

    def __init__(
        self,
        service: KeyService,
        source: Source,
        public_keys: Mapping[str, Ed25519PublicKey],
        *,
        batch: int = 500,
        kek: KeyEncryptionKey | None = None,
    ) -> None:
        self.service = service
        self.ledger = service.ledger
        self.source = source
        self.public_keys = dict(public_keys)
        self.book = KeyBook(public_keys)
        self.batch = batch
        self.kek = kek
        self._keys: OrderedDict[uuid.UUID, ManagedKey] = OrderedDict()
        self._held_checked = False
        self._checkpoints_after = 0  # the last of the primary's checkpoints kept
        self._wait_refused = False  # the last page came without the long-poll
        self._applying = threading.RLock()
        head = self.ledger.head()
        self.status = ReplicaStatus(source.name, FOLLOWING, head.position, head.hash, 0)
        self._head = head

    # Start-up and state ---------------------------------------------------------

    def prepare(self, *, resume: bool = False) -> None:
        """Create the replica's state, or read it back after a restart.

        Raises:
            ReplicaHalted: the replica halted before and ``resume`` is false.
        """
        self.ledger.execute([(ddl, ()) for ddl in STATE_DDL])
        rows = self.ledger.query(
            "SELECT source, position, primary_head, state, reason, detail, "
            "halted_position FROM replica_state WHERE id = 1"
        )
        head = self.ledger.head()
        self._head = head
        self.status.position, self.status.hash = head.position, head.hash
        self.book = key_book(self.service, self.public_keys)
        self._checkpoints_after = self._last_checkpoint()
        if not rows:
            self.ledger.execute(
                [
                    (
                        "INSERT INTO replica_state (id, source, position, "
                        "primary_head, state, updated_at) "
                        "VALUES (1, %s, %s, %s, %s, %s)",
                        (
                            self.source.name,
                            head.position,
                            head.position,
                            FOLLOWING,
                            _now(),
                        ),
                    )
                ]
            )
            self.status.primary_head = head.position
            return
        row = rows[0]
        self.status.primary_head = int(row["primary_head"])
        if row["state"] == PROMOTED:
            self.status.state = PROMOTED
            return
        if row["state"] == HALTED:
            halt = Halt(int(row["halted_position"] or 0), row["reason"], row["detail"])
            if not resume:
                self.status.state, self.status.halt = HALTED, halt
                raise ReplicaHalted(halt)
            logger.warning("replica_resumed", extra=halt.as_json())
            self._set_state(FOLLOWING, None)
        if row["source"] != self.source.name:
            logger.warning(
                "replica_source_changed",
                extra={"before": row["source"], "now": self.source.name},
            )
            self.ledger.execute(
                [
                    (
                        "UPDATE replica_state SET source = %s WHERE id = 1",
                        (self.source.name,),
                    )
                ]
            )

    def halt(self, halt: Halt) -> ReplicaHalted:
        """Record the halt, log it, and return the exception to raise."""
        if self.status.state == PROMOTED:
            return ReplicaHalted(halt)  # a promoted ledger follows no more
        self.status.state, self.status.halt = HALTED, halt
        logger.error("replica_halted", extra=halt.as_json())
        try:
            self._set_state(HALTED, halt)
        except PersistenceError as error:
            logger.error("replica_halt_not_recorded", extra={"error": str(error)})
        return ReplicaHalted(halt)

    def _set_state(self, state: str, halt: Halt | None) -> None:
        self.ledger.execute(
            [
                (
                    "UPDATE replica_state SET state = %s, reason = %s, detail = %s, "
                    "halted_position = %s, updated_at = %s WHERE id = 1",
                    (
                        state,
                        halt.reason if halt else None,
                        halt.detail if halt else None,
                        halt.position if halt else None,
                        _now(),
                    ),
                )
            ]
        )

    # Following --------------------------------------------------------------------

    def run(
        self,
        stopping: threading.Event,
        *,
        wait: float = 10.0,
        until_caught_up: bool = False,
    ) -> Halt | None:
        """Follow until ``stopping`` is set (or caught up); the halt, if any."""
        backoff = 0.2
        while not stopping.is_set() and self.status.state != PROMOTED:
            try:
                applied = self.step(wait=0 if until_caught_up else wait)
            except ReplicaHalted as halted:
                return halted.halt
            except (SourceUnavailable, SourceRefused, PersistenceError) as error:
                # The primary, the token or the replica's own store: retry later.
                self._unreachable(error)
                logger.warning(
                    "replica_source_unavailable", extra={"error": str(error)}
                )
                stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.2
            if until_caught_up and not applied and self.caught_up():
                return None
            if not applied and self._wait_refused:
                # The primary answered without waiting (too many long-polls open
                # there): poll again a little later, not in a tight loop.
                stopping.wait(IDLE_PAUSE)
        return None

    def caught_up(self) -> bool:
        return self.status.position >= self.status.primary_head

    def _unreachable(self, error: Exception) -> None:
        status = self.status
        if status.reachable:
            status.unreachable_since = _now()
            status.failed_reads = status.timed_out_reads = 0
            status.longest_wait = 0.0
        status.reachable, status.last_error = False, str(error)
        status.failed_reads += 1
        waited = getattr(error, "waited", 0.0)
        if waited:
            status.timed_out_reads += 1
            status.longest_wait = max(status.longest_wait, waited)

    def step(self, *, wait: float = 0) -> int:
        """Read one page after the replica's head, verify it, apply it; how many.

        Raises:
            ReplicaHalted: a mismatch; nothing of the bad entry was kept.
            SourceUnavailable: the primary could not be read; retry later.
        """
        if self.status.state == HALTED and self.status.halt is not None:
            raise ReplicaHalted(self.status.halt)
        # Reading the primary (a long-poll) holds no lock: a promotion need not wait.
        held = self._head
        if not self._held_checked and held.position > 0:
            self._check_held(held)
            self._held_checked = True
        try:
            page = self.source.page(
                held.position,
                self.batch,
                wait,
                checkpoints_after=self._checkpoints_after,
            )
        except _MalformedFeedError as error:
            raise self.halt(
                Halt(error.position, "MALFORMED_FEED", error.detail)
            ) from None
        self._wait_refused = page.wait_refused
        with self._applying:
            if self.status.state == PROMOTED or self._head != held:
                return 0
            return self._take(page, held)

    def _take(self, page: FeedPage, held: Head) -> int:
        """Check a page read after ``held``, then apply what verifies."""
        self.status.reachable, self.status.last_error = True, None
        self._check_primary_head(page.head_position, held)
        entries = self._drop_held(page.entries, held)
        if not entries and page.malformed is not None:
            raise self.halt(page.malformed)
        if not entries:
            self._seen_head(page.head_position)
            self._keep_checkpoints(page.checkpoints)
            return 0
        verified, failure = self._verify(entries, held)
        if verified:
            self._apply(verified, page.head_position)
            self._keep_checkpoints(page.checkpoints)
        failure = failure or page.malformed
        if failure is not None:
            if (
                failure.reason == "BROKEN_LINK"
                and failure.position == held.position + 1
            ):
                # The primary's next entry does not follow ours: whose history moved?
                self._check_held(held)
            raise self.halt(failure)
        if self.caught_up():
            self.status.caught_up_at = time.time()
        return len(verified)

    def _keep_checkpoints(self, checkpoints: Sequence[Checkpoint]) -> None:
        """Store the primary's checkpoints over entries held, each checked first.

        A checkpoint is kept once the replica holds the entry it covers (until
        then the next page brings it again); one whose signature or hash does
        not check out halts the replica, as a bad entry does.
        """
        for checkpoint in checkpoints:
            position = checkpoint.position
            if not self._checkpoints_after < position <= self._head.position:
                continue
            failure = check_checkpoint_signature(
                {
                    "position": position,
                    "hash": checkpoint.hash,
                    "recorded_at": checkpoint.recorded_at,
                    "kid": checkpoint.kid,
                    "signature": checkpoint.signature,
                },
                self.book.keys,
            )
            if failure is not None:
                raise self.halt(Halt(position, failure.reason, failure.detail))
            if self._own_hash(position) != checkpoint.hash:
                raise self.halt(
                    Halt(
                        position,
                        "CHECKPOINT_MISMATCH",
                        f"the primary's checkpoint at {position} names another "
                        "hash than the entry the replica holds there",
                    )
                )
            self.ledger.insert_checkpoint(checkpoint)
            self._checkpoints_after = position

    def _last_checkpoint(self) -> int:
        rows = self.ledger.query(
            "SELECT max(position) AS position FROM "
            f"{checkpoint_table(self.ledger.events_table_name)}"
        )
        return int(rows[0]["position"] or 0) if rows else 0

    def _check_primary_head(self, head_position: int, held: Head) -> None:
        seen = max(self.status.primary_head, held.position)
        if head_position < seen:
            raise self.halt(
                Halt(
                    head_position + 1,
                    "PRIMARY_HEAD_REGRESSED",
                    f"the primary's head is at {head_position} but it was seen at "
                    f"{self.status.primary_head} and the replica holds "
                    f"{held.position}: restored from an older backup? Positions "
                    "already held are never replaced",
                )
            )

    def _check_held(self, held: Head) -> None:
        """Halt with FORK unless the primary holds the replica's head entry as is."""
        if held.position == 0:
            return
        try:
            page = self.source.page(held.position - 1, 1, 0)
        except _MalformedFeedError as error:
            raise self.halt(
                Halt(error.position, "MALFORMED_FEED", error.detail)
            ) from None
        self._check_primary_head(page.head_position, held)
        same = [entry.hash for entry in page.entries if entry.position == held.position]
        if same == [held.hash]:
            return
        fork = self.first_divergence(held.position)
        raise self.halt(
            Halt(
                fork,
                "FORK",
                f"the primary holds a different entry at position {fork} than the "
                "replica; the replica keeps its own",
            )
        )

    def _drop_held(
        self, entries: Sequence[SealedEntry], held: Head
    ) -> list[SealedEntry]:
        """Entries after the head; one delivered again is a no-op if it is the same."""
        fresh = []
        for entry in entries:
            if entry.position > held.position or entry.position < 1:
                fresh.append(entry)
            elif self._own_hash(entry.position) != entry.hash:
                raise self.halt(
                    Halt(
                        entry.position,
                        "FORK",
                        f"the primary sent a different entry at position "
                        f"{entry.position}, which the replica already holds",
                    )
                )
        return fresh

    def first_divergence(self, upto: int) -> int:
        """The first position at which the primary and the replica differ.

        Entries are hash-linked, so once two ledgers differ they differ at every
        later position: a binary search over the hashes finds the fork.
        """
        low, high = 1, upto  # the fork lies in [low, high]
        while low < high:
            middle = (low + high) // 2
            if self._primary_hash(middle) == self._own_hash(middle):
                low = middle + 1
            else:
                high = middle
        return low

    def _primary_hash(self, position: int) -> str | None:
        page = self.source.page(position - 1, 1, 0)
        found = [entry.hash for entry in page.entries if entry.position == position]
        return found[0] if found else None

    def _own_hash(self, position: int) -> str | None:
        rows = self.ledger.query(
            f"SELECT entry_hash FROM {self.ledger.events_table_name} "
            "WHERE notification_id = %s",
            (position,),
        )
        return str(rows[0]["entry_hash"]) if rows else None

    def _seen_head(self, head_position: int) -> None:
        self.status.primary_head_seen_at = _now()
        if self.caught_up() or self.status.caught_up_at is None:
            self.status.caught_up_at = time.time()
        if head_position != self.status.primary_head:
            self.status.primary_head = head_position
            self.ledger.execute(
                [
                    (
                        "UPDATE replica_state SET primary_head = %s, updated_at = %s "
                        "WHERE id = 1",
                        (head_position, _now()),
                    )
                ]
            )

    def _verify(
        self, entries: Sequence[SealedEntry], held: Head
    ) -> tuple[list[SealedEntry], Halt | None]:
        """The verified prefix of ``entries``, and the first failure after it."""
        rows = [
            StoredEntry(
                position=entry.position,
                entry_bytes=entry.entry_bytes,
                hash=entry.hash,
                signature=entry.signature,
                kid=entry.kid,
            )
            for entry in entries
        ]
        result = verify_entries(
            rows,
            self.public_keys,
            book=self.book,
            first_position=held.position + 1,
            previous_hash=held.hash,
            workers=2,
        )
        failure = result.report.first_failure
        if failure is None and entries[0].recorded_at < held.recorded_at:
            failure_halt = Halt(
                entries[0].position,
                "TIME_REGRESSION",
                f"recorded at {entries[0].recorded_at}, before {held.recorded_at}",
            )
            return [], failure_halt
        if failure is None:
            return list(entries), None
        good = [entry for entry in entries if entry.position < failure.position]
        return good, Halt(failure.position, failure.reason, failure.detail)

    # Promotion ----------------------------------------------------------------------

    def promote(self, actor: Actor, request_id: str, *, force: bool) -> Epoch:
        """Stop following and become the primary of a new epoch (see ``promote``)."""
        with self._applying:
            epoch = promote(
                self.service, actor, request_id, force=force, book=self.book
            )
            self.status.state = PROMOTED
            head = self.ledger.head()
            self._head = head
            self.status.position, self.status.hash = head.position, head.hash
            return epoch

    # Applying -----------------------------------------------------------------------

    def _apply(self, entries: list[SealedEntry], primary_head: int) -> None:
        """Store the entries, their projections, material and position in one commit."""
        last = entries[-1]
        try:
            statements = self._statements(entries)
        except _UnreadableError as error:
            self._keys.clear()
            raise self.halt(Halt(error.position, error.reason, error.detail)) from None
        except BaseException:
            # e.g. the primary went away while the material was checked: the
            # cached keys hold events that were not applied; the retry reloads
            self._keys.clear()
            raise
        seen = max(primary_head, last.position)
        statements.append(
            (
                "UPDATE replica_state SET position = %s, primary_head = %s, "
                "updated_at = %s WHERE id = 1",
                (last.position, seen, _now()),
            )
        )
        try:
            self.ledger.insert_replicated(
                entries, statements, expected_head=self._head.position
            )
        except IntegrityError as error:
            self._keys.clear()
            raise self.halt(
                Halt(entries[0].position, "REPLICA_CONFLICT", str(error))
            ) from None
        except BaseException:
            self._keys.clear()
            raise
        self._head = Head(last.position, last.hash, last.recorded_at)
        self.status.position, self.status.hash = last.position, last.hash
        self.status.primary_head = seen
        self.status.primary_head_seen_at = _now()

    def _statements(self, entries: Sequence[SealedEntry]) -> list[Statement]:
        """The side writes of a batch: each touched key's rows, material changes."""
        statements: list[Statement] = []
        changed: dict[uuid.UUID, _KeyChange] = {}
        events = [
            (entry, self._event(entry))
            for entry in entries
            # clock moves, access facts, backup settings: no read side
            if entry.topic in _PROJECTED_TOPICS
        ]
        for entry in entries:
            if entry.topic == _USAGE_TOPIC:
                statements += usage_counts.count_statements(
                    self._event(entry).mutate(None)
                )
        fetched = self._fetch_material(events)
        for entry, event in events:
            stream = entry.originator_id
            key = self._key(stream, entry)
            try:
                key = event.mutate(key)
            except (OriginatorVersionError, ValueError, KeyError) as error:
                raise _UnreadableError(
                    entry.position, "UNREADABLE_EVENT", str(error)
                ) from None
            self._keys[stream] = key
            self._keys.move_to_end(stream)
            change = changed.setdefault(stream, _KeyChange())
            change.events.append(event)
            change.last_position = entry.position
            statements += self._material_statements(entry, event, fetched)
        for stream, change in changed.items():
            key = self._keys[stream]
            if isinstance(key, Principal):
                statements += access_view.principal_statements(
                    key, change.last_position
                )
                continue
            if isinstance(key, KeyBackups):
                statements += backup_status.view_statements(
                    key,
                    backup_status.touched_backups(change.events),
                    change.last_position,
                )
                continue
            removed = key_view.removed_versions(change.events)
            statements += key_view.view_statements(
                key,
                key_view.touched_versions(change.events) - removed,
                change.last_position,
                config=key_view.config_changed(change.events),
                removed=removed,
            )
        while len(self._keys) > _AGGREGATE_CACHE:
            self._keys.popitem(last=False)
        return statements

    def _event(self, entry: SealedEntry) -> Any:
        stored = StoredEvent(
            entry.originator_id,
            entry.originator_version,
            entry.topic,
            entry.entry_bytes,
        )
        try:
            return self.service.app.mapper.to_domain_event(stored)
        except (TopicError, KeyError, ValueError, TypeError) as error:
            raise _UnreadableError(
                entry.position, "UNREADABLE_EVENT", str(error)
            ) from None

    def _key(self, stream: uuid.UUID, entry: SealedEntry) -> ManagedKey | None:
        if entry.originator_version == 1:
            return None
        key = self._keys.get(stream)
        if key is None:
            try:
                key = self.service.app.repository.get(stream)
            except AggregateNotFoundError:
                raise _UnreadableError(
                    entry.position,
                    "UNREADABLE_EVENT",
                    "the key's earlier events are missing",
                ) from None
        return key

    def _fetch_material(self, events: Sequence[tuple[SealedEntry, Any]]) -> Materials:
        """One request for the material of every version a batch creates."""
        wanted = [
            (str(entry.originator_id), _new_version(event))
            for entry, event in events
            if _new_version(event)
        ]
        if self.kek is None or not wanted:
            return Materials()
        try:
            return self.source.materials(wanted)
        except _MalformedFeedError as error:
            raise _UnreadableError(
                events[0][0].position, "MALFORMED_FEED", error.detail
            ) from None

    def _material_statements(
        self, entry: SealedEntry, event: Any, fetched: Materials
    ) -> list[Statement]:
        """Keep replicated material for new versions; erase it when the ledger does."""
        stream = str(entry.originator_id)
        if isinstance(event, ManagedKey.VersionDestroyed):
            return [
                (
                    "DELETE FROM key_material WHERE key_id = %s AND version = %s",
                    (stream, event.version),
                )
            ]
        if isinstance(event, ManagedKey.VersionsTrimmed):
            return [
                (
                    "DELETE FROM key_material WHERE key_id = %s AND version < %s",
                    (stream, event.min_available_version),
                )
            ]
        version = _new_version(event)
        if version:
            wrapped = fetched.wrapped.get((stream, version))
            if wrapped is None and self.kek is not None:
                self._check_erased(
                    entry, stream, version, fetched.erased.get((stream, version))
                )
                return []  # erased on the primary since: nothing to keep
            return self._replicated_material(
                entry, stream, version, event.fingerprint, wrapped
            )
        return []

    def _replicated_material(
        self,
        entry: SealedEntry,
        stream: str,
        version: int,
        expected: str,
        wrapped: bytes | None,
    ) -> list[Statement]:
        if self.kek is None or wrapped is None:
            return []
        try:
            material = self.kek.unwrap(wrapped, key_id=stream, version=version)
        except UnwrapError:
            raise _UnreadableError(
                entry.position,
                "MATERIAL_MISMATCH",
                f"material of version {version} does not open with this replica's KEK",
            ) from None
        if fingerprint(material) != expected:
            raise _UnreadableError(
                entry.position,
                "MATERIAL_MISMATCH",
                f"material of version {version} differs from its fingerprint",
            )
        return [
            (
                "INSERT INTO key_material (key_id, version, wrapped) "
                "VALUES (%s, %s, %s) ON CONFLICT (key_id, version) DO NOTHING",
                (stream, version, base64.b64encode(wrapped).decode("ascii")),
            )
        ]

    def _check_erased(
        self, entry: SealedEntry, stream: str, version: int, claimed: int | None
    ) -> None:
        """Accept a version without material only if a signed entry erases it.

        The primary names the position of the entry that erased the version; the
        replica reads that entry, checks its hash and its signature by a trusted
        key, and that it destroys the version (or trims past it) after the entry
        that created it. Anything else halts with ``MATERIAL_MISSING``.
        """
        missing = _UnreadableError(
            entry.position,
            "MATERIAL_MISSING",
            f"the primary sent no material for version {version} of key {stream}, "
            "which its ledger does not erase",
        )
        if claimed is None or claimed <= entry.position:
            raise missing
        try:
            page = self.source.page(claimed - 1, 1, 0)
        except _MalformedFeedError:
            raise missing from None
        found = [item for item in page.entries if item.position == claimed]
        if not found:
            raise missing
        erasing = found[0]
        signed = _Signed(claimed, erasing.kid, erasing.signature, erasing.hash)
        if (
            entry_hash(erasing.entry_bytes) != erasing.hash
            or self.book.check(signed) is not None
            or str(erasing.originator_id) != stream
            or not _erases(json.loads(erasing.entry_bytes), version)
        ):
            raise missing


def _erases(entry: Mapping[str, Any], version: int) -> bool:
    """Whether a stored entry of a key destroys ``version`` or trims past it."""
    payload = entry.get("payload")
    if not isinstance(payload, dict):
        return False
    if entry.get("type") == ManagedKey.VersionDestroyed.TOPIC:
        return bool(payload.get("version") == version)
    if entry.get("type") == ManagedKey.VersionsTrimmed.TOPIC:
        floor = payload.get("min_available_version")
        return isinstance(floor, int) and floor > version
    return False


def erasure_position(service: KeyService, stream: str, version: int) -> int | None:
    """The position of the entry that erased a version's material, if any."""
    key_id = uuid.UUID(stream)
    rows = service.ledger.query(
        f"SELECT notification_id, state FROM {service.ledger.events_table_name} "
        "WHERE originator_id = %s AND topic IN (%s, %s) ORDER BY notification_id",
        (
            key_id.hex if _is_sqlite(service) else key_id,
            ManagedKey.VersionDestroyed.TOPIC,
            ManagedKey.VersionsTrimmed.TOPIC,
        ),
    )
    for row in rows:
        state = row["state"]
        if _erases(json.loads(state), version):
            return int(row["notification_id"])
    return None


def _new_version(event: Any) -> int:
    """The version an event creates (and whose material follows), or 0."""
    if isinstance(event, ManagedKey.Generated):
        return 1
    if isinstance(event, ManagedKey.Rotated):
        return int(event.version)
    return 0


@dataclass
class _KeyChange:
    events: list[Any] = field(default_factory=list)
    last_position: int = 0


class _UnreadableError(Exception):
    def __init__(self, position: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.position, self.reason, self.detail = position, reason, detail


def _now() -> str:
    from datetime import UTC, datetime

    return format_time(datetime.now(UTC))


# Announcing and promoting ------------------------------------------------------


class PromotionRefusedError(Exception):
    """A promotion was refused; nothing was recorded."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


def key_book(service: KeyService, roots: Mapping[str, Ed25519PublicKey]) -> KeyBook:
    """The keys trusted after the ledger's own announcements and promotions."""
    book = KeyBook(roots)
    rows = service.ledger.query(
        f"SELECT notification_id, state, kid FROM {service.ledger.events_table_name} "
        "WHERE topic IN (%s, %s) ORDER BY notification_id",
        (SIGNER_ANNOUNCED_TOPIC, PROMOTED_TOPIC),
    )
    for row in rows:
        book.follow(
            int(row["notification_id"]), str(row["kid"]), json.loads(row["state"])
        )
    return book


def announce_signer(
    service: KeyService, actor: Actor, request_id: str, public_key_pem: str
) -> tuple[str, int]:
    """Record on this ledger that ``public_key_pem`` may sign after a promotion.

    Idempotent: a key announced before keeps its first entry. Returns the key id
    and the position of its announcement.

    Raises:
        ValueError: the PEM is not an Ed25519 public key.
    """
    public_key = load_public_key(public_key_pem)
    kid = key_id(public_key)
    pem = pem_of(public_key)
    found = _announced_at(service, kid)
    if found is not None:
        return kid, found
    announcement = SignerAnnouncement.announce(
        kid=kid, public_key_pem=pem, purpose="replica", now=service.clock.now()
    )
    write = LedgerWrite(
        actor=actor,
        request_id=request_id,
        subjects={str(announcement.id): f"signer:{kid}"},
    )
    try:
        service.app.save(announcement, ledger=write)
    except IntegrityError:
        position = _announced_at(service, kid)
        if position is None:
            raise
        return kid, position
    return kid, write.receipts[-1].position


def _announced_at(service: KeyService, kid: str) -> int | None:
    stream = announcement_id(kid)
    rows = service.ledger.query(
        f"SELECT notification_id FROM {service.ledger.events_table_name} "
        "WHERE originator_id = %s",
        (stream.hex if _is_sqlite(service) else stream,),
    )
    return int(rows[0]["notification_id"]) if rows else None


def _is_sqlite(service: KeyService) -> bool:
    return service.ledger.__class__.__name__.startswith("SQLite")


def promote(
    service: KeyService,
    actor: Actor,
    request_id: str,
    *,
    force: bool,
    book: KeyBook | None = None,
) -> Epoch:
    """Turn the replica behind ``service`` into the primary of a new epoch.

    Refused (nothing recorded) when the replica is not a following replica, is
    behind the last primary head it saw or halted (unless ``force``), or when
    its own signing key was never announced on the ledger (verifiers could not
    follow the change). The epoch entry is the first signed with the replica's
    key; a forced promotion behind the head records the window of positions
    that may be lost. Two promotions racing on one store record one epoch: the
    store's one ``replica_promotion`` row is written with the epoch's entry (and
    the store records only the next epoch, whose id is derived from its number).

    Raises:
        PromotionRefusedError: with a code saying why.
    """
    state = _replica_state(service)
    if state is None:
        raise PromotionRefusedError("NOT_A_REPLICA", "This ledger is not a replica.")
    if state["state"] == PROMOTED:
        raise PromotionRefusedError(
            "ALREADY_PROMOTED", "This replica was promoted already."
        )
    head = service.ledger.head()
    seen = max(int(state["primary_head"]), head.position)
    if state["state"] == HALTED and not force:
        raise PromotionRefusedError(
            "REPLICA_HALTED",
            f"The replica halted ({state['reason']} at {state['halted_position']}); "
            "promote with force to accept it as is.",
            reason=state["reason"],
            halted_position=state["halted_position"],
        )
    if head.position < seen and not force:
        raise PromotionRefusedError(
            "REPLICA_BEHIND",
            f"The replica holds position {head.position} but saw the primary at "
            f"{seen}; promote with force to accept losing the difference.",
            applied=head.position,
            primary_head=seen,
        )
    book = book or key_book(service, service.trusted_keys)
    kid = service.signer.kid
    if kid not in book.keys:
        raise PromotionRefusedError(
            "SIGNER_NOT_ANNOUNCED",
            f"This replica's signing key {kid} was never announced on the ledger, "
            "so verifiers could not follow the promotion.",
            kid=kid,
        )
    epoch = Epoch.promote(
        epoch=2 + _epochs(service),
        kid=kid,
        previous_source=str(state["source"]),
        applied_position=head.position,
        primary_head_seen=seen,
        forced=force,
        now=service.clock.now(),
    )
    write = LedgerWrite(
        actor=actor,
        request_id=request_id,
        subjects={str(epoch.id): f"epoch:{epoch.epoch}"},
        statements=[
            (
                "INSERT INTO replica_promotion (id, epoch, promoted_at) "
                "VALUES (1, %s, %s)",
                (epoch.epoch, _now()),
            ),
            (
                "UPDATE replica_state SET state = %s, updated_at = %s WHERE id = 1",
                (PROMOTED, _now()),
            ),
        ],
    )
    try:
        service.app.save(epoch, ledger=write)
    except IntegrityError:
        raise PromotionRefusedError(
            "ALREADY_PROMOTED",
            f"Epoch {epoch.epoch} was recorded by another promotion.",
        ) from None
    logger.warning(
        "replica_promoted",
        extra={"epoch": epoch.epoch, "position": write.receipts[-1].position},
    )
    return epoch


def promotion_entry(service: KeyService, epoch: Epoch) -> Head:
    """The position, hash and time of the ``Promoted`` entry that recorded ``epoch``.

    Not the head: a promoted service appends its start (and more) right after.
    """
    rows = service.ledger.query(
        f"SELECT notification_id, entry_hash, recorded_at FROM "
        f"{service.ledger.events_table_name} WHERE originator_id = %s",
        (epoch.id.hex if _is_sqlite(service) else epoch.id,),
    )
    row = rows[0]
    return Head(int(row["notification_id"]), str(row["entry_hash"]), row["recorded_at"])


def unpromoted_replica(service: KeyService) -> dict[str, Any] | None:
    """This store's replica state, if it follows a primary and was never promoted.

    Such a store must not serve as a primary: an old primary that rejoined and
    halted on a fork, or a replica started by mistake with ``keyledger serve``,
    would append to a copy of another ledger.
    """
    state = _replica_state(service)
    if state is None or state["state"] == PROMOTED:
        return None
    return state


def _replica_state(service: KeyService) -> dict[str, Any] | None:
    service.ledger.execute([(ddl, ()) for ddl in STATE_DDL])
    rows = service.ledger.query(
        "SELECT source, primary_head, state, reason, halted_position "
        "FROM replica_state WHERE id = 1"
    )
    return rows[0] if rows else None


def _epochs(service: KeyService) -> int:
    rows = service.ledger.query(
        f"SELECT count(*) AS n FROM {service.ledger.events_table_name} "
        "WHERE topic = %s",
        (PROMOTED_TOPIC,),
    )
    return int(rows[0]["n"])
