"""``hessra-pg demo [--authority]``: the demos of hessra_pg.dev (make demo,
make demo-authority) from the command line."""

from __future__ import annotations

import argparse
from typing import Any

from .common import command_parser, guarded

DESCRIPTION = (
    "Start a throwaway PostgreSQL cluster, install the hessra_authz extension and its Python packages into "
    "the local PostgreSQL installation (as `hessra-pg install` does: it needs write access there), and show "
    "tokens enforced by row-level security as an application role: authorization tokens (valid, none, "
    "another subject, expired, another operation, garbage) and capability tokens on a multi-tenant table "
    "under a designation policy.\n\n"
    "With --authority, the flow of Hessra's docs and seeds instead: a local Hessra authority (hessra-pg "
    "authority serve, on loopback, with a fresh CA, certificates, signing key and a policy directory: a "
    "billing service may read orders, a stranger is not listed); `hessra-pg keys sync` registers its public "
    "key in the database; the billing service gets a token over mTLS with Hessra's own client, hessra_py "
    "(plain HTTPS requests when it is not installed) and hands it to PostgreSQL through the SQLAlchemy hook "
    "(the psycopg hook without SQLAlchemy), where RLS shows the rows; the authority refuses the stranger; "
    "billing authenticates with an identity token; the authority rotates its key, and a token of the new key "
    "is denied until keys sync runs again, after which old and new tokens both pass.\n\n"
    "Every count, reason and status printed is checked. Everything the demo starts (the cluster, the "
    "authority) is stopped before it exits, also on an error or Ctrl-C.\n\n"
    "Exit status: 0 when everything was as expected, 1 when something was not (DEMO FAILED: what), "
    "2 when the demo can't run (the install, the cluster or the authority fails: one error line), "
    "130 when interrupted."
)


def register(subparsers: Any) -> None:
    """Add ``demo``."""
    parser = command_parser(
        subparsers, "demo",
        help="run the demo: a throwaway Postgres, tokens and RLS (--authority: with a local Hessra authority)",
        description=DESCRIPTION,
        examples="  hessra-pg demo\n  hessra-pg demo --authority",
    )
    parser.add_argument("--authority", action="store_true",
                        help="the seeds' flow with a local Hessra authority: keys sync, a token over mTLS, "
                             "RLS, a refused stranger, identity tokens, a key rotation")
    parser.set_defaults(func=guarded(_demo))


def _demo(args: argparse.Namespace) -> int:
    if args.authority:
        from hessra_pg.dev.demo_authority import main as authority_demo

        return authority_demo()
    from hessra_pg.dev.demo import main as demo

    return demo()
