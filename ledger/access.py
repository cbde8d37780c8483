"""Principals, tokens and the access facts the ledger records about requests.

``AccessService`` runs the principal and token commands: each is an event on the
principal's stream, written with the ``access_principals``/``access_tokens``
rows in one transaction. ``Coalescer`` records facts that repeat (uses of the
bootstrap token, refused requests) once per window with a count.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, PersistenceError

from domain.access import Permission, Role
from domain.access_audit import _Window
from domain.clock import Clock, parse_time
from domain.errors import (
    AuthenticationError,
    ConcurrentModificationError,
    InvalidArgumentError,
    PrincipalNotFoundError,
)
from domain.principals import (
    Principal,
    PrincipalLifecycleError,
    granted_on_key,
    principal_id_for,
    validate_principal_name,
)
from ledger.application import KeyLedger
from ledger.service import (
    CommandContext,
    Replay,
    _unavailable,
    check_replay,
    idempotency_statement,
    replay_saved,
    saved_response,
)
from ledger.store import SYSTEM_ACTOR, Actor, LedgerWrite, Receipt
from projections import access_view

TOKEN_PREFIX = "kl_"
MIN_TOKEN_SECONDS = 60
MAX_TOKEN_SECONDS = 400 * 24 * 3600


def token_sha256(token: str) -> str:
    """The digest a token is stored and found under."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    """A new token: shown to the caller once, never stored or recorded."""

    token: str
    token_id: str
    expires_at: str
    receipts: list[Receipt]


class AccessService:
    """Commands and queries on principals and their tokens."""

    def __init__(self, app: KeyLedger, clock: Clock) -> None:
        self.app = app
        self.ledger = app.ledger
        self.clock = clock

    # Commands --------------------------------------------------------------

    def create_principal(
        self,
        context: CommandContext,
        *,
        name: str,
        roles: frozenset[Role],
        description: str = "",
    ) -> tuple[dict[str, Any], list[Receipt]]:
        validate_principal_name(name)
        replay_saved(self.ledger, context)
        if self._find(name) is not None:
            raise self._exists(name)
        principal = Principal.create(
            name=name, roles=roles, description=description, now=self.clock.now()
        )
        try:
            return self._save(principal, context)
        except ConcurrentModificationError:
            raise self._exists(name) from None

    def change_roles(
        self, context: CommandContext, name: str, roles: frozenset[Role]
    ) -> tuple[dict[str, Any], list[Receipt]]:
        principal = self._load(name)
        replay_saved(self.ledger, context)
        principal.change_roles(roles, now=self.clock.now())
        return self._save(principal, context)

    def issue_token(
        self,
        context: CommandContext,
        name: str,
        *,
        expires_in_seconds: int,
        label: str = "",
    ) -> IssuedToken:
        """Issue a random token; the caller shows it once, the ledger keeps its hash.

        Raises:
            InvalidArgumentError: ``INVALID_EXPIRY`` unless the lifetime is
                ``MIN_TOKEN_SECONDS`` to ``MAX_TOKEN_SECONDS``.
        """
        if not MIN_TOKEN_SECONDS <= expires_in_seconds <= MAX_TOKEN_SECONDS:
            raise InvalidArgumentError(
                f"expires_in_seconds is {MIN_TOKEN_SECONDS} to {MAX_TOKEN_SECONDS} "
                "(60 s to 400 days).",
                code="INVALID_EXPIRY",
                field="expires_in_seconds",
                min=MIN_TOKEN_SECONDS,
                max=MAX_TOKEN_SECONDS,
            )
        principal = self._load(name)
        replay_saved(self.ledger, context)
        now = self.clock.now()
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_id = "tok_" + secrets.token_hex(8)
        expires_at = now + timedelta(seconds=expires_in_seconds)
        principal.issue_token(
            token_id=token_id,
            token_sha256=token_sha256(token),
            expires_at=expires_at,
            label=label,
            now=now,
        )
        _, receipts = self._save(principal, context)
        return IssuedToken(
            token, token_id, principal.tokens[token_id]["expires_at"], receipts
        )

    def set_grant(
        self,
        context: CommandContext,
        name: str,
        *,
        keys: str,
        permissions: frozenset[Permission],
    ) -> tuple[dict[str, Any], list[Receipt]]:
        principal = self._load(name)
        replay_saved(self.ledger, context)
        principal.set_grant(keys, permissions, now=self.clock.now())
        return self._save(principal, context)

    def remove_grant(
        self, context: CommandContext, name: str, *, keys: str
    ) -> tuple[dict[str, Any], list[Receipt]]:
        principal = self._load(name)
        replay_saved(self.ledger, context)
        principal.remove_grant(keys, now=self.clock.now())
        return self._save(principal, context)

    def revoke_token(
        self, context: CommandContext, token_id: str, *, reason: str
    ) -> tuple[dict[str, Any], list[Receipt]]:
        rows = self.ledger.query(
            "SELECT principal FROM access_tokens WHERE token_id = %s", (token_id,)
        )
        if not rows:
            raise PrincipalNotFoundError(
                f"No token {token_id!r}.", code="TOKEN_NOT_FOUND", token_id=token_id
            )
        principal = self._load(rows[0]["principal"])
        replay_saved(self.ledger, context)
        principal.revoke_token(token_id, reason=reason, now=self.clock.now())
        return self._save(principal, context)

    # Queries ---------------------------------------------------------------

    def authenticate(self, token: str) -> Actor | None:
        """The actor a principal's token stands for; None if the token is unknown.

        Raises:
            AuthenticationError: the token expired (``TOKEN_EXPIRED``) or was
                revoked (``TOKEN_REVOKED``).
        """
        found = access_view.find_token(self.ledger, token_sha256(token))
        if found is None:
            return None
        token_id = found["token_id"]
        if found["revoked_at"] is not None:
            raise AuthenticationError(
                "The token was revoked.", code="TOKEN_REVOKED", token_id=token_id
            )
        if parse_time(found["expires_at"]) <= self.clock.now():
            raise AuthenticationError(
                "The token has expired.", code="TOKEN_EXPIRED", token_id=token_id
            )
        roles = frozenset(
            Role(role) for role in access_view.split_roles(found["roles"])
        )
        return Actor(found["principal"], token_id, roles=roles)

    def granted_on_key(self, principal: str, key: str) -> frozenset[Permission] | None:
        """What the principal's grants allow on ``key``; None if it has no grants."""
        return granted_on_key(self.grants(principal), key)

    def grants(self, principal: str) -> dict[str, frozenset[Permission]]:
        """The principal's per-key grants: key pattern -> permissions."""
        return {
            pattern: frozenset(Permission(name) for name in names)
            for pattern, names in access_view.grants_of(self.ledger, principal).items()
        }

    def get_principal(self, name: str) -> dict[str, Any]:
        return self._load(name).summary()

    def list_principals(self) -> list[dict[str, Any]]:
        return access_view.list_principals(self.ledger)

    # Internals -------------------------------------------------------------

    def _find(self, name: str) -> Principal | None:
        try:
            principal: Principal = self.app.repository.get(principal_id_for(name))
        except AggregateNotFoundError:
            return None
        except PersistenceError as error:
            raise _unavailable(error) from error
        return principal

    def _load(self, name: str) -> Principal:
        validate_principal_name(name)
        principal = self._find(name)
        if principal is None:
            raise PrincipalNotFoundError(
                f"No principal named {name!r}.", principal=name
            )
        return principal

    @staticmethod
    def _exists(name: str) -> PrincipalLifecycleError:
        return PrincipalLifecycleError(
            f"A principal named {name!r} already exists.",
            code="PRINCIPAL_EXISTS",
            principal=name,
        )

    def _save(
        self, principal: Principal, context: CommandContext
    ) -> tuple[dict[str, Any], list[Receipt]]:
        write = LedgerWrite(
            actor=context.actor,
            request_id=context.request_id,
            subjects={str(principal.id): f"principal:{principal.name}"},
        )
        write.after_sealed.append(
            lambda receipts: access_view.principal_statements(
                principal, receipts[-1].position
            )
        )
        record = context.idempotency
        if record is not None:
            summary = principal.summary()
            write.after_sealed.append(
                lambda receipts: [
                    idempotency_statement(record, (summary, receipts), self.clock.now())
                ]
            )
        try:
            self.app.save(principal, ledger=write)
        except IntegrityError as error:
            saved = saved_response(self.ledger, record) if record else None
            if record is not None and saved is not None:
                raise Replay(check_replay(record, saved)) from None
            raise ConcurrentModificationError(
                f"Another change to principal {principal.name!r} was recorded first.",
                principal=principal.name,
            ) from error
        except PersistenceError as error:
            raise _unavailable(error) from error
        return principal.summary(), write.receipts


