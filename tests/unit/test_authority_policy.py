"""hessra_pg.authority.policy: a policy directory read into clients, grants,
roles and resources, and the matching rules: SAN identifiers and their
wildcards, certificate SAN order, identities and their ancestors, domain
roles (assignment, default role, none), grants without operations."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hessra_pg.authority.policy import Grant, Identifier, Resource, find_grant, load_policy, normalize_name
from hessra_pg.core.keys import generate_keypair
from hessra_pg.repository.checker import RepositoryProblemsError
from hessra_pg.errors import RepositoryReadError

NODE = str(generate_keypair().public_key)
PARTY = str(generate_keypair().public_key)

RESOURCES = f"""\
[resources.orders]
operations = ["read", "write"]

[resources.reports]

[resources.shipping]
type = "service_chain"
nodes = [{{ component = "gateway", public_key = "{NODE}" }}]

[resources.payouts]
mechanisms = ["multi_party"]
[resources.payouts.multi_party]
nodes = [{{ component = "treasury", public_key = "{PARTY}", authorization_service = "treasury:9443" }},
         {{ component = "audit", public_key = "{NODE}" }}]

[resources.invoices]
mechanisms = ["capability"]
anchor = "db:main"
"""

CLIENTS = """\
[[clients]]
identifier = { type = "san_uri", value = "urn:example:api-gateway" }
identity_token_enabled = true
resources = [{ name = "orders", operations = ["read", "write"] }, "reports"]

[[clients]]
identifier = [{ type = "san_dns", value = "worker-*.internal.com" },
              { type = "san_uri", value = "urn:example:workers:*" }]
resources = [{ name = "invoices", operations = ["read"], designations = { tenant_id = "acme", region = "eu" } }]

[[clients]]
name = "portal"
identifier = { type = "san_uri", value = "urn:example:portal" }
identity_token_enabled = true
permissions = [{ resource = "orders", operations = ["read"] }]

[clients.domain.default_role]
name = "member"
resources = [{ name = "reports", operations = ["read"] }]

[[clients.domain.roles]]
name = "admin"
resources = [{ name = "orders", operations = ["read", "write"] }]

[[clients.domain.role_assignments]]
identity = "urn:example:portal:alice"
role = "admin"

[[clients.domain.role_assignments]]
identities = ["urn:example:portal:ops-*"]
role = "admin"

[clients_note]
text = "not a client"

