"""``hessra-pg install`` and ``hessra-pg dev-db start|stop|status|destroy``."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from hessra_pg.cli.common import HelpFormatter
from hessra_pg.dev.cluster import MARKER, ClusterAccessError, LocalCluster
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
            "Run a private PostgreSQL cluster from this machine's binaries, kept in a directory "
            "(default ./.hessra-dev, or $HESSRA_DEV_DIR) and reachable on a unix socket inside it, "
            "superuser postgres, trust authentication. It keeps running after the command exits. "
            "`start` prints the DSN on stdout and, on stderr, next steps: the psql command, `hessra-pg "
            "install` then CREATE EXTENSION hessra_authz CASCADE, an ordinary application role "
            "(LOGIN NOSUPERUSER NOBYPASSRLS), and `hessra-pg doctor` as that role.\n\n"
            "Run as root, the server runs as the postgres OS user, which must be able to enter every "
            "parent of the directory: a checkout under /root or a 0700 home can't hold it. `start` "
            "checks this before creating anything and says which parent blocks; pass --dir elsewhere "
            "(e.g. /tmp/hessra-dev) or `chmod o+x` that parent. A failed start leaves nothing behind."
        ),
        epilog=(
            "examples:\n"
            "  export DSN=\"$(hessra-pg dev-db start)\"    # start; next steps on stderr\n"
            "  psql \"$DSN\"\n"
            "  hessra-pg dev-db start --dir /tmp/hessra-dev --port 0   # also on a free TCP port\n"
            "  hessra-pg dev-db status                # the DSN, or exit 3 when not running\n"
            "  hessra-pg dev-db stop                  # stop, keep the data\n"
            "  hessra-pg dev-db destroy               # stop and remove the directory"
        ),
        formatter_class=HelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", type=Path, default=Path(os.environ.get("HESSRA_DEV_DIR", DEFAULT_DEV_DIR)),
                        help="cluster directory (default: $HESSRA_DEV_DIR or ./.hessra-dev)")
    actions = dev.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = actions.add_parser("start", parents=[common],
                               help="start (creating if needed); prints the DSN, and next steps on stderr",
                               description="Start the cluster, creating it if needed. stdout gets only the "
                                           "DSN; stderr says where it lives and what to do next.")
    start.add_argument("--port", type=int, metavar="N",
                       help="also listen on 127.0.0.1:N (0 = a free port); the printed DSN then uses TCP")
    start.add_argument("-q", "--quiet", action="store_true", help="do not print the next steps")
    start.set_defaults(func=_dev_start)
    stop = actions.add_parser("stop", parents=[common], help="stop the cluster (its data is kept)")
    stop.add_argument("--purge", action="store_true", help="also remove the cluster directory (as destroy)")
    stop.set_defaults(func=_dev_stop)
    status = actions.add_parser("status", parents=[common],
                                help=f"print the DSN if running, else exit {EXIT_NOT_RUNNING}")
    status.set_defaults(func=_dev_status)
    destroy = actions.add_parser(
        "destroy", parents=[common], help="stop the cluster if running and remove its directory",
        description="Stop the cluster if it runs and remove its directory. Nothing to do (exit 0) when "
                    "the directory does not exist. Refuses, removing nothing, a directory that does not "
                    f"look like a dev-db cluster (no {MARKER} marker nor data/PG_VERSION, or other files "
                    "than data/, run/ and the marker).")
    destroy.set_defaults(func=_dev_destroy)


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
        try:
            cluster.start()
        except ClusterAccessError as exc:
            raise exc.with_option("--dir") from None
        print(f"started in {cluster.base_dir} (log: {cluster.log_path})", file=sys.stderr)
    tcp = args.port is not None and cluster.listens_tcp
    if not args.quiet:
        print(next_steps(cluster, tcp=tcp, dir_arg=_dir_arg(args)), file=sys.stderr)
    # Only the DSN on stdout, so `export DSN=$(hessra-pg dev-db start)` works.
    print(cluster.dsn(tcp=tcp))
    return 0


def _dev_stop(args: argparse.Namespace) -> int:
    if args.purge:
        return _dev_destroy(args)
    cluster = _dev_cluster(args)
    running = cluster.is_running()
    cluster.stop()
    print("stopped" if running else "not running", file=sys.stderr)
    return 0


def _dev_status(args: argparse.Namespace) -> int:
    cluster = _dev_cluster(args)
    if not cluster.attach():
        print(f"not running ({cluster.base_dir})", file=sys.stderr)
        return EXIT_NOT_RUNNING
    print(cluster.dsn())
    return 0


def _dev_destroy(args: argparse.Namespace) -> int:
    cluster = _dev_cluster(args)
    running = cluster.is_running()
    if cluster.destroy():
        print(("stopped; " if running else "") + f"removed {cluster.base_dir}", file=sys.stderr)
    else:
        print(f"nothing to remove: {cluster.base_dir} does not exist", file=sys.stderr)
    return 0


def _dir_arg(args: argparse.Namespace) -> str:
    """`` --dir X`` for the commands we print, unless X is the default."""
    return "" if args.dir == Path(DEFAULT_DEV_DIR) and "HESSRA_DEV_DIR" not in os.environ else \
        f" --dir {shlex.quote(str(args.dir))}"


def _conninfo(**params: str) -> str:
    """libpq conninfo, quoting only values that need it."""
    def quote(value: str) -> str:
        if value and not any(c in value for c in " '\\"):
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{key}={quote(value)}" for key, value in params.items())


def next_steps(cluster: LocalCluster, *, tcp: bool = False, dir_arg: str = "", app: str = "app") -> str:
    """What to do with a running dev cluster: connect, create the extension, an app role, doctor."""
    host = "127.0.0.1" if tcp else str(cluster.socket_dir)
    port = str(cluster.port)
    psql = "psql" if shutil.which("psql") else str(cluster.bin_dir / "psql")
    q = shlex.quote
    installed = _extension_installed(cluster)
    install_note = ("already done for this PostgreSQL; re-run after changing hessra_pg" if installed else
                    "once per PostgreSQL installation; as root for a system PostgreSQL")
    app_dsn = _conninfo(host=host, port=port, dbname=app, user=app)
    return "\n".join([
        "",
        "Next steps:",
        "  1. Connect as the superuser postgres (no password: trust authentication on a socket",
        "     in a directory only the server's OS user can enter):",
        f"       {psql} -h {q(host)} -p {port} -U postgres -d postgres",
        f"  2. Make CREATE EXTENSION hessra_authz available ({install_note}):",
        "       hessra-pg install",
        "  3. In psql: a database with the extension, and an ordinary application role",
        "     (not superuser, no BYPASSRLS, owns nothing, so row level security applies to it):",
        f"       CREATE DATABASE {app};",
        f"       \\c {app}",
        "       CREATE EXTENSION hessra_authz CASCADE;",
        f"       CREATE ROLE {app} LOGIN NOSUPERUSER NOBYPASSRLS;",
        f"       ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app};",
        "     then a root key (SELECT hessra_authz.add_key(...)), your tables (ENABLE and FORCE ROW",
        "     LEVEL SECURITY) and their policies; the default privileges grant the tables to the role.",
        "  4. Check the database as that role:",
        f"       hessra-pg doctor --dsn {q(app_dsn)}",
        f"  Stop it with `hessra-pg dev-db stop{dir_arg}` (data kept); remove it with "
        f"`hessra-pg dev-db destroy{dir_arg}`.",
    ])


def _extension_installed(cluster: LocalCluster) -> bool:
    pg_config = cluster.bin_dir / "pg_config"
    try:
        out = subprocess.run([str(pg_config), "--sharedir"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and (Path(out.stdout.strip()) / "extension" / "hessra_authz.control").is_file()
