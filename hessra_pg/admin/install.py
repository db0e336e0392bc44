"""Install the ``hessra_authz`` extension and its server-side Python into PostgreSQL.

Two things must land for ``CREATE EXTENSION hessra_authz CASCADE`` to work:

1. The extension's control and SQL files, in ``$(pg_config --sharedir)/extension``.
2. ``biscuit_auth`` and ``hessra_pg`` importable by the Python that PL/Python
   embeds (Debian: ``/usr/bin/python3``), which is usually not the Python
   running this code. They go into a private target directory
   (``/usr/local/lib/hessra_pg/python<X.Y>``) that a ``hessra_pg.pth`` file in
   the server interpreter's site-packages puts on ``sys.path``: new backends
   import it with no restart and no environment variables.

Re-running upgrades in place. Backends that already imported ``hessra_pg``
keep the code they loaded; reconnect to pick up a new version.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hessra_pg
from hessra_pg.admin.system import last_line as _last_line, remove_path as _remove
from hessra_pg.errors import HessraError, InstallError

__all__ = [
    "DEFAULT_SERVER_PYTHON",
    "InstallError",
    "InstallReport",
    "extension_source_dir",
    "find_pg_config",
    "install",
]

DEFAULT_SERVER_PYTHON = "/usr/bin/python3"
DEFAULT_TARGET_ROOT = Path("/usr/local/lib/hessra_pg")
BISCUIT_DIST = "biscuit-python"
PTH_NAME = "hessra_pg.pth"
SERVER_OS_USER = "postgres"

# Printed by the server interpreter; one subprocess answers every question.
_PROBE = (
    "import importlib.util, json, site, sys\n"
    "sp = site.getsitepackages() if hasattr(site, 'getsitepackages') else []\n"
    "print(json.dumps({'version': '%d.%d' % sys.version_info[:2],\n"
    "                  'site': sp[0] if sp else None,\n"
    "                  'pip': importlib.util.find_spec('pip') is not None}))\n"
)
_CHECK_IMPORT = "import biscuit_auth, hessra_pg; print(hessra_pg.__file__)"


@dataclass
class InstallReport:
    """What :func:`install` put where."""

    pg_config: str | None
    extension_dir: Path
    extension_files: list[Path]
    server_python: str
    server_python_version: str
    python_target: Path
    hessra_pg_dir: Path
    pth_file: Path
    biscuit_version: str | None
    """The biscuit-python version in the target; None when pip was disabled."""
    pip_ran: bool
    """False when the target already had the wanted biscuit-python (or pip=False)."""
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line."""
        out = [f"extension files -> {self.extension_dir}"]
        out += [f"  {p.name}" for p in self.extension_files]
        if self.biscuit_version is None:
            out.append("biscuit-python: not managed (--no-pip)")
        else:
            how = "installed" if self.pip_ran else "already present"
            out.append(f"biscuit-python {self.biscuit_version}: {how} in {self.python_target}")
        out.append(f"hessra_pg {hessra_pg.__version__} -> {self.hessra_pg_dir}")
        out.append(f"{self.pth_file} -> {self.python_target} "
                   f"(for {self.server_python}, Python {self.server_python_version})")
        out += [f"warning: {w}" for w in self.warnings]
        return out


def install(
    *,
    pg_config: str | None = None,
    extension_dir: Path | None = None,
    python_target: Path | None = None,
    server_python: str | None = None,
    pip: bool = True,
) -> InstallReport:
    """Install the extension files and the server-side Python packages.

    ``pg_config`` defaults to $HESSRA_PG_CONFIG, then ``pg_config`` on PATH,
    then the newest /usr/lib/postgresql/*/bin/pg_config; it is not needed
    when ``extension_dir`` is given alone. ``server_python``
    defaults to $HESSRA_SERVER_PYTHON, then /usr/bin/python3. With
    ``pip=False`` biscuit-python is not installed (it must already be
    importable by the server Python). Raises :class:`InstallError`.
    """
    warnings: list[str] = []
    pg_config_path: str | None = None
    if extension_dir is None or pg_config is not None:
        pg_config_path = find_pg_config(pg_config)
        sharedir, pkglibdir = _pg_config_values(pg_config_path, "--sharedir", "--pkglibdir")
        if extension_dir is None:
            extension_dir = Path(sharedir) / "extension"
    else:
        pkglibdir = None
    assert extension_dir is not None

    server_python = server_python or os.environ.get("HESSRA_SERVER_PYTHON") or DEFAULT_SERVER_PYTHON
    probe = _probe_server_python(server_python)
    version: str = probe["version"]
    if pkglibdir is not None:
        warnings += _check_plpython(Path(pkglibdir), version, server_python)

    files = _install_extension_files(extension_source_dir(), Path(extension_dir))

    target = Path(python_target) if python_target else DEFAULT_TARGET_ROOT / f"python{version}"
    target = Path(os.path.abspath(target))
    _makedirs_readable(target)
    with _locked(target):
        biscuit_version: str | None = None
        pip_ran = False
        if pip:
            biscuit_version = _wanted_biscuit_version()
            if _installed_version(target, BISCUIT_DIST) != biscuit_version:
                _pip_install(server_python, probe, version, f"{BISCUIT_DIST}=={biscuit_version}", target)
                pip_ran = True
        package_dir = _install_package(server_python, target)
        _make_readable(target)
    pth = _write_pth(probe["site"], target, server_python)
    _check_server_import(server_python, package_dir)
    return InstallReport(
        pg_config=pg_config_path,
        extension_dir=Path(extension_dir),
        extension_files=files,
        server_python=server_python,
        server_python_version=version,
        python_target=target,
        hessra_pg_dir=package_dir,
        pth_file=pth,
        biscuit_version=biscuit_version,
        pip_ran=pip_ran,
        warnings=warnings,
    )


