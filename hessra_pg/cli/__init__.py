"""The ``hessra-pg`` command line.

Subcommands live in small modules listed in :data:`COMMAND_MODULES`; each
exposes ``register(subparsers)``, which adds its parsers and sets
``func=<handler>`` on them. A handler takes the parsed arguments and returns
the exit status. Add a module by appending its name to the list.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import hessra_pg
from hessra_pg.errors import HessraError
from hessra_pg.extras import missing_extra

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

COMMAND_MODULES: list[str] = [
    "hessra_pg.cli.db",
    "hessra_pg.cli.keys",
    "hessra_pg.cli.token",
    "hessra_pg.cli.cap",
    "hessra_pg.cli.identity",
    "hessra_pg.cli.policy",
    "hessra_pg.cli.doctor",
    "hessra_pg.cli.chains",
    "hessra_pg.cli.citus",
    "hessra_pg.cli.authority",
    "hessra_pg.cli.demo",
]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="hessra-pg",
        description="Hessra capability tokens verified inside PostgreSQL.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {hessra_pg.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (errors go to stderr, no traceback)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return int(args.func(args))
    except HessraError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ImportError as exc:
        # A command that needs an optional library: name the extra to install.
        missing = missing_extra(exc, f"hessra-pg {args.command}")
        if missing is None:
            raise
        print(f"{parser.prog}: error: {missing}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        from .common import broken_pipe

        return broken_pipe()
