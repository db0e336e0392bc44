"""`hessra-pg demo [--authority]` and `python -m hessra_pg.dev.demo`: help
texts and usage errors (the demos themselves run in
tests/integration/test_demo_authority.py and test_capability_hooks.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hessra_pg.cli import main


def test_demo_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    assert main(["demo", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert out.startswith("usage: hessra-pg demo [-h] [--authority]")
    for words in ("throwaway PostgreSQL cluster", "--authority", "hessra-pg keys sync", "hessra_py",
                  "plain HTTPS requests when it is not installed", "SQLAlchemy hook", "psycopg hook",
                  "refuses the stranger", "identity token", "rotates its key", "stopped before it exits",
                  "Exit status: 0", "130 when interrupted", "hessra-pg demo --authority"):
        assert words in out, words


def test_demo_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--authorty"]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --authorty" in err and "Traceback" not in err


def test_python_m_demo_takes_the_same_arguments() -> None:
    """make demo / make demo-authority run `python -m hessra_pg.dev.demo [--authority]`."""
    done = subprocess.run([sys.executable, "-m", "hessra_pg.dev.demo", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "usage: hessra-pg demo [-h] [--authority]" in done.stdout
    done = subprocess.run([sys.executable, "-m", "hessra_pg.dev.demo", "--bogus"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "unrecognized arguments: --bogus" in done.stderr
