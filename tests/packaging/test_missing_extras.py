"""A missing optional library gives an error that names its extra.

Fast: each case runs in a fresh interpreter of this virtualenv with the
library hidden (``sys.modules[name] = None`` makes its import fail as if it
were not installed). tests/packaging/test_wheel_extras.py checks the same
against real installs of the wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from hessra_pg.errors import HessraError
from hessra_pg.extras import EXTRAS, MissingExtraError, missing_extra, needs_extra

pytestmark = pytest.mark.packaging


def hide(*modules: str) -> str:
    return "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules)


def hiding(modules: tuple[str, ...], code: str) -> str:
    """``code`` run with ``modules`` hidden."""
    return hide(*modules) + textwrap.dedent(code)


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HESSRA_PG_TEST_")}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=environ)


def assert_runs(code: str, **env: str) -> None:
    result = run_python(code, **env)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("module", sorted(EXTRAS))
def test_every_optional_library_maps_to_an_extra(module: str) -> None:
    error = missing_extra(ModuleNotFoundError(f"No module named '{module}.sub'", name=f"{module}.sub"), "feature X")
    assert isinstance(error, MissingExtraError) and isinstance(error, HessraError) and isinstance(error, ImportError)
    assert error.name == module
    assert str(error).startswith("feature X needs ")
    assert str(error).endswith(f"pip install 'hessra-pg[{EXTRAS[module][1]}]'")


def test_other_import_errors_pass_through() -> None:
    assert missing_extra(ModuleNotFoundError("No module named 'nope'", name="nope"), "x") is None
    assert missing_extra(ImportError("cannot import name 'x'"), "x") is None
    with pytest.raises(ModuleNotFoundError, match="nope"):
        with needs_extra("x"):
            import nope  # type: ignore[import-not-found]  # noqa: F401


def test_sqlalchemy_integration_without_sqlalchemy() -> None:
    assert_runs(hiding(("sqlalchemy",), """
        try:
            import hessra_pg.sqlalchemy
        except ImportError as exc:
            assert str(exc) == ("hessra_pg.sqlalchemy needs SQLAlchemy, which is not installed: "
                                "pip install 'hessra-pg[sqlalchemy]'"), exc
        else:
            raise AssertionError("imported")
        import hessra_pg, hessra_pg.psycopg, hessra_pg.context  # the rest is unaffected
    """))


def test_testing_plugin_without_pytest_names_the_extra() -> None:
    assert_runs(hiding(("pytest",), """
        try:
            import hessra_pg.dev.testing
        except ImportError as exc:
            assert "pip install 'hessra-pg[testing]'" in str(exc), exc
        else:
            raise AssertionError("imported")
    """))


def test_testing_plugin_without_testcontainers_uses_the_local_cluster() -> None:
    code = hiding(("testcontainers", "docker"), """
        import os
        from hessra_pg.dev import testing
        from hessra_pg.extras import MissingExtraError
        assert testing._use_docker() is False, "no docker SDK: the local cluster"
        if os.environ.get("HESSRA_PG_TEST_BACKEND") == "docker":
            try:
                testing._start_container()
            except MissingExtraError as exc:
                assert "pip install 'hessra-pg[testing]'" in str(exc), exc
            else:
                raise AssertionError("started")
    """)
    assert_runs(code)
    # Even with an image named, a missing docker SDK means "no Docker".
    assert_runs(code, HESSRA_PG_TEST_IMAGE="hessra-pg:test")
    # Asked for Docker explicitly: one clear error instead.
    assert_runs(code.replace("assert testing._use_docker() is False", "assert testing._use_docker() is True"),
                HESSRA_PG_TEST_BACKEND="docker")


def test_cli_names_the_extra_in_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from hessra_pg import cli
    from hessra_pg.cli.common import guarded

    def needs_pglast(args: argparse.Namespace) -> int:
        import pglast_hidden_for_this_test  # type: ignore[import-not-found]  # noqa: F401

        return 0

    monkeypatch.setitem(EXTRAS, "pglast_hidden_for_this_test", ("pglast", "doctor"))
    real_build = cli.build_parser

    def build_parser() -> argparse.ArgumentParser:
        parser = real_build()
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        subparsers.add_parser("needs-extra").set_defaults(func=needs_pglast)
        subparsers.add_parser("needs-extra-guarded").set_defaults(func=guarded(needs_pglast))
        return parser

    monkeypatch.setattr(cli, "build_parser", build_parser)
    for command in ("needs-extra", "needs-extra-guarded"):
        assert cli.main([command]) == 2
        err = capsys.readouterr().err
        assert err == (f"hessra-pg: error: hessra-pg {command} needs pglast, which is not installed: "
                       "pip install 'hessra-pg[doctor]'\n")
