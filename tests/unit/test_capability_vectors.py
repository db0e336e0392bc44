"""Capability verification and row sets against every vector of
../shared/vectors/capability (spec hessra-capability-tokens.md §3.4, §4):
the `db` column and reason of each case, the sets and verdict of each `rls`
scenario field by field, and per-row verification of its sample rows."""

import pytest

from hessra_pg.core.capability import RowSets, row_admits, row_sets, verify_capability
from hessra_pg.core.verifier import RootKey
from hessra_pg.errors import ArgumentError
from tests import vectors

CASES = vectors.capability_expected()["cases"]
SCENARIOS = vectors.capability_expected()["rls"]


def root_keys() -> tuple[RootKey, ...]:
    return (RootKey(1, vectors.capability_keys()["root"]["public"]),)


def token(name: str) -> str:
    return vectors.capability_tokens()[name]["token"]


def test_every_vector_is_read():
    assert len(CASES) == 83 and len(SCENARIOS) == 17


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_case(case):
    run = lambda: verify_capability(  # noqa: E731
        token(case["token"]), root_keys(), now=case["now"], resource=case["resource"], operation=case["operation"],
        designations=[tuple(pair) for pair in case["designations"]], anchor=case["anchor"], subject=case["subject"])
    if case["db"] is None:
        assert case["db_reason"].startswith("input_error:")
        with pytest.raises(ArgumentError):
            run()
        return
    decision = run()
    assert (decision.valid, decision.reason) == (case["db"], case["db_reason"])


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[scenario["id"] for scenario in SCENARIOS])
def test_rls_scenario(scenario):
    common = dict(now=scenario["now"], resource=scenario["resource"], operation=scenario["operation"],
                  anchor=scenario["anchor"])
    fixed = [tuple(pair) for pair in scenario["fixed"]]
    sets = row_sets(token(scenario["token"]), root_keys(), row_labels=scenario["row_labels"], fixed=fixed, **common)
    assert isinstance(sets, RowSets)
    result = sets.as_dict()
    assert result["statement"] == scenario["statement"]
    assert result["sets"] == scenario["sets"]
    for row in scenario["rows"]:
        values = row["values"]
        per_row = verify_capability(
            token(scenario["token"]), root_keys(), designations=[*fixed, *values.items()], **common)
        assert per_row.valid is row["visible"], (values, per_row.reason, row["reason"])
        assert per_row.reason == row["reason"]
        if sets.verdict != "fallback":
            assert row_admits(sets, values) is row["visible"], values
