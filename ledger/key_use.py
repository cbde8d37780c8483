"""Using keys: encrypt, decrypt, rewrap and data keys, each use recorded first.

A request holds one item or a batch. Each item is checked against the key's
rules and processed on its own, so one bad item never fails the others, and an
item is never served by a version other than the one it named. The request's
usage record is appended to the ledger before any result is returned: if the
ledger cannot record, the request fails with ``LedgerUnavailableError`` and
nothing is returned.
"""

from __future__ import annotations

import base64
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.persistence import PersistenceError

from domain.errors import KeyledgerError, KeyLifecycleError, MaterialUnreadableError
from domain.usage import KeyUse, Operation
from ledger import cipher
from ledger.material import UnwrapError
from ledger.service import _unavailable
from ledger.store import LedgerWrite, Receipt
from projections import usage_counts

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from domain.keys import ManagedKey
    from ledger.service import CommandContext, KeyService


@dataclass(frozen=True)
class UseItem:
    """One item as the caller sent it; byte fields are still base64 text.

    ``version`` is the version to encrypt under (encrypt, rewrap, datakey);
    the version to decrypt with is the one the ciphertext names.
    """

    plaintext: str | None = None
    ciphertext: str | None = None
    context: str | None = None
    version: int | None = None
    compromised_ok: bool = False
    return_plaintext: bool = False
    data_key_bytes: int = cipher.DATA_KEY_BYTES


@dataclass
class ItemOutcome:
    """An item's result, or the refusal that stopped it."""

    result: dict[str, Any] | None = None
    error: KeyledgerError | None = None


@dataclass
class UseResult:
    """Every item's outcome, and the receipt of the usage record."""

    outcomes: list[ItemOutcome]
    receipts: list[Receipt]

    @property
    def position(self) -> int:
        return self.receipts[-1].position


@dataclass
class _Work:
    """An item on its way through: decoded inputs, decided versions, outputs."""

    context: bytes = b""
    plaintext: bytes = b""
    sealed: bytes = b""
    decrypt_version: int | None = None
    encrypt_version: int | None = None
    compromised: bool = False
    asked: UseItem = field(default_factory=UseItem)
    outcome: ItemOutcome = field(default_factory=ItemOutcome)


