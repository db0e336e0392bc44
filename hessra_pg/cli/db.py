"""``hessra-pg install`` and ``hessra-pg dev-db start|stop|status``."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from hessra_pg.dev.cluster import LocalCluster
from hessra_pg.admin.install import DEFAULT_SERVER_PYTHON, install

DEFAULT_DEV_DIR = ".hessra-dev"
EXIT_NOT_RUNNING = 3  # as `pg_ctl status`


def register(subparsers: Any) -> None:
    """Add the ``install`` and ``dev-db`` subcommands."""
    p = subparsers.add_parser(
        "install",
        help="install the hessra_authz extension and its server-side Python into PostgreSQL",
        description=(
            "Copy the extension files into PostgreSQL's extension directory, install "
            "biscuit-python and hessra_pg for the Python that PL/Python embeds, and "
            "put them on its sys.path (a hessra_pg.pth file). Needs root for a system "
            "PostgreSQL. Re-run to upgrade; no server restart needed."
        ),
    )
    p.add_argument("--pg-config", metavar="PATH",
                   help="pg_config of the target PostgreSQL (default: $HESSRA_PG_CONFIG, PATH, "
                        "newest /usr/lib/postgresql/*/bin/pg_config)")
    p.add_argument("--extension-dir", type=Path, metavar="DIR",
                   help="where to put the control and SQL files (default: $(pg_config --sharedir)/extension)")
    p.add_argument("--python-target", type=Path, metavar="DIR",
                   help="where to put the server-side packages (default: /usr/local/lib/hessra_pg/python<X.Y>)")
    p.add_argument("--server-python", metavar="PATH",
                   help=f"the Python PL/Python embeds (default: $HESSRA_SERVER_PYTHON or {DEFAULT_SERVER_PYTHON})")
    p.add_argument("--no-pip", action="store_true",
                   help="do not install biscuit-python (the server Python must already import it)")
    p.set_defaults(func=_install)

    dev = subparsers.add_parser(
        "dev-db",
        help="a local PostgreSQL cluster for development",
        description=(
            "Run a private PostgreSQL cluster from this machine's binaries, kept in a "
            "directory (default ./.hessra-dev) and reachable on a unix socket. It keeps "
            "running after the command exits; `dev-db stop` stops it. Run `hessra-pg "
            "install` first to make CREATE EXTENSION hessra_authz available."
        ),
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", type=Path, default=Path(os.environ.get("HESSRA_DEV_DIR", DEFAULT_DEV_DIR)),
                        help="cluster directory (default: $HESSRA_DEV_DIR or ./.hessra-dev)")
    actions = dev.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = actions.add_parser("start", parents=[common], help="start (creating if needed); prints the DSN")
    start.add_argument("--port", type=int, metavar="N",
                       help="also listen on 127.0.0.1:N (0 = a free port); the printed DSN then uses TCP")
    start.set_defaults(func=_dev_start)
    stop = actions.add_parser("stop", parents=[common], help="stop the cluster")
    stop.add_argument("--purge", action="store_true", help="also delete the cluster directory")
    stop.set_defaults(func=_dev_stop)
    status = actions.add_parser("status", parents=[common],
                                help=f"print the DSN if running, else exit {EXIT_NOT_RUNNING}")
    status.set_defaults(func=_dev_status)


def _install(args: argparse.Namespace) -> int:
    report = install(
        pg_config=args.pg_config,
        extension_dir=args.extension_dir,
        python_target=args.python_target,
        server_python=args.server_python,
        pip=not args.no_pip,
    )
    for line in report.lines():
        print(line)
    return 0


def _dev_cluster(args: argparse.Namespace, *, port: int | None = None, keep: bool = True) -> LocalCluster:
    # keep + no atexit stop: the server must outlive this command.
    return LocalCluster(base_dir=args.dir, port=port, keep=keep, stop_at_exit=False)


def _dev_start(args: argparse.Namespace) -> int:
    cluster = _dev_cluster(args, port=args.port)
    if cluster.attach():
        print(f"already running in {cluster.base_dir}", file=sys.stderr)
    else:
        cluster.start()
        print(f"started in {cluster.base_dir} (log: {cluster.log_path})", file=sys.stderr)
    # Only the DSN on stdout, so `export DSN=$(hessra-pg dev-db start)` works.
    print(cluster.dsn(tcp=args.port is not None and cluster.listens_tcp))
    return 0


def _dev_stop(args: argparse.Namespace) -> int:
    cluster = _dev_cluster(args, keep=not args.purge)
    running = cluster.is_running()
    cluster.stop()
    if args.purge:
        # stop() removed data/ and run/; remove the directory only if that
        # left it empty, never files a user put there.
        with contextlib.suppress(OSError):
            cluster.base_dir.rmdir()
    print(("stopped" if running else "not running") + (f"; removed {cluster.base_dir}" if args.purge else ""),
          file=sys.stderr)
    return 0


def _dev_status(args: argparse.Namespace) -> int:
    cluster = _dev_cluster(args)
    if not cluster.attach():
        print(f"not running ({cluster.base_dir})", file=sys.stderr)
        return EXIT_NOT_RUNNING
    print(cluster.dsn())
    return 0

