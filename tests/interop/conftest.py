"""hessra_py 0.2.1 (Hessra's Rust SDK, PyO3) as an independent oracle.

Fixtures:

- ``server_ca_pem`` (session): a throwaway self-signed certificate made with
  ``openssl``. hessra_py's builder insists on a server CA even for local-only
  use (spec §8.4); nothing ever connects anywhere.
- ``hessra_client``: ``hessra_client(root_public, personal=None)`` builds a
  local-only ``HessraClient``. ``root_public`` is the key that signs the
  tokens (PEM, ``alg/hex`` or a PublicKey), ``personal`` the node/identity key
  pair hessra_py signs with (a biscuit KeyPair or a PKCS#8 PEM).
- ``cross_check``: records one row of the hessra_pg-versus-hessra_py matrix
  and asserts it (see :class:`CrossCheck`). The rows recorded in a run are
  printed at the end of the terminal report and must match the table in
  docs/interop.md.

The SQL fixtures (``hessra_db``, ``admin``, ``root`` ...) are the integration
ones, imported below.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import biscuit_auth
import hessra_py
import pytest

from hessra_pg.core.keys import private_key_pem, public_key_pem
from tests.integration.conftest import admin, app_role, root, vector_key  # noqa: F401

T, F = "T", "F"
#: hessra_py has no API for this (bearer identity verification).
NA = "n/a"
#: A configuration error (unknown service-chain component): hessra_pg raises
#: ConfigurationError, hessra_py raises ServiceChainFailed/ComponentNotFound.
ERROR = "error"


@dataclass(frozen=True)
class Row:
    section: str
    case: str
    pg: str
    hp: str
    expected: str | tuple[str, str]

    @property
    def expected_pg(self) -> str:
        return self.expected if isinstance(self.expected, str) else self.expected[0]

    @property
    def expected_hp(self) -> str:
        return self.expected if isinstance(self.expected, str) else self.expected[1]

    @property
    def ok(self) -> bool:
        return self.pg == self.expected_pg and self.hp == self.expected_hp

    def expected_text(self) -> str:
        if isinstance(self.expected, str):
            return self.expected
        return f"pg {self.expected[0]} / hp {self.expected[1]}"

    def cells(self) -> tuple[str, str, str, str, str]:
        return (self.section, self.case, self.pg, self.hp, self.expected_text())

    def markdown(self) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in self.cells()) + " |"


#: Every row recorded in this session, in order (tests run in file order).
MATRIX: list[Row] = []
#: The test functions that recorded at least one row (by name).
RECORDED_BY: set[str] = set()
HEADER = ("section", "case", "hessra_pg", "hessra_py", "expected")


class CrossCheck:
    """``cross_check(section, case, pg=..., hp=..., expected=...)``.

    ``pg`` and ``hp`` are results: a bool (True -> "T") or one of the
    strings NA / ERROR / "made" / "refused". ``expected`` is one value both
    libraries must give, or a ``(pg, hp)`` pair where they differ by design
    (a documented gap of hessra_py 0.2.1, spec §8.4, §6.2, §1.3). The row is
    recorded first, then asserted, so a failing run still prints it.
    """

    def __init__(self, test_name: str) -> None:
        self.test_name = test_name

    def __call__(self, section: str, case: str, *, pg: Any, hp: Any, expected: Any) -> Row:
        if isinstance(expected, tuple):
            pair = (_cell(expected[0]), _cell(expected[1]))
            expected = pair[0] if pair[0] == pair[1] else pair
        else:
            expected = _cell(expected)
        row = Row(section, case, _cell(pg), _cell(hp), expected)
        MATRIX.append(row)
        RECORDED_BY.add(self.test_name)
        assert row.ok, (
            f"[{section}] {case}: hessra_pg={row.pg} hessra_py={row.hp}, expected {row.expected_text()}"
        )
        return row


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return T if value else F
    if isinstance(value, str):
        return value
    raise TypeError(f"matrix cell must be a bool or a string, got {value!r}")


@pytest.fixture
def cross_check(request: pytest.FixtureRequest) -> CrossCheck:
    return CrossCheck(request.node.originalname)


def render_table(rows: list[Row]) -> list[str]:
    """Plain-text table for the terminal."""
    cells = [HEADER, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADER))]
    out = []
    for index, line in enumerate(cells):
        out.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
        if index == 0:
            out.append("  ".join("-" * width for width in widths))
    return out


def summary(rows: list[Row]) -> str:
    agree = sum(1 for row in rows if row.pg == row.hp)
    by_design = sum(1 for row in rows if row.pg != row.hp and row.ok)
    unexpected = sum(1 for row in rows if not row.ok)
    return (f"{len(rows)} cross-checks: {agree} with the same result in both libraries, "
            f"{by_design} different by design (documented hessra_py 0.2.1 gaps), {unexpected} unexpected")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not MATRIX:
        return
    terminalreporter.write_sep("=", "hessra_pg vs hessra_py 0.2.1 cross-check matrix")
    for line in render_table(MATRIX):
        terminalreporter.write_line(line)
    terminalreporter.write_line(summary(MATRIX))


# -- hessra_py clients ------------------------------------------------------

@pytest.fixture(scope="session")
def server_ca_pem(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real (throwaway) certificate PEM: hessra_py parses the server CA."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make a throwaway server CA for hessra_py (scripts/bootstrap.sh installs it)")
    result = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(tmp_path_factory.mktemp("ca") / "ca.key"), "-subj", "/CN=test", "-days", "1"],
        capture_output=True, text=True, check=True,
    )
    assert "-----BEGIN CERTIFICATE-----" in result.stdout
    return result.stdout


HessraClientFactory = Callable[..., Any]


@pytest.fixture(scope="session")
def hessra_client(server_ca_pem: str) -> HessraClientFactory:
    def make(root_public: Any, personal: biscuit_auth.KeyPair | str | None = None) -> Any:
        if isinstance(root_public, biscuit_auth.KeyPair):
            root_public = root_public.public_key
        pem = public_key_pem(root_public)
        builder = hessra_py.HessraClient.builder().base_url("localhost").server_ca(server_ca_pem).public_key(pem)
        if personal is not None:
            builder = builder.personal_keypair(personal if isinstance(personal, str) else private_key_pem(personal))
        return builder.build()

    return make


#: hessra_py 0.2.1 keeps Biscuit's default 1 ms run limit, so on a loaded
#: machine it sometimes denies a valid token. A denial is asked again: one
#: acceptance is the true answer (hessra_py never accepts by accident), a
#: denial every time is a real one.
HP_LIMIT_RETRIES = 5


def hp(call: Callable[..., Any], *args: Any) -> bool:
    """A hessra_py verify call as a bool: returns None (T) or raises HessraPyException (F)."""
    for attempt in range(HP_LIMIT_RETRIES):
        try:
            result = call(*args)
        except hessra_py.HessraPyException:
            if attempt + 1 < HP_LIMIT_RETRIES:
                continue
            return False
        assert result is None, f"hessra_py verify returned {result!r}"
        return True
    return False
