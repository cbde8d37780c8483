"""``keyledger tokens``: issue a token (printed once) or revoke one.

See ``scripts.principals`` for how these commands act on the ledger.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ledger.access import AccessService
from scripts.common import add_ledger_arguments
from scripts.principals import cli_context, run_access


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    issue = actions.add_parser(
        "issue", help="Issue a token to a principal; it is printed once."
    )
    issue.add_argument("principal")
    issue.add_argument(
        "--expires-in-days",
        type=int,
        default=90,
        help="Days until the token expires (1 to 400; default 90).",
    )
    issue.add_argument("--label", default="", help="What the token is for.")
    revoke = actions.add_parser("revoke", help="Revoke a token by its id.")
    revoke.add_argument("token_id")
    revoke.add_argument("--reason", required=True)
    for sub in (issue, revoke):
        add_ledger_arguments(sub)


def main(args: argparse.Namespace) -> int:
    if args.action == "issue" and not 1 <= args.expires_in_days <= 400:
        print("keyledger tokens: --expires-in-days is 1 to 400", file=sys.stderr)
        return 2

    def act(access: AccessService) -> Any:
        if args.action == "issue":
            issued = access.issue_token(
                cli_context(),
                args.principal,
                expires_in_seconds=args.expires_in_days * 24 * 3600,
                label=args.label,
            )
            return {
                "token": issued.token,
                "token_id": issued.token_id,
                "expires_at": issued.expires_at,
                "note": "Shown once: keyledger keeps only its SHA-256 digest.",
            }
        principal, _ = access.revoke_token(
            cli_context(), args.token_id, reason=args.reason
        )
        return principal

    return run_access(args, "tokens", act)