# --- pg_config and extension files ---------------------------------------------------


def find_pg_config(pg_config: str | None = None) -> str:
    """Path of pg_config: the argument, $HESSRA_PG_CONFIG, PATH, or the newest Debian one."""
    explicit = pg_config or os.environ.get("HESSRA_PG_CONFIG")
    if explicit:
        found = shutil.which(explicit)
        if found is None:
            raise InstallError(f"pg_config not found or not executable: {explicit}")
        return found
    found = shutil.which("pg_config")
    if found:
        return found
    candidates = [p for p in Path("/usr/lib/postgresql").glob("*/bin/pg_config") if p.parent.parent.name.isdigit()]
    if candidates:
        return str(max(candidates, key=lambda p: int(p.parent.parent.name)))
    raise InstallError(
        "pg_config not found: install the PostgreSQL server packages, "
        "or pass --pg-config PATH (or set HESSRA_PG_CONFIG)"
    )


def _pg_config_values(pg_config: str, *flags: str) -> list[str]:
    # pg_config prints one line per flag, in the order asked.
    result = _run([pg_config, *flags], what=f"{pg_config} {' '.join(flags)}")
    values = result.stdout.splitlines()
    if len(values) != len(flags):
        raise InstallError(f"unexpected output from {pg_config} {' '.join(flags)}: {result.stdout!r}")
    return values


def extension_source_dir() -> Path:
    """The folder holding hessra_authz.control and hessra_authz--*.sql.

    A checkout (or editable install) has it at <repo>/extension; a wheel carries
    the same files as package data in hessra_pg/_extension.
    """
    package = Path(hessra_pg.__file__).parent
    candidates = [package.parent / "extension", package / "_extension"]
    for candidate in candidates:
        if (candidate / "hessra_authz.control").is_file():
            return candidate
    raise InstallError(
        "extension files not found (looked in "
        + ", ".join(str(c) for c in candidates)
        + "): reinstall hessra-pg"
    )


def _install_extension_files(source: Path, dest: Path) -> list[Path]:
    files = sorted([source / "hessra_authz.control", *source.glob("hessra_authz--*.sql")])
    if not any(f.suffix == ".sql" for f in files):
        raise InstallError(f"no hessra_authz--*.sql script in {source}: reinstall hessra-pg")
    if not dest.is_dir():
        raise InstallError(
            f"extension directory {dest} does not exist or is not a directory: "
            "check --pg-config, or pass --extension-dir"
        )
    installed = []
    for src in files:
        final = dest / src.name
        try:
            # Copy then rename: a concurrent CREATE EXTENSION never reads half a file.
            fd, tmp = tempfile.mkstemp(prefix=f".{src.name}.", dir=dest)
            try:
                with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
                    shutil.copyfileobj(inp, out)
                os.chmod(tmp, 0o644)
                os.replace(tmp, final)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except PermissionError:
            raise InstallError(
                f"permission denied writing to {dest}: run as root (sudo hessra-pg install) "
                "or pass --extension-dir to a directory you can write"
            ) from None
        except OSError as exc:
            raise InstallError(f"cannot write {final}: {exc.strerror or exc}") from None
        installed.append(final)
    return installed


