"""Test configuration shared by unit and integration tests.

The PostgreSQL fixtures (``hessra_postgres``, ``hessra_db``) come from the
package's own pytest plugin, the same one users enable.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["hessra_pg.dev.testing"]

_INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Everything under tests/integration needs a server: `-m "not integration"`
    # runs the unit tests alone.
    for item in items:
        if _INTEGRATION in item.path.parents:
            item.add_marker(pytest.mark.integration)
