"""Multi-party sign-off (spec §4), domain and prefix restrictions (§5) and the
API-key pattern of the seed guides, through SQL."""

import itertools
import time

from hessra_pg.tokens.identity import jit_identity, mint_identity
from hessra_pg.core.keys import generate_keypair
from hessra_pg.tokens.mint import TokenTime, mint_authorization, restrict_prefix, sign_off
from hessra_pg.core.verifier import ChainNode
from tests.integration.conftest import scalar

VERIFY = "SELECT hessra_authz.verify_token(%s, 'alice', 'payroll', 'approve', %s, %s)"


def test_multi_party_false_until_every_sign_off_in_any_order(admin, root):
    parties = {name: generate_keypair() for name in ("legal", "finance", "security")}
    nodes = [ChainNode(name, str(pair.public_key)) for name, pair in parties.items()]
    token = mint_authorization(root, "alice", "payroll", "approve", multi_party=nodes)
    pk = str(root.public_key)
    assert scalar(admin, VERIFY, (token, None, None)) is False
    assert scalar(admin, "SELECT hessra_authz.explain(%s, 'alice', 'payroll', 'approve')->>'reason'",
                  (token,)) == "missing_signoff"
    for order in itertools.permutations(parties):
        signed = token
        for position, name in enumerate(order):
            signed = sign_off(signed, pk, name, parties[name])
            assert scalar(admin, VERIFY, (signed, None, None)) is (position == len(order) - 1), order
    wrong_key = sign_off(sign_off(sign_off(token, pk, "legal", parties["legal"]), pk, "finance", parties["finance"]),
                         pk, "security", parties["legal"])
    assert scalar(admin, VERIFY, (wrong_key, None, None)) is False
    wrong_namespace = sign_off(sign_off(sign_off(token, pk, "legal", parties["legal"]), pk, "finance",
                                        parties["finance"]), pk, "legal", parties["security"])
    assert scalar(admin, VERIFY, (wrong_namespace, None, None)) is False


def test_domain_and_prefix_context(admin, root):
    prefix_key = generate_keypair()
    token = mint_authorization(root, "alice", "payroll", "approve", domain="example.com",
                               prefix_key=str(prefix_key.public_key))
    restricted = restrict_prefix(token, str(root.public_key), "tenant/1/", prefix_key)
    assert scalar(admin, VERIFY, (restricted, "example.com", "tenant/1/")) is True
    assert scalar(admin, "SELECT hessra_authz.verify_token(%s, 'alice', 'payroll', 'approve', "
                         "domain => 'example.com', prefix => 'tenant/1/')", (restricted,)) is True
    for domain, prefix in (("other.com", "tenant/1/"), (None, "tenant/1/"), ("example.com", None),
                           ("example.com", "tenant/2/"), ("example.com", "tenant/1")):
        assert scalar(admin, VERIFY, (restricted, domain, prefix)) is False, (domain, prefix)
    assert scalar(admin, VERIFY, (token, "example.com", "tenant/1/")) is False  # no prefix attestation
    wrong_signer = restrict_prefix(token, str(root.public_key), "tenant/1/", generate_keypair())
    assert scalar(admin, VERIFY, (wrong_signer, "example.com", "tenant/1/")) is False


def test_api_key_pattern(hessra_db, admin, root, app_role):
    """An identity token as a bearer API key; a JIT copy accepted, then
    refused after its 5 s (minted with an explicit start, no sleeping)."""
    admin.execute("""
        CREATE TABLE public.api_calls (id serial PRIMARY KEY, caller text NOT NULL DEFAULT hessra_authz.current_identity());
        ALTER TABLE public.api_calls ENABLE ROW LEVEL SECURITY;
        ALTER TABLE public.api_calls FORCE ROW LEVEL SECURITY;
        CREATE POLICY api_key ON public.api_calls FOR ALL
            USING ((SELECT hessra_authz.verify_bearer(hessra_authz.current_token())))
            WITH CHECK (caller = (SELECT hessra_authz.current_identity()));
    """)
    admin.execute(f"GRANT SELECT, INSERT ON public.api_calls TO {app_role}; "
                  f"GRANT USAGE ON SEQUENCE public.api_calls_id_seq TO {app_role}")
    api_key = mint_identity(root, "urn:hessra:service:billing", time_config=TokenTime(duration=86400))
    pk = str(root.public_key)
    now = int(time.time())
    fresh_jit = jit_identity(api_key, pk, start=now)
    stale_jit = jit_identity(api_key, pk, start=now - 6)
    with hessra_db.connect(app_role, autocommit=True) as app:
        for key, allowed in ((api_key, True), (fresh_jit, True), (stale_jit, False), ("bogus", False), (None, False)):
            with app.transaction():
                app.execute("SELECT set_config('hessra.token', %s, true)", (key or "",))
                assert scalar(app, "SELECT hessra_authz.verify_bearer(hessra_authz.current_token())") is allowed
                if allowed:
                    app.execute("INSERT INTO public.api_calls DEFAULT VALUES")
                visible = scalar(app, "SELECT count(*) FROM public.api_calls")
                assert (visible > 0) is allowed
        audit = admin.execute("SELECT caller FROM public.api_calls").fetchall()
        assert audit == [("urn:hessra:service:billing",)] * 2