class KeyUser:
    """Runs key operations for a ``KeyService`` and records each request.

    ``prefix`` names the ciphertext form this user reads and writes:
    ``keyledger`` for the native API, ``vault`` for the Vault transit API.
    """

    def __init__(self, service: KeyService, *, prefix: str = cipher.PREFIX) -> None:
        self.service = service
        self.prefix = prefix

    def use(
        self,
        context: CommandContext,
        name: str,
        operation: Operation,
        items: Sequence[UseItem | KeyledgerError],
        *,
        single: bool,
    ) -> UseResult:
        """Run ``operation`` on every item, record the request, return outcomes.

        ``items`` may hold refusals already found while reading the request.
        A single item that is malformed is refused before the key is read, and
        nothing is recorded; once the key is read, the request is recorded
        whatever its outcome, and a disabled key refuses it as a whole.

        Raises:
            KeyNotFoundError: no key has that name (nothing recorded).
            KeyLifecycleError: ``KEY_DISABLED`` (recorded).
            LedgerUnavailableError: the ledger could not read the key or record
                the use; no result is returned.
        """
        work = [self._decode(operation, item) for item in items]
        if single and work[0].outcome.error is not None:
            raise work[0].outcome.error

        key = self.service._load(name)
        if not key.enabled:
            refusal = KeyLifecycleError(
                f"Key {name!r} is disabled.", code="KEY_DISABLED", key=name
            )
            self._record(context, key, operation, work, refused=refusal)
            raise refusal

        self._decide(key, operation, work)
        self._process(key, operation, work)
        receipts = self._record(context, key, operation, work)
        return UseResult([item.outcome for item in work], receipts)

    # Steps -----------------------------------------------------------------

    def _decode(self, operation: Operation, item: UseItem | KeyledgerError) -> _Work:
        work = _Work()
        if isinstance(item, KeyledgerError):
            work.outcome.error = item
            return work
        work.asked = item
        try:
            if item.context is not None:
                work.context = cipher.decode_base64(
                    item.context, field="context", allow_empty=True
                )
            if operation == "encrypt":
                assert item.plaintext is not None
                work.plaintext = cipher.decode_base64(
                    item.plaintext, field="plaintext", allow_empty=False
                )
            if operation in ("decrypt", "rewrap"):
                assert item.ciphertext is not None
                work.decrypt_version, work.sealed = cipher.parse_ciphertext(
                    item.ciphertext, self.prefix
                )
        except KeyledgerError as error:
            work.outcome.error = error
        return work

    @staticmethod
    def _decide(key: ManagedKey, operation: Operation, work: list[_Work]) -> None:
        for item in work:
            if item.outcome.error is not None:
                continue
            try:
                if item.decrypt_version is not None:
                    item.compromised = key.check_decryption(
                        item.decrypt_version, compromised_ok=item.asked.compromised_ok
                    )
                if operation != "decrypt":
                    item.encrypt_version = key.version_for_encryption(
                        item.asked.version
                    )
            except KeyledgerError as error:
                item.outcome.error = error

    def _process(
        self, key: ManagedKey, operation: Operation, work: list[_Work]
    ) -> None:
        needed = {
            number
            for item in work
            if item.outcome.error is None
            for number in (item.decrypt_version, item.encrypt_version)
            if number is not None
        }
        aeads = self._materials(key, needed)
        for item in work:
            if item.outcome.error is not None:
                continue
            try:
                item.outcome.result = self._run(key, operation, item, aeads)
            except KeyledgerError as error:
                item.outcome.error = error

    def _run(
        self,
        key: ManagedKey,
        operation: Operation,
        item: _Work,
        aeads: dict[int, AESGCM | None],
    ) -> dict[str, Any]:
        result: dict[str, Any] = {}
        plaintext = item.plaintext
        if item.decrypt_version is not None:
            plaintext = cipher.decrypt(
                _aead(key, aeads, item.decrypt_version), item.sealed, item.context
            )
            if item.compromised:
                result["compromised_use"] = True
            if operation == "decrypt":
                result["plaintext"] = _b64(plaintext)
                result["version"] = item.decrypt_version
                return result
            result["from_version"] = item.decrypt_version
        if operation == "datakey":
            plaintext = cipher.new_data_key(item.asked.data_key_bytes)
        assert item.encrypt_version is not None
        result["ciphertext"] = cipher.encrypt(
            _aead(key, aeads, item.encrypt_version),
            item.encrypt_version,
            plaintext,
            item.context,
            self.prefix,
        )
        result["version"] = item.encrypt_version
        if operation == "datakey" and item.asked.return_plaintext:
            result["plaintext"] = _b64(plaintext)
        return result

    def _materials(
        self, key: ManagedKey, versions: set[int]
    ) -> dict[int, AESGCM | None]:
        """An AES-GCM instance per version whose material is still kept.

        A version whose kept material cannot be unwrapped maps to None: its items
        fail as MATERIAL_UNREADABLE, and the request is still recorded.
        """
        if not versions:
            return {}
        service = self.service
        numbers = sorted(versions)
        try:
            rows = service.ledger.query(
                "SELECT version, wrapped FROM key_material WHERE key_id = %s AND "
                f"version IN ({', '.join(['%s'] * len(numbers))})",
                (str(key.id), *numbers),
            )
        except PersistenceError as error:
            raise _unavailable(error) from error
        aeads: dict[int, AESGCM | None] = {}
        for row in rows:
            version = int(row["version"])
            try:
                material = service.kek.unwrap(
                    base64.b64decode(row["wrapped"]),
                    key_id=str(key.id),
                    version=version,
                )
            except (UnwrapError, ValueError):
                logger.error(
                    "material_unreadable", extra={"key": key.name, "version": version}
                )
                aeads[version] = None
                continue
            aeads[version] = AESGCM(material)
        return aeads

    def _record(
        self,
        context: CommandContext,
        key: ManagedKey,
        operation: Operation,
        work: list[_Work],
        *,
        refused: KeyledgerError | None = None,
    ) -> list[Receipt]:
        """Append the request's usage record; MUST succeed before any answer."""
        if refused is not None:
            outcomes = Counter({refused.code: len(work)})
        else:
            outcomes = Counter(
                "ok" if item.outcome.error is None else item.outcome.error.code
                for item in work
            )
        done = [item for item in work if refused is None and item.outcome.error is None]
        use = KeyUse.record(
            key_name=key.name,
            key_id=str(key.id),
            operation=operation,
            outcomes=dict(outcomes),
            versions_decrypted=[
                item.decrypt_version
                for item in done
                if item.decrypt_version is not None
            ],
            versions_encrypted=[
                item.encrypt_version
                for item in done
                if item.encrypt_version is not None
            ],
            contexts=[item.context for item in work if item.context],
            compromised_versions=[
                item.decrypt_version
                for item in done
                if item.compromised and item.decrypt_version is not None
            ],
            now=self.service.clock.now(),
        )
        write = LedgerWrite(
            actor=context.actor,
            request_id=context.request_id,
            subjects={str(use.id): f"key:{key.name}"},
            statements=usage_counts.count_statements(use),
        )
        try:
            self.service.app.save(use, ledger=write)
        except PersistenceError as error:
            raise _unavailable(error) from error
        return write.receipts


def _aead(key: ManagedKey, aeads: dict[int, AESGCM | None], version: int) -> AESGCM:
    try:
        aead = aeads[version]
    except KeyError:
        # The version was destroyed after the key was read: its material is gone.
        raise KeyLifecycleError(
            f"Version {version} of {key.name!r} is destroyed.",
            code="VERSION_DESTROYED",
            key=key.name,
            version=version,
        ) from None
    if aead is None:
        raise MaterialUnreadableError(
            f"The material of version {version} of {key.name!r} could not be read.",
            key=key.name,
            version=version,
        )
    return aead


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
