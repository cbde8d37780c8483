"""``keyledger promote``: turn a stopped replica into the primary of a new epoch.

For a running replica use ``POST /v1/replication/promote`` (admin) instead: it
stops following and starts accepting commands in the same process. Exit status:
0 promoted, 1 refused (nothing recorded; the reason is printed), 2 the ledger
could not be opened.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys

from ledger.replica import PromotionRefusedError, promote, promotion_entry
from ledger.store import Actor
from scripts.common import add_ledger_arguments, open_ledger_for

OPERATOR = Actor(principal="operator-cli", token_id="-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_ledger_arguments(parser)
    parser.add_argument(
        "--force",
        action="store_true",
        help="Promote even when behind the last primary head seen (the possibly "
        "lost positions are recorded in the epoch entry) or halted.",
    )


def main(args: argparse.Namespace) -> int:
    service = open_ledger_for(args, "promote")
    if service is None:
        return 2
    try:
        epoch = promote(
            service,
            OPERATOR,
            f"promote-{secrets.token_hex(8)}",
            force=args.force,
        )
        entry = promotion_entry(service, epoch)
    except PromotionRefusedError as refusal:
        print(
            f"keyledger promote: refused, {refusal.code}: {refusal.message} "
            f"{json.dumps(refusal.details)}",
            file=sys.stderr,
        )
        return 1
    finally:
        service.close()
    lost = (
        f"; positions {epoch.possibly_lost_from}..{epoch.possibly_lost_to} of the "
        "old primary may be lost"
        if epoch.possibly_lost_from is not None
        else ""
    )
    print(
        f"promoted: epoch {epoch.epoch} at position {entry.position} {entry.hash}, "
        f"signed by {epoch.kid}{lost}"
    )
    return 0
