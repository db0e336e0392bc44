"""Capability tokens through SQL (extension 0.4.0, spec
hessra-capability-tokens.md §3.4 and §4): every vector case through
verify_capability/explain_capability as an ordinary role, with the anchor set
by an administrator; every rls scenario through capability_rows, the
designation_* helpers and designation_row; the anchor and options as admin
configuration no session can change."""

from __future__ import annotations

import time

import psycopg
import pytest
from psycopg.types.json import Jsonb

from hessra_pg.core.capability import verify_capability
from hessra_pg.core.verifier import RootKey
from tests import vectors
from tests.integration.conftest import scalar

CASES = vectors.capability_expected()["cases"]
SCENARIOS = vectors.capability_expected()["rls"]
#: SQL verifies at the wall clock, the vector cases at their own (mostly
#: 2030-01-01): a case whose answer differs between the two is compared with
#: the Python verifier at the wall clock (one verifier decides both), and the
#: number of such cases is pinned so the comparison can't quietly shrink.
TIME_DEPENDENT_CASES = 6


def _token(name: str) -> str:
    return vectors.capability_tokens()[name]["token"]


def _root_keys() -> tuple[RootKey, ...]:
    return (RootKey(1, vectors.capability_keys()["root"]["public"]),)


@pytest.fixture
def capability_db(admin, app_role):
    admin.execute("SELECT hessra_authz.add_key(%s, 1)", (vectors.capability_keys()["root"]["public"],))
    return admin


def _set_anchor(admin: psycopg.Connection, anchor: str | None) -> None:
    admin.execute("SELECT hessra_authz.set_anchor(%s)", (anchor,))


def _expected_now(case: dict) -> tuple[bool, str]:
    """The case's answer at the wall clock: the Python verifier's (the unit
    suite checks it gives every case's own answer at the case's clock)."""
    decision = verify_capability(
        _token(case["token"]), _root_keys(), now=time.time(), resource=case["resource"],
        operation=case["operation"], designations=[tuple(p) for p in case["designations"]], anchor=case["anchor"],
        subject=case["subject"])
    return decision.valid, decision.reason


def test_every_vector_case_through_sql(hessra_db, capability_db, app_role):
    """verify_capability and explain_capability give each case's `db`
    answer and reason; input errors are ERROR 22023 without the token."""
    checked = {"answers": 0, "errors": 0, "at_wall_clock": 0}
    by_anchor: dict[str | None, list[dict]] = {}
    for case in CASES:
        by_anchor.setdefault(case["anchor"], []).append(case)
    with hessra_db.connect(app_role, autocommit=True) as app:
        for anchor, cases in by_anchor.items():
            _set_anchor(capability_db, anchor)
            for case in cases:
                token = _token(case["token"])
                pairs = [tuple(pair) for pair in case["designations"]]
                labels = [label for label, _ in pairs]
                if case["db"] is None:
                    reason = case["db_reason"].removeprefix("input_error:")
                    if len(set(labels)) < len(labels):
                        # A JSON object can't repeat a label: the policy form
                        # is where a repeat can happen (fixed + row values).
                        (label, first), (_, second) = pairs
                        statement = ("SELECT hessra_authz.designation_row(%s, %s, %s, %s)",
                                     (case["resource"], case["operation"], Jsonb({label: second}),
                                      Jsonb({label: first})))
                        with app.transaction():
                            app.execute("SELECT set_config('hessra.token', %s, true)", (token,))
                            with pytest.raises(psycopg.errors.InvalidParameterValue) as raised:
                                app.execute(*statement)
                    else:
                        with pytest.raises(psycopg.errors.InvalidParameterValue) as raised:
                            app.execute("SELECT hessra_authz.verify_capability(%s, %s, %s, %s, %s)",
                                        (token, case["resource"], case["operation"], Jsonb(dict(pairs)),
                                         case["subject"]))
                    message = str(raised.value)
                    kind, label = reason.split(":")
                    assert f"'{label}'" in message or f'"{label}"' in message, message
                    assert {"duplicate_label": "given twice", "reserved_label": "reserved"}[kind] in message, message
                    assert token not in message and token[:40] not in message
                    checked["errors"] += 1
                    continue
                valid, reason = _expected_now(case)
                checked["at_wall_clock"] += (valid, reason) != (case["db"], case["db_reason"])
                args = (token, case["resource"], case["operation"], Jsonb(dict(pairs)), case["subject"])
                assert scalar(app, "SELECT hessra_authz.verify_capability(%s, %s, %s, %s, %s)", args) is valid, \
                    case["id"]
                explained = scalar(app, "SELECT hessra_authz.explain_capability(%s, %s, %s, %s, %s)", args)
                assert (explained["valid"], explained["reason"]) == (valid, reason), case["id"]
                assert explained["kid"] is None and "administrators only" in explained["detail"]  # not an admin
                checked["answers"] += 1
    assert checked == {"answers": 79, "errors": 4, "at_wall_clock": TIME_DEPENDENT_CASES}


