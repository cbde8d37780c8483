"""Read models built from the ledger: each module answers one question about keys.

Projections are written in the same transaction as the events they reflect, and
can be rebuilt from the events alone with identical results.
"""
