"""The key lifecycle model: aggregates, their events and the rules that refuse actions.

Warning: event class topics (the ``TOPIC`` strings) are a stored format. They are
signed and hash-chained into the ledger, so they must never be renamed or moved;
change an event's shape with an upcaster, never by editing history.
"""
