"""Citus mode on a database without Citus (runs everywhere): clear errors,
nothing changed, and doctor adds no Citus check."""

from __future__ import annotations

import psycopg
import pytest

from hessra_pg.admin.citus import CitusModeError, citus_installed, distribute_configuration
from hessra_pg.cli import main
from tests.integration.test_doctor import doctor


def test_enable_without_citus_is_a_clear_error(hessra_db, admin: psycopg.Connection, app_role: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert not citus_installed(admin)
    with pytest.raises(CitusModeError, match="Citus is not installed in this database: run CREATE EXTENSION citus"):
        distribute_configuration(admin)
    assert main(["citus", "enable", "--dsn", hessra_db.dsn]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "hessra-pg: error: Citus is not installed in this database: run CREATE EXTENSION citus (on the "
        "coordinator) first (docs/scale-out.md)"]
    assert main(["citus", "status", "--dsn", hessra_db.dsn]) == 2
    capsys.readouterr()
    _, checks = doctor(capsys, hessra_db.dsn_for(app_role))
    assert "citus" not in checks
