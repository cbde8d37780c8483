"""``keyledger verify-export``: verify an export archive offline (no database).

This runs ``ledger/offline.py``, the same file every archive carries as
``verifier/offline.py``.
"""

from __future__ import annotations

import argparse

from ledger import offline


def add_arguments(parser: argparse.ArgumentParser) -> None:
    offline.add_arguments(parser)


def main(args: argparse.Namespace) -> int:
    return offline.run(args, prog="keyledger verify-export")