@dataclass
class _OpenWindow:
    window: _Window
    opened_at: datetime
    last_at: datetime
    repeats: int = 0
    # The distinct details (key names) the occurrences named, up to a bound.
    details: set[str] = field(default_factory=set)
    more_details: bool = False

    def note(self, detail: str | None, bound: int) -> None:
        if detail is None or detail in self.details:
            return
        if len(self.details) < bound:
            self.details.add(detail)
        else:
            self.more_details = True


@dataclass
class Coalescer:
    """Records a repeating fact once per window per signature, and counts repeats.

    ``occurred`` records the first occurrence of a signature at once (raising if
    the ledger cannot record it: the caller must then refuse to go on), and only
    counts the next ones until ``window`` has passed since the first, keeping the
    distinct ``detail`` values they name (up to ``max_details``). ``flush``
    records the counts of closed windows (all of them with ``everything``); the
    service calls it from its scheduler and when it stops.
    """

    app: KeyLedger
    clock: Clock
    window: timedelta = timedelta(minutes=5)
    max_open: int = 10_000
    max_details: int = 10
    _open: dict[Hashable, _OpenWindow] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def occurred(
        self,
        signature: Hashable,
        start: Callable[[datetime, int], _Window],
        actor: Actor,
        request_id: str,
        detail: str | None = None,
    ) -> None:
        now = self.clock.now()
        with self._lock:
            current = self._open.get(signature)
            if current is not None and now < current.opened_at + self.window:
                current.repeats += 1
                current.last_at = max(current.last_at, now)
                current.note(detail, self.max_details)
                return
        self.flush()
        window = start(now, int(self.window.total_seconds()))
        self.record(window, actor, request_id)
        opened = _OpenWindow(window, now, now)
        opened.note(detail, self.max_details)
        with self._lock:
            if len(self._open) >= self.max_open:
                self._close_oldest()
            self._open[signature] = opened

    def flush(self, *, everything: bool = False) -> int:
        """Record the repeat counts of closed windows; the number of events written."""
        now = self.clock.now()
        with self._lock:
            closing = [
                (signature, current)
                for signature, current in self._open.items()
                if everything or now >= current.opened_at + self.window
            ]
            for signature, _ in closing:
                del self._open[signature]
        written = 0
        for _, current in closing:
            written += self._count(current, now)
        return written

    def _close_oldest(self) -> None:
        signature = min(self._open, key=lambda item: self._open[item].opened_at)
        current = self._open.pop(signature)
        self._count(current, self.clock.now())

    def _count(self, current: _OpenWindow, now: datetime) -> int:
        if current.repeats == 0:
            return 0
        current.window.count_repeats(
            current.repeats,
            last_at=current.last_at,
            now=now,
            details=sorted(current.details),
            more_details=current.more_details,
        )
        self.record(current.window, SYSTEM_ACTOR, "access-coalescer")
        return 1

    def record(self, fact: Aggregate, actor: Actor, request_id: str) -> None:
        """Record one fact's pending events now; raise if the ledger cannot."""
        write = LedgerWrite(actor=actor, request_id=request_id)
        try:
            self.app.save(fact, ledger=write)
        except PersistenceError as error:
            raise _unavailable(error) from error