[[clients]]
name = "legacy"
resources = ["orders"]
"""


@pytest.fixture
def policy(tmp_path: Path):
    (tmp_path / "resources.toml").write_text(RESOURCES)
    (tmp_path / "clients.toml").write_text(CLIENTS)
    return load_policy(tmp_path)


def test_normalize_name() -> None:
    assert normalize_name("san_uri", "URI:urn:test:argo-cli1") == "uri:urn:test:argo-cli1"
    assert normalize_name("san_uri", "urn:Example:X") == "urn:Example:X"  # only the scheme
    assert normalize_name("san_uri", "no-scheme") == "no-scheme"
    assert normalize_name("san_dns", "Worker-1.Internal.COM.") == "worker-1.internal.com"


@pytest.mark.parametrize("kind, pattern, name, expected", [
    ("san_uri", "urn:example:api", "urn:example:api", True),
    ("san_uri", "urn:example:api", "urn:example:api:sub", False),
    ("san_uri", "urn:example:api", "URN:example:api", True),          # scheme case
    ("san_uri", "urn:example:api", "urn:Example:api", False),         # the rest is exact
    ("san_uri", "urn:example:*", "urn:example:a", True),
    ("san_uri", "urn:example:*", "urn:example:a:b", False),           # one segment
    ("san_uri", "urn:example:*", "urn:example:", False),              # one or more characters
    ("san_uri", "urn:*:api", "urn:x:api", True),
    ("san_uri", "urn:example:w-*", "urn:example:w-1", True),
    ("san_uri", "urn:example.*", "urn:example.x", True),              # '.' is literal in URIs
    ("san_uri", "urn:example.*", "urn:exampleXx", False),
    ("san_dns", "worker-*.internal.com", "worker-7.internal.com", True),
    ("san_dns", "worker-*.internal.com", "WORKER-7.Internal.com", True),
    ("san_dns", "worker-*.internal.com", "worker-7.eu.internal.com", False),
    ("san_dns", "worker-*.internal.com", "worker-.internal.com", False),
    ("san_dns", "*.internal.com", "a.internal.com", True),
    ("san_dns", "*.internal.com", "internal.com", False),
    ("san_dns", "api.internal.com", "api.internal.com", True),
    ("san_dns", "api.internal.com", "apixinternal.com", False),       # '.' is literal
])
def test_identifier_wildcards(kind: str, pattern: str, name: str, expected: bool) -> None:
    assert Identifier(kind, pattern).matches(kind, name) is expected
    other = "san_dns" if kind == "san_uri" else "san_uri"
    assert Identifier(kind, pattern).matches(other, name) is False      # types never cross


def test_loaded_resources(policy) -> None:
    assert policy.resources["orders"].operations == frozenset({"read", "write"})
    assert policy.resources["reports"] == Resource("reports")
    assert [(n.component, n.public_key) for n in policy.resources["shipping"].chain] == [("gateway", NODE)]
    parties = policy.resources["payouts"].parties
    assert [(p.component, p.public_key, p.authorization_service) for p in parties] == [
        ("treasury", PARTY, "treasury:9443"), ("audit", NODE, None)]
    invoices = policy.resources["invoices"]
    assert invoices.capability and invoices.anchor == "db:main" and not invoices.chain
    assert policy.cacerts is None
    assert policy.unnamed == ("legacy",)


def test_certificate_matching_follows_the_certificate_san_order(policy) -> None:
    client, identity = policy.match_certificate([("URI", "urn:example:api-gateway")])
    assert client.name == "urn:example:api-gateway" and identity == "urn:example:api-gateway"
    # DNS wildcard; the identity is the certificate's own name, normalized
    client, identity = policy.match_certificate([("DNS", "Worker-3.internal.com")])
    assert client.name == "worker-*.internal.com" and identity == "worker-3.internal.com"
    # The first SAN that names a client decides, whatever its type.
    client, identity = policy.match_certificate([("email", "x@y"), ("DNS", "unknown.example"),
                                                 ("URI", "urn:example:workers:9"), ("URI", "urn:example:portal")])
    assert client.name == "worker-*.internal.com" and identity == "urn:example:workers:9"
    client, identity = policy.match_certificate([("URI", "urn:example:portal"), ("URI", "urn:example:workers:9")])
    assert client.name == "portal"
    assert policy.match_certificate([("URI", "urn:example:portal:alice")]) is None  # a member is no client
    assert policy.match_certificate([("DNS", "worker-1.internal.com.evil")]) is None
    assert policy.match_certificate([]) is None


def test_identities_act_as_their_nearest_named_ancestor(policy) -> None:
    assert policy.client_for_identity("urn:example:api-gateway").name == "urn:example:api-gateway"
    assert policy.client_for_identity("urn:example:api-gateway:agent:7").name == "urn:example:api-gateway"
    assert policy.client_for_identity("urn:example:workers:3:job").name == "worker-*.internal.com"
    assert policy.client_for_identity("urn:example:api") is None
    assert policy.client_for_identity("urn:example") is None


def test_domain_roles(policy) -> None:
    portal = policy.realm("urn:example:portal")
    assert portal is not None and portal.name == "portal" and portal.identity_tokens
    domain = portal.domain
    assert domain.is_member("urn:example:portal:bob") and not domain.is_member("urn:example:portal")
    assert not domain.is_member("urn:example:portalx:bob")
    assert domain.role_for("urn:example:portal:alice").name == "admin"        # assigned
    assert domain.role_for("urn:example:portal:ops-1").name == "admin"        # assigned by pattern
    assert domain.role_for("urn:example:portal:bob").name == "member"         # the default role
    assert domain.role_for("urn:example:portal:alice:laptop").name == "member"  # '*'-free: exact identity
    assert domain.role_for("urn:example:other:bob") is None
    assert policy.realm("urn:example:api-gateway") is None


def test_a_domain_without_a_default_role_gives_unassigned_members_nothing(tmp_path: Path) -> None:
    (tmp_path / "resources.toml").write_text('[resources.orders]\n')
    (tmp_path / "clients.toml").write_text(textwrap.dedent("""\
        [[clients]]
        identifier = { type = "san_uri", value = "urn:r" }
        identity_token_enabled = true
        [[clients.domain.roles]]
        name = "admin"
        resources = ["orders"]
        [[clients.domain.role_assignments]]
        identity = "urn:r:alice"
        role = "admin"
        """))
    domain = load_policy(tmp_path).realm("urn:r").domain
    assert domain.role_for("urn:r:alice").grants == (Grant("orders", None),)
    assert domain.role_for("urn:r:bob") is None


def test_grants(policy) -> None:
    gateway = policy.clients[0]
    assert gateway.grants == (Grant("orders", frozenset({"read", "write"})), Grant("reports", None))
    assert find_grant(gateway.grants, policy.resources, "orders", "write") == gateway.grants[0]
    assert find_grant(gateway.grants, policy.resources, "orders", "delete") is None
    # no operations in the grant: any operation (reports lists none)
    assert find_grant(gateway.grants, policy.resources, "reports", "export") == gateway.grants[1]
    assert find_grant(gateway.grants, policy.resources, "invoices", "read") is None
    # a name-only grant of a resource that lists operations: those only
    legacy = next(client for client in policy.clients if client.name == "legacy")
    assert find_grant(legacy.grants, policy.resources, "orders", "write") is not None
    assert find_grant(legacy.grants, policy.resources, "orders", "delete") is None
    workers = policy.clients[1]
    assert workers.grants[0].designations == (("tenant_id", "acme"), ("region", "eu"))
    assert [c.identity_tokens for c in policy.clients] == [True, False, True, False]


def test_a_policy_with_problems_is_refused(tmp_path: Path) -> None:
    (tmp_path / "resources.toml").write_text(RESOURCES)
    (tmp_path / "clients.toml").write_text(CLIENTS.replace('role = "admin"', 'role = "root"', 1))
    with pytest.raises(RepositoryProblemsError) as raised:
        load_policy(tmp_path)
    assert "role assignment names role 'root'" in str(raised.value)
    with pytest.raises(RepositoryReadError):
        load_policy(tmp_path / "missing")


def test_cacerts_are_read(tmp_path: Path) -> None:
    from hessra_pg.dev.certs import make_ca

    pem = make_ca(tmp_path / "ca").cert.read_text()
    (tmp_path / "resources.toml").write_text("")
    (tmp_path / "clients.toml").write_text(f"[cacerts]\ncert_chain = '''{pem}'''\n")
    assert load_policy(tmp_path).cacerts == pem
