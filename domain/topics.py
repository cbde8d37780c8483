"""Every event type this release can read, by the topic stored in the ledger.

A ledger can hold an event type that the running code does not know: one written
by a newer release sharing the database, or one copied from a newer primary. Such
an event must stop whatever would read past it (a rebuild, a start, a replica),
never be skipped, or the read side would quietly leave out what it said.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from eventsourcing.domain import Aggregate, DomainEvent


def _subclasses(base: type[Aggregate]) -> list[type[Aggregate]]:
    found: list[type[Aggregate]] = []
    for sub in base.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


@cache
def known_topics() -> frozenset[str]:
    """The stored topic of every event class of every aggregate in ``domain``.

    Every event that is ever stored declares its ``TOPIC``: the base classes
    without one (``Aggregate.Event``, ``Aggregate.Created``) are never stored.
    """
    package = importlib.import_module("domain")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"domain.{module.name}")
    topics = set()
    for aggregate in _subclasses(Aggregate):
        if not aggregate.__module__.startswith("domain."):
            continue
        for name in dir(aggregate):
            item = getattr(aggregate, name)
            if (
                isinstance(item, type)
                and issubclass(item, DomainEvent)
                and isinstance(topic := getattr(item, "TOPIC", None), str)
            ):
                topics.add(topic)
    return frozenset(topics)


def is_known(topic: str) -> bool:
    """Whether this release can read events stored under ``topic``."""
    return topic in known_topics()
