"""Waiting for the ledger's head in the event loop, not in a worker thread.

Long-polls of the feed (``GET /v1/events?wait=``) and replica reads sent with
``Min-Position`` wait here. A waiter is an asyncio future; one watcher thread
per ledger follows the head for all of them (it wakes on each append of this
process and re-reads the head at least once a second for appends of others),
so a thousand open long-polls hold no worker thread of the threadpool that
serves every other request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from ledger.store import LedgerRecorder

logger = logging.getLogger(__name__)

MAX_WAITERS = 1000
MAX_WAITERS_PER_PRINCIPAL = 100

Outcome = Literal["reached", "timeout", "busy"]


@dataclass(eq=False)
class _Waiter:
    position: int
    principal: str
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    woken: bool = field(default=False)

    def wake(self) -> None:
        # RuntimeError: the loop closed, nobody waits any more
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class HeadWatch:
    """Waiters for positions of one ledger, woken by one watcher thread.

    At most ``max_waiters`` wait at once, and at most ``max_per_principal`` for
    one principal; a wait beyond either is refused at once (``"busy"``) and the
    caller answers with what it has, so open long-polls cannot starve anyone.
    """

    def __init__(
        self,
        ledger: LedgerRecorder,
        *,
        recheck: float = 1.0,
        max_waiters: int = MAX_WAITERS,
        max_per_principal: int = MAX_WAITERS_PER_PRINCIPAL,
    ) -> None:
        self._ledger = ledger
        self.recheck = recheck
        self.max_waiters = max_waiters
        self.max_per_principal = max_per_principal
        self._lock = threading.Lock()
        self._waiters: set[_Waiter] = set()
        self._counts: Counter[str] = Counter()
        self._head: int | None = None  # as the running watcher last read it
        self._watching = False

    @property
    def waiting(self) -> int:
        """How many requests wait now."""
        with self._lock:
            return len(self._waiters)

    async def wait_for(
        self, position: int, timeout: float, *, principal: str
    ) -> Outcome:
        """Wait until the head reaches ``position``, at most ``timeout`` seconds.

        Returns ``"reached"``, ``"timeout"``, or ``"busy"`` when the wait was
        refused for the caps (it returns at once; the caller MUST answer with
        what it holds rather than retry in a loop).
        """
        if timeout <= 0:
            return "timeout"
        loop = asyncio.get_running_loop()
        waiter = _Waiter(position, principal, loop, loop.create_future())
        with self._lock:
            if self._head is not None and self._head >= position:
                return "reached"
            if (
                len(self._waiters) >= self.max_waiters
                or self._counts[principal] >= self.max_per_principal
            ):
                return "busy"
            self._waiters.add(waiter)
            self._counts[principal] += 1
            if not self._watching:
                self._watching = True
                threading.Thread(
                    target=self._watch, name="head-watch", daemon=True
                ).start()
        try:
            await asyncio.wait_for(waiter.future, timeout)
        except TimeoutError:
            return "timeout"
        finally:
            with self._lock:
                self._waiters.discard(waiter)
                self._counts[principal] -= 1
                if self._counts[principal] <= 0:
                    del self._counts[principal]
        return "reached"

    def _watch(self) -> None:
        """Follow the head while anyone waits; wake those whose position it reached."""
        head: int | None = None
        try:
            while True:
                try:
                    if head is None:
                        current = self._ledger.head().position
                    else:
                        current = self._ledger.wait_for_position(
                            head + 1, self.recheck
                        ).position
                except Exception as error:  # the store is away: waiters time out
                    with self._lock:
                        if not self._waiters:
                            self._watching, self._head = False, None
                            return
                    logger.warning("head_watch_failed", extra={"error": str(error)})
                    time.sleep(self.recheck)
                    continue
                head = current
                with self._lock:
                    if not self._waiters:
                        self._watching, self._head = False, None
                        return
                    self._head = head
                    ready = [
                        waiter
                        for waiter in self._waiters
                        if waiter.position <= head and not waiter.woken
                    ]
                    for waiter in ready:
                        waiter.woken = True
                for waiter in ready:
                    waiter.wake()
        except BaseException:
            with self._lock:
                self._watching, self._head = False, None
            raise


_watches: weakref.WeakKeyDictionary[LedgerRecorder, HeadWatch] = (
    weakref.WeakKeyDictionary()
)
_watches_lock = threading.Lock()


def head_watch(ledger: LedgerRecorder) -> HeadWatch:
    """The one watch of ``ledger``, made on first use."""
    with _watches_lock:
        watch = _watches.get(ledger)
        if watch is None:
            watch = _watches[ledger] = HeadWatch(ledger)
        return watch
