"""``keyledger principals``: list, show and create principals; replace their roles.

Whoever can read the service's data folder holds the ledger's keys anyway, so
these commands act on the ledger directly, as ``local-admin``, with the OS user
in the token id field. Every change is an event, exactly as through the API.
A new token is printed once; only its digest is kept.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import uuid
from collections.abc import Callable
from typing import Any

from domain.errors import KeyledgerError
from domain.principals import (
    parse_grant_permissions,
    parse_roles,
    validate_key_pattern,
)
from ledger.access import AccessService
from ledger.service import CommandContext, KeyService
from ledger.store import Actor
from scripts.common import add_ledger_arguments, open_ledger_for

ROLE_HELP = (
    "A role (repeatable): admin, custodian, backup-operator, service, auditor, replica."
)


def cli_context() -> CommandContext:
    """Who a change from the command line is attributed to: the OS user."""
    actor = Actor("local-admin", f"local:{getpass.getuser()}")
    return CommandContext(actor, f"cli_{uuid.uuid4().hex}")


def run_access(
    args: argparse.Namespace, command: str, action: Callable[[AccessService], Any]
) -> int:
    """Run ``action`` on the ledger the options name; print its result as JSON."""
    service: KeyService | None = open_ledger_for(args, command)
    if service is None:
        return 2
    try:
        result = action(AccessService(service.app, service.clock))
    except KeyledgerError as error:
        print(f"keyledger {command}: {error.message} ({error.code})", file=sys.stderr)
        return 1
    finally:
        service.close()
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="Every principal with its roles.")
    show = actions.add_parser("show", help="A principal with its tokens' ids.")
    show.add_argument("name")
    create = actions.add_parser("create", help="Create a principal.")
    create.add_argument("name")
    create.add_argument("--role", action="append", required=True, help=ROLE_HELP)
    create.add_argument("--description", default="")
    grant = actions.add_parser(
        "grant",
        help="Narrow a principal, on matching keys, to some permissions (key:use "
        "needs a grant: a service without one uses no key).",
    )
    grant.add_argument("name")
    grant.add_argument(
        "--keys", required=True, help="A key name, a prefix ending in '*', or '*'."
    )
    grant.add_argument(
        "--permission",
        action="append",
        required=True,
        help="key:read, key:manage, key:use, backup:read, backup:manage or "
        "backup:restore (repeatable).",
    )
    ungrant = actions.add_parser("ungrant", help="Remove a principal's grant.")
    ungrant.add_argument("name")
    ungrant.add_argument("--keys", required=True)
    roles = actions.add_parser("roles", help="Replace a principal's roles.")
    roles.add_argument("name")
    roles.add_argument("--role", action="append", default=[], help=ROLE_HELP)
    for sub in actions.choices.values():
        add_ledger_arguments(sub)


def main(args: argparse.Namespace) -> int:
    def act(access: AccessService) -> Any:
        if args.action == "list":
            return access.list_principals()
        if args.action == "show":
            return access.get_principal(args.name)
        if args.action == "grant":
            principal, _ = access.set_grant(
                cli_context(),
                args.name,
                keys=validate_key_pattern(args.keys),
                permissions=parse_grant_permissions(args.permission),
            )
            return principal
        if args.action == "ungrant":
            principal, _ = access.remove_grant(cli_context(), args.name, keys=args.keys)
            return principal
        if args.action == "create":
            principal, _ = access.create_principal(
                cli_context(),
                name=args.name,
                roles=parse_roles(args.role),
                description=args.description,
            )
            return principal
        principal, _ = access.change_roles(
            cli_context(), args.name, parse_roles(args.role)
        )
        return principal

    return run_access(args, "principals", act)