def test_time_dependent_cases_agree_at_their_own_clock():
    """The time-dependent cases are still decided as expected at their own
    clock by the verifier SQL runs (the unit suite checks all of them)."""
    for case in CASES:
        if case["db"] is not None and _expected_now(case) != (case["db"], case["db_reason"]):
            decision = verify_capability(
                _token(case["token"]), _root_keys(), now=case["now"], resource=case["resource"],
                operation=case["operation"], designations=[tuple(p) for p in case["designations"]],
                anchor=case["anchor"], subject=case["subject"])
            assert (decision.valid, decision.reason) == (case["db"], case["db_reason"]), case["id"]


def _in_statement(app: psycopg.Connection, token: str, query: str, params=()) -> object:
    with app.transaction():
        app.execute("SELECT set_config('hessra.token', %s, true)", (token,))
        return scalar(app, query, params)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["id"] for s in SCENARIOS])
def test_rls_scenario_through_sql(hessra_db, capability_db, app_role, scenario):
    """capability_rows gives the scenario's verdict and sets field by field;
    designation_values/_floor/_nulls/_fallback give what a policy needs; each
    sample row's visibility through those equals designation_row's, which
    equals the expected per-row answer."""
    _set_anchor(capability_db, scenario["anchor"])
    token = _token(scenario["token"])
    head = (scenario["resource"], scenario["operation"], scenario["row_labels"])
    fixed = Jsonb(dict(scenario["fixed"]))
    with hessra_db.connect(app_role, autocommit=True) as app:
        result = _in_statement(app, token, "SELECT hessra_authz.capability_rows(%s, %s, %s, %s)", (*head, fixed))
        assert result["statement"] == scenario["statement"]
        assert result["sets"] == scenario["sets"]
        per_label = {}
        for label in scenario["row_labels"]:
            per_label[label] = _in_statement(
                app, token,
                "SELECT ROW(hessra_authz.designation_values(%(r)s, %(o)s, %(l)s, %(label)s, %(f)s),"
                " hessra_authz.designation_floor(%(r)s, %(o)s, %(l)s, %(label)s, %(f)s),"
                " hessra_authz.designation_nulls(%(r)s, %(o)s, %(l)s, %(label)s, %(f)s))",
                {"r": head[0], "o": head[1], "l": head[2], "label": label, "f": fixed})
        fallback = _in_statement(app, token, "SELECT hessra_authz.designation_fallback(%s, %s, %s, %s)",
                                 (*head, fixed))
        assert fallback is (scenario["statement"]["verdict"] == "fallback")
        for row in scenario["rows"]:
            values = row["values"]
            per_row = _in_statement(app, token, "SELECT hessra_authz.designation_row(%s, %s, %s, %s)",
                                    (head[0], head[1], Jsonb(values), fixed))
            assert per_row is row["visible"], (values, row["reason"])
            # What the generated predicate computes from the helpers.
            by_sets = all(
                (value is not None and (value in (accepted or []) or floor is not None and value >= floor))
                or (value is None and nulls is True)
                for label, (accepted, floor, nulls) in ((label, _row(per_label[label])) for label in head[2])
                for value in [values.get(label)])
            assert (by_sets or (fallback and per_row)) is row["visible"], values
            assert not (fallback and by_sets), values  # the sets are empty when rows need verifying