def _check_plpython(pkglibdir: Path, version: str, server_python: str) -> list[str]:
    lib = pkglibdir / "plpython3.so"
    if not lib.is_file():
        return [
            f"PL/Python is not installed for this PostgreSQL ({lib} is missing): "
            "install postgresql-plpython3-<major> (scripts/bootstrap.sh does)"
        ]
    # The shared library names the libpython it links against; a mismatch means
    # the packages land in a Python the server never runs.
    match = re.search(rb"libpython(3\.\d+)", lib.read_bytes())
    if match and match.group(1).decode() != version:
        embedded = match.group(1).decode()
        return [
            f"plpython3.so embeds Python {embedded} but {server_python} is Python {version}: "
            f"pass --server-python /usr/bin/python{embedded}"
        ]
    return []


# --- server-side Python ------------------------------------------------------------


def _server_env() -> dict[str, str]:
    # The server never sees this process's PYTHONPATH/PYTHONHOME; neither should
    # the server interpreter when we install for it or check it.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PIP_ROOT_USER_ACTION="ignore")
    return env


def _probe_server_python(server_python: str) -> dict[str, Any]:
    if shutil.which(server_python) is None:
        raise InstallError(
            f"server Python {server_python} not found: pass --server-python "
            "(the interpreter PL/Python embeds, /usr/bin/python3 on Debian)"
        )
    result = _run([server_python, "-I", "-c", _PROBE], what=f"{server_python} (probe)")
    info: dict[str, Any] = json.loads(result.stdout)
    if not info["site"]:
        raise InstallError(f"{server_python} has no site-packages directory for {PTH_NAME}")
    return info


def _wanted_biscuit_version() -> str:
    try:
        return importlib.metadata.version(BISCUIT_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise InstallError(
            f"{BISCUIT_DIST} is not installed in {sys.executable}: "
            "pip install hessra-pg there, or pass --no-pip"
        ) from None


def _installed_version(target: Path, dist: str) -> str | None:
    wanted = _normalize(dist)
    for found in importlib.metadata.distributions(path=[str(target)]):
        if _normalize(found.metadata["Name"] or "") == wanted:
            return found.version
    return None


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pip_install(server_python: str, probe: dict[str, Any], version: str, spec: str, target: Path) -> None:
    if probe["pip"]:
        cmd = [server_python, "-m", "pip", "install"]
    else:
        # The server Python has no pip: let ours fetch a wheel built for it.
        try:
            importlib.metadata.version("pip")
        except importlib.metadata.PackageNotFoundError:
            raise InstallError(
                f"neither {server_python} nor {sys.executable} has pip: "
                "install python3-pip (apt-get install python3-pip)"
            ) from None
        cmd = [sys.executable, "-m", "pip", "install", "--only-binary=:all:",
               "--python-version", version, "--implementation", "cp"]
    # Install into a scratch dir inside the target, then move entries into place,
    # so a failed download never leaves a half-installed biscuit_auth behind.
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=target) as scratch:
        _run([*cmd, "--quiet", "--target", scratch, spec], what=f"pip install {spec} for {server_python}")
        for stale in target.glob(f"{_normalize(BISCUIT_DIST).replace('-', '_')}-*.dist-info"):
            shutil.rmtree(stale)
        for entry in Path(scratch).iterdir():
            dest = target / entry.name
            _remove(dest)
            entry.rename(dest)


#: What a database backend imports: the package root (version, errors), the
#: verifier core, the in-database runtime, and the aliases that installed
#: databases' function bodies name. Nothing else goes into the server.
SERVER_FILES = ("__init__.py", "errors.py", "py.typed", "server.py", "backend.py")
SERVER_PACKAGES = ("core", "plpython")


