"""Backups of keys to places outside the ledger: targets, bundles and the backup key.

This package has its own room because everything in it talks to the world outside
the ledger's database: targets are I/O adapters to directories and S3 buckets, a
bundle is a file meant to outlive the database, and the backup key that opens
bundles lives beside the KEK, never in the database. What happened is still
recorded on the ledger (``domain.backups``), by ``backup.service``.
"""