def _row(record: object) -> tuple[list[str] | None, str | None, bool | None]:
    """psycopg returns ROW(...) as a tuple of text; decode it."""
    assert isinstance(record, tuple) and len(record) == 3
    accepted, floor, nulls = record
    if isinstance(accepted, str):  # text[] inside a record arrives as its text form
        accepted = _parse_text_array(accepted)
    return accepted, floor, {"t": True, "f": False, None: None}.get(nulls, nulls)


def _parse_text_array(text: str) -> list[str]:
    import csv

    inner = text[1:-1]
    if not inner:
        return []
    return next(csv.reader([inner], escapechar="\\", doublequote=False))


def test_anchor_is_admin_configuration(hessra_db, capability_db, app_role):
    """The anchor comes from set_anchor only: a session can't supply it as a
    designation, a GUC or a role setting, and changing it reaches open
    connections at their next statement."""
    anchored = _token("anchored")
    query = "SELECT hessra_authz.verify_capability(%s, 'orders', 'read', '{}')"
    with hessra_db.connect(app_role, autocommit=True) as app:
        _set_anchor(capability_db, None)
        assert scalar(app, query, (anchored,)) is False
        _set_anchor(capability_db, "db:main")
        assert scalar(app, query, (anchored,)) is True
        _set_anchor(capability_db, "db:other")
        assert scalar(app, query, (anchored,)) is False
        assert scalar(app, "SELECT hessra_authz.explain_capability(%s, 'orders', 'read')",
                      (anchored,))["reason"] == "anchor_mismatch"
        for setting in ("hessra.anchor", "hessra_authz.anchor", "hessra.capability_anchor"):
            app.execute("SELECT set_config(%s, 'db:main', false)", (setting,))
            assert scalar(app, query, (anchored,)) is False
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            app.execute("SELECT hessra_authz.verify_capability(%s, 'orders', 'read', '{\"anchor\": \"db:main\"}')",
                        (anchored,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("SELECT hessra_authz.set_anchor('db:main')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("UPDATE hessra_authz.capability_settings SET anchor = 'db:main'")
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        capability_db.execute("SELECT hessra_authz.set_anchor('')")
    _set_anchor(capability_db, None)
    assert scalar(capability_db, "SELECT anchor FROM hessra_authz.capability_settings") is None


def test_require_anchor_and_fallback_options(hessra_db, capability_db, app_role):
    plain = _token("plain")
    anchored = _token("anchored")
    query = "SELECT hessra_authz.verify_capability(%s, 'orders', 'read', '{}')"
    _set_anchor(capability_db, "db:main")
    with hessra_db.connect(app_role, autocommit=True) as app:
        assert scalar(app, query, (plain,)) is True
        capability_db.execute("SELECT hessra_authz.set_capability_options(require_anchor => true)")
        assert scalar(app, query, (plain,)) is False
        assert scalar(app, "SELECT hessra_authz.explain_capability(%s, 'orders', 'read')",
                      (plain,))["reason"] == "anchor_required"
        assert scalar(app, query, (anchored,)) is True
        # NULL keeps a setting.
        capability_db.execute("SELECT hessra_authz.set_capability_options(fallback => 'deny')")
        assert capability_db.execute("SELECT require_anchor, fallback FROM hessra_authz.capability_settings").fetchone() == \
            (True, "deny")
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            capability_db.execute("SELECT hessra_authz.set_capability_options(fallback => 'allow')")
        capability_db.execute("SELECT hessra_authz.set_capability_options(false, 'per_row')")
        assert scalar(app, query, (plain,)) is True


def test_fallback_deny_turns_off_per_row_verification(hessra_db, capability_db, app_role):
    scenario = next(s for s in SCENARIOS if s["statement"]["verdict"] == "fallback")
    _set_anchor(capability_db, scenario["anchor"])
    token = _token(scenario["token"])
    query = "SELECT hessra_authz.designation_fallback(%s, %s, %s, %s)"
    params = (scenario["resource"], scenario["operation"], scenario["row_labels"], Jsonb(dict(scenario["fixed"])))
    with hessra_db.connect(app_role, autocommit=True) as app:
        assert _in_statement(app, token, query, params) is True
        capability_db.execute("SELECT hessra_authz.set_capability_options(fallback => 'deny')")
        assert _in_statement(app, token, query, params) is False
        rows = _in_statement(app, token, "SELECT hessra_authz.capability_rows(%s, %s, %s, %s)", params)
        assert rows["statement"]["verdict"] == "fallback"


def test_authorized_and_explain_treat_a_capability_as_a_capability(hessra_db, capability_db, app_role):
    """authorized() with hessra.token set to a capability token supplies the
    anchor; the subject is checked only when hessra.subject is set."""
    _set_anchor(capability_db, "db:main")
    anchored = _token("anchored")
    with hessra_db.connect(app_role, autocommit=True) as app:
        def authorized(token: str, subject: str | None, resource: str = "orders") -> bool:
            with app.transaction():
                app.execute("SELECT set_config('hessra.token', %s, true), set_config('hessra.subject', %s, true)",
                            (token, subject or ""))
                return scalar(app, "SELECT hessra_authz.authorized(%s, 'read')", (resource,))

        assert authorized(anchored, None) is True
        assert authorized(anchored, "alice") is True
        assert authorized(anchored, "mallory") is False
        assert authorized(anchored, None, "invoices") is False
        _set_anchor(capability_db, "db:other")
        assert authorized(anchored, None) is False
        explained = scalar(app, "SELECT hessra_authz.explain(%s, NULL, 'orders', 'read')", (anchored,))
        assert (explained["valid"], explained["reason"]) == (False, "anchor_mismatch")
        designated = _token("designated_tenant")
        # A designated capability needs its labels: authorized() supplies none.
        _set_anchor(capability_db, None)
        assert authorized(designated, None) is False
        assert scalar(app, "SELECT hessra_authz.explain(%s, NULL, 'orders', 'read')",
                      (designated,))["reason"].startswith("designation_")


def test_bad_designation_arguments_are_clear_errors(hessra_db, capability_db, app_role):
    token = _token("designated_tenant")
    with hessra_db.connect(app_role, autocommit=True) as app:
        for bad, words in (("[]", "JSON object"), ('{"tenant": 1}', "must be text"),
                           ('{"facet": "F-1"}', "facet"), ('{"anchor": "db:main"}', "anchor")):
            with pytest.raises(psycopg.errors.InvalidParameterValue) as raised:
                app.execute("SELECT hessra_authz.verify_capability(%s, 'orders', 'read', %s::jsonb)", (token, bad))
            assert words in str(raised.value) and token[:40] not in str(raised.value)
        for labels in ("{}", "{tenant,NULL}"):
            with pytest.raises(psycopg.errors.InvalidParameterValue):
                _in_statement(app, token, "SELECT hessra_authz.capability_rows('orders', 'read', %s::text[])",
                              (labels,))
        with pytest.raises(psycopg.errors.InvalidParameterValue) as raised:
            _in_statement(app, token, "SELECT hessra_authz.designation_values('orders', 'read', '{tenant}', 'region')")
        assert "region" in str(raised.value)
        with pytest.raises(psycopg.errors.InvalidParameterValue):  # a fixed label also a row label
            _in_statement(app, token, "SELECT hessra_authz.capability_rows('orders', 'read', '{tenant}', "
                                      "'{\"tenant\": \"acme\"}')")
        # No token: no rows, no error.
        assert _in_statement(app, "", "SELECT hessra_authz.designation_values('orders', 'read', '{tenant}', "
                                      "'tenant')") == []
        assert scalar(app, "SELECT hessra_authz.verify_capability(NULL, 'orders', 'read', '{}')") is False
        assert scalar(app, "SELECT hessra_authz.verify_capability('garbage', 'orders', 'read', '{}')") is False


def test_a_revoked_capability_is_denied_everywhere(hessra_db, capability_db, app_role):
    scenario = next(s for s in SCENARIOS if s["statement"]["verdict"] == "filter"
                    and any(v["kind"] == "set" for v in s["sets"].values()))
    _set_anchor(capability_db, scenario["anchor"])
    token = _token(scenario["token"])
    params = (scenario["resource"], scenario["operation"], scenario["row_labels"], Jsonb(dict(scenario["fixed"])))
    with hessra_db.connect(app_role, autocommit=True) as app:
        assert _in_statement(app, token, "SELECT hessra_authz.capability_rows(%s, %s, %s, %s)",
                             params)["statement"]["verdict"] == "filter"
        capability_db.execute("SELECT hessra_authz.revoke_token(%s, 'test')", (token,))
        rows = _in_statement(app, token, "SELECT hessra_authz.capability_rows(%s, %s, %s, %s)", params)
        assert rows["statement"] == {"verdict": "none", "reason": "revoked"}
        label = scenario["row_labels"][0]
        assert _in_statement(app, token, "SELECT hessra_authz.designation_values(%s, %s, %s, %s, %s)",
                             (*params[:3], label, params[3])) == []
        assert scalar(app, "SELECT hessra_authz.verify_capability(%s, %s, %s, '{}')",
                      (token, scenario["resource"], scenario["operation"])) is False


def test_capability_values_are_compared_exactly(hessra_db, capability_db, app_role):
    """The §4.2 quote value is one value, not Datalog: it matches only
    itself."""
    evil = vectors.capability_expected()["oracle"]["evil_tenant"]
    token = _token("designated_tenant_quote")
    query = "SELECT hessra_authz.verify_capability(%s, 'orders', 'read', %s)"
    with hessra_db.connect(app_role, autocommit=True) as app:
        assert scalar(app, query, (token, Jsonb({"tenant": evil}))) is True
        assert scalar(app, query, (token, Jsonb({"tenant": "victim"}))) is False
        assert scalar(app, query, (token, Jsonb({"tenant": "x"}))) is False
        assert _in_statement(app, token, "SELECT hessra_authz.designation_values('orders', 'read', '{tenant}', "
                                         "'tenant')") == [evil]


def test_every_revocation_kind_reaches_capability_tokens(hessra_db, capability_db, app_role):
    """spec §5: every block id is looked up (an activation's id kills that
    activation, not the latent token); revoke_identity covers the identity
    a capability grants its right to."""
    _set_anchor(capability_db, "db:main")
    activated = vectors.capability_tokens()["latent_activated"]
    latent = _token("latent")
    explain = "SELECT hessra_authz.explain_capability(%s, 'orders', 'read')"
    with hessra_db.connect(app_role, autocommit=True) as app:
        assert scalar(app, explain, (activated["token"],))["reason"] == "ok"
        assert scalar(app, explain, (latent,))["reason"] == "not_activated"
        capability_db.execute("SELECT hessra_authz.revoke(%s, 'activation')", (activated["revocation_ids"][-1],))
        assert scalar(app, explain, (activated["token"],))["reason"] == "revoked"
        assert scalar(app, explain, (latent,))["reason"] == "not_activated"
        assert scalar(app, explain, (_token("anchored"),))["reason"] == "ok"
        capability_db.execute("SELECT hessra_authz.revoke_identity('alice', 'left')")
        assert scalar(app, explain, (_token("anchored"),))["reason"] == "revoked"
        assert scalar(app, "SELECT hessra_authz.verify_capability(%s, 'orders', 'read', '{\"tenant\": \"acme\"}')",
                      (_token("designated_tenant"),)) is False


def test_three_argument_form_is_the_form_without_designations(hessra_db, capability_db, app_role):
    """verify_capability(token, resource, operation) answers as
    verify_capability(..., '{}') for every vector case without designations
    (Postgres can't give the jsonb argument a default beside the older
    three-argument function: a three-argument call would be ambiguous)."""
    cases = [case for case in CASES if not case["designations"] and case["subject"] is None]
    assert len(cases) > 30
    with hessra_db.connect(app_role, autocommit=True) as app:
        for anchor in (None, "db:main"):
            _set_anchor(capability_db, anchor)
            for case in cases:
                args = (_token(case["token"]), case["resource"], case["operation"])
                three = scalar(app, "SELECT hessra_authz.verify_capability(%s, %s, %s)", args)
                assert three is scalar(app, "SELECT hessra_authz.verify_capability(%s, %s, %s, '{}')", args), \
                    case["id"]
                assert three is scalar(app, "SELECT hessra_authz.verify_capability(%s, %s, %s, '{}', NULL)", args)
