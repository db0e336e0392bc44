#!/usr/bin/env bash
# Prepare this machine and checkout for tests, the demo and benchmarks.
#
# Idempotent and fast when already done (a few file checks):
#   1. PL/Python for the local PostgreSQL (postgresql-plpython3-NN, pinned to
#      the installed server version so apt never upgrades or starts a cluster),
#      pip for the server's /usr/bin/python3 (hessra-pg install uses it) and
#      pgbouncer (the tests start their own on loopback; the system service is
#      never started and is disabled at boot).
#   2. .venv with this project installed editable, re-installed only when
#      pyproject.toml changed since the last install.
#
# Environment: HESSRA_PG_MAJOR (default 15), PYTHON (default python3).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PG_MAJOR="${HESSRA_PG_MAJOR:-15}"
PYTHON="${PYTHON:-python3}"
SERVER_PYTHON=/usr/bin/python3
VENV=.venv
STAMP="$VENV/.hessra-bootstrap-stamp"

say() { printf 'bootstrap: %s\n' "$*"; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }

# Root-only steps go through sudo when we are not root and sudo exists.
SUDO=()
need_root() {
    if [ "$(id -u)" -eq 0 ]; then
        return 0
    fi
    command -v sudo >/dev/null 2>&1 \
        || die "need root to install system packages ($*); run as root or install sudo"
    SUDO=(sudo)
}

# --- 1. System packages -------------------------------------------------------
apt_packages=()
if [ ! -e "/usr/lib/postgresql/$PG_MAJOR/lib/plpython3.so" ]; then
    pg_version="$(dpkg-query -W -f='${Version}' "postgresql-$PG_MAJOR" 2>/dev/null || true)"
    [ -n "$pg_version" ] \
        || die "postgresql-$PG_MAJOR is not installed as a Debian package; install it first"
    # Pin to the installed server version: Debian's plpython package depends on
    # postgresql-NN (= its own version), so the pin also keeps apt from
    # upgrading (and restarting) the server.
    apt_packages+=("postgresql-plpython3-$PG_MAJOR=$pg_version")
fi
# find_spec is much faster than `python3 -m pip --version` on every run.
if [ -x "$SERVER_PYTHON" ] \
    && ! "$SERVER_PYTHON" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("pip") is None)'; then
    apt_packages+=(python3-pip)
fi

# The interop tests make a throwaway CA certificate that hessra_py insists on.
command -v openssl >/dev/null 2>&1 || apt_packages+=(openssl)

# The binary only: tests run their own pgbouncer with a generated ini.
installing_pgbouncer=0
if [ ! -x /usr/sbin/pgbouncer ]; then
    apt_packages+=(pgbouncer)
    installing_pgbouncer=1
fi

if [ ${#apt_packages[@]} -gt 0 ]; then
    need_root "${apt_packages[*]}"
    say "installing ${apt_packages[*]}"
    # A policy-rc.d that exits 101 forbids package scripts from starting
    # services, so installing never starts a system cluster. Respect an
    # existing one; remove ours on exit, even after a failure.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
        trap '"${SUDO[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    "${SUDO[@]}" apt-get update -q
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${apt_packages[@]}"
    [ -e "/usr/lib/postgresql/$PG_MAJOR/lib/plpython3.so" ] \
        || die "plpython3.so still missing after installing postgresql-plpython3-$PG_MAJOR"
    if [ "$installing_pgbouncer" = 1 ]; then
        [ -x /usr/sbin/pgbouncer ] || die "pgbouncer still missing after installing it"
        # The package enables its service for the next boot: we want only the
        # binary, so disable it (best effort: tools differ between init systems).
        "${SUDO[@]}" sh -c 'deb-systemd-helper disable pgbouncer.service; update-rc.d pgbouncer disable' \
            >/dev/null 2>&1 || true
        # An existing policy-rc.d of someone else's may have let it start: the
        # service we just installed must not be left running.
        pidfile=/run/postgresql/pgbouncer.pid
        if [ -s "$pidfile" ]; then
            pid="$(cat "$pidfile")"
            if [ -n "$pid" ] && "${SUDO[@]}" kill -0 "$pid" 2>/dev/null; then
                say "stopping the system pgbouncer service (pid $pid) started by its package"
                "${SUDO[@]}" kill "$pid" || true
            fi
        fi
    fi
else
    say "system packages: ok (plpython3 for PostgreSQL $PG_MAJOR, pip for $SERVER_PYTHON, pgbouncer)"
fi

# --- 2. Project virtualenv -------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi

want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want" != "$have" ]; then
    say "installing the project into $VENV (pyproject.toml changed)"
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    printf '%s\n' "$want" > "$STAMP"
else
    say "$VENV: up to date"
fi