def _install_package(server_python: str, target: Path) -> Path:
    """Copy the server-side part of hessra_pg (SERVER_FILES, SERVER_PACKAGES)
    into target/hessra_pg; returns that path.

    target/hessra_pg is a symlink to a versioned sibling (.hessra_pg-XXXX): the
    new copy is built and compiled aside, then the link is swapped with one
    atomic rename, so a backend never imports a half-copied package.
    """
    source = Path(hessra_pg.__file__).parent
    link = target / "hessra_pg"
    stage = Path(tempfile.mkdtemp(prefix=".hessra_pg-", dir=target))
    try:
        for name in SERVER_FILES:
            shutil.copy2(source / name, stage / name)
        for name in SERVER_PACKAGES:
            shutil.copytree(source / name, stage / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        # Backends run as postgres and cannot write __pycache__ here: compile
        # now, with the server's interpreter, so imports stay fast.
        _run([server_python, "-I", "-m", "compileall", "-q", "-d", str(link), str(stage)],
             what=f"{server_python} -m compileall")
        _make_readable(stage)
        tmp_link = target / f".hessra_pg.link-{stage.name}"
        os.symlink(stage.name, tmp_link)
        if link.is_dir() and not link.is_symlink():
            # A plain directory (older layout or a manual copy) cannot be
            # replaced by rename; move it aside first.
            link.rename(target / f".hessra_pg-old-{os.getpid()}")
        os.replace(tmp_link, link)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    for old in target.glob(".hessra_pg-*"):
        if old.name != stage.name:
            shutil.rmtree(old, ignore_errors=True)
    return link


def _write_pth(site_dir: str, target: Path, server_python: str) -> Path:
    pth = Path(site_dir) / PTH_NAME
    content = f"{target}\n"
    try:
        if pth.is_file() and pth.read_text() == content:
            return pth
        _makedirs_readable(pth.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{PTH_NAME}.", dir=pth.parent)
        with os.fdopen(fd, "w") as out:
            out.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, pth)
    except PermissionError:
        raise InstallError(
            f"permission denied writing {pth}: run as root (sudo hessra-pg install), "
            f"or pass --server-python for an interpreter whose site-packages you own"
        ) from None
    return pth


def _check_server_import(server_python: str, package_dir: Path) -> None:
    # Import as the OS user the server runs as: that also catches a target
    # (or a parent directory) the postgres user cannot read.
    as_user = None
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError):
            as_user = pwd.getpwnam(SERVER_OS_USER).pw_name
    who = f" as {as_user}" if as_user else ""
    try:
        result = subprocess.run(
            [server_python, "-I", "-c", _CHECK_IMPORT],
            capture_output=True, text=True, env=_server_env(), cwd="/", user=as_user, timeout=120,
        )
    except OSError as exc:
        raise InstallError(
            f"cannot run {server_python}{who} ({exc.strerror or exc}): --server-python must be "
            f"the interpreter PL/Python embeds ({DEFAULT_SERVER_PYTHON} on Debian)"
        ) from None
    except subprocess.TimeoutExpired:
        raise InstallError(f"{server_python}{who} timed out importing hessra_pg") from None
    if result.returncode != 0:
        raise InstallError(
            f"{server_python}{who} cannot import biscuit_auth and hessra_pg after install "
            f"({_last_line(result.stderr)}); make {package_dir.parent} readable by "
            f"{SERVER_OS_USER}, or rerun without --no-pip"
        )
    imported = Path(result.stdout.strip()).parent
    if imported != package_dir:
        raise InstallError(
            f"{server_python} imports hessra_pg from {imported}, which shadows {package_dir}: "
            f"remove that copy (e.g. {server_python} -m pip uninstall hessra-pg)"
        )


# --- small helpers -------------------------------------------------------------------


def _run(cmd: Sequence[str], *, what: str) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(list(cmd), capture_output=True, text=True, env=_server_env(), timeout=900)
    except OSError as exc:
        raise InstallError(f"could not run {what}: {exc.strerror or exc}") from None
    except subprocess.TimeoutExpired:
        raise InstallError(f"{what} timed out") from None
    if result.returncode != 0:
        raise InstallError(f"{what} failed (exit {result.returncode}): {_last_line(result.stderr or result.stdout)}")
    return result



@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    # Two installs at once (parallel test sessions) must not delete each
    # other's freshly staged copies.
    try:
        fd = os.open(target / ".install.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError:
        raise InstallError(
            f"permission denied in {target}: run as root (sudo hessra-pg install) "
            "or pass --python-target to a directory you can write"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _makedirs_readable(path: Path) -> None:
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    try:
        for directory in reversed(missing):
            directory.mkdir()
            # Explicit mode: a root umask of 077 would hide it from postgres.
            os.chmod(directory, 0o755)
    except PermissionError:
        raise InstallError(
            f"permission denied creating {path}: run as root (sudo hessra-pg install) "
            "or pass --python-target to a directory you can write"
        ) from None
    except OSError as exc:
        raise InstallError(f"cannot create {path}: {exc.strerror or exc}") from None
    if not path.is_dir():
        raise InstallError(f"{path} exists and is not a directory: pass another --python-target")


def _make_readable(root: Path) -> None:
    """chmod -R a+rX: the server runs as postgres, not as the installing user."""
    def fix(path: str, is_dir: bool) -> None:
        mode = os.lstat(path).st_mode
        extra = 0o555 if is_dir or mode & 0o111 else 0o444
        if mode & extra != extra:
            os.chmod(path, mode | extra)

    fix(str(root), True)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                fix(full, True)
        for name in filenames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                fix(full, False)
