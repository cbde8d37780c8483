"""The signed event store: the ledger's chain, signatures, recorders and verification.

It needs its own package because every other part (the API, the CLI, the
projections, later the replicas and backups) goes through it, and it is the only
code that writes to storage: it owns the rule that nothing changes unless its
signed, hash-chained event is durably recorded first.
"""
