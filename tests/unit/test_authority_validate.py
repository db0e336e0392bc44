"""`hessra-pg policy validate` on what a local authority reads: the seeds'
clients.toml layout ([cacerts], identifier tables, resources tables),
identity_token_enabled, realms ([clients.domain] default_role, roles,
role_assignments), multi-party resources and capability resources with
designations. Each problem is reported at its line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hessra_pg.cli import main
from hessra_pg.dev.certs import make_ca
from hessra_pg.repository.checker import check_repository, validate_repository
from hessra_pg.core.keys import generate_keypair

PARTY = str(generate_keypair().public_key)

RESOURCES = f"""\
[resources.orders]
operations = ["read", "write"]

[resources.payouts]
mechanisms = ["multi_party"]
[resources.payouts.multi_party]
nodes = [{{ component = "treasury", public_key = "{PARTY}", authorization_service = "127.0.0.1:9443" }}]

[resources.invoices]
mechanisms = ["capability"]
anchor = "db:main"
"""

CLEAN_CLIENTS = """\
[[clients]]
identifier = { type = "san_uri", value = "urn:example:api-gateway" }
identity_token_enabled = true
resources = [
  { name = "orders", operations = ["read", "write"] },
  { name = "payouts", operations = ["approve"] },
]

[[clients]]
identifier = { type = "san_dns", value = "worker-*.internal.com" }
resources = [{ name = "invoices", operations = ["read"], designations = { tenant_id = "acme" } }]

[[clients]]
name = "portal"
identifier = { type = "san_uri", value = "urn:example:portal" }
identity_token_enabled = true
resources = ["orders"]

[clients.domain.default_role]
name = "member"

[[clients.domain.roles]]
name = "member"
resources = [{ name = "orders", operations = ["read"] }]

[[clients.domain.roles]]
name = "admin"
permissions = [{ resource = "orders", operations = ["read", "write"] }]

[[clients.domain.role_assignments]]
identity = "urn:example:portal:alice"
role = "admin"

[[clients.domain.role_assignments]]
identities = ["urn:example:portal:bob", "urn:example:portal:ops-*"]
role = "member"
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(directory: Path) -> list[tuple[str, int, str]]:
    return [(Path(p.file).name, p.line, p.message) for p in validate_repository(directory)]


def line_of(path: Path, needle: str, occurrence: int = 1) -> int:
    hits = [n for n, text in enumerate(path.read_text().splitlines(), start=1) if needle in text]
    return hits[occurrence - 1]


def test_the_seeds_layout_with_realms_parties_and_capabilities_is_clean(tmp_path: Path) -> None:
    write(tmp_path, "resources.toml", RESOURCES)
    ca = make_ca(tmp_path / "ca")
    write(tmp_path, "clients.toml", f"[cacerts]\ncert_chain = '''{ca.cert.read_text()}'''\n\n" + CLEAN_CLIENTS)
    assert problems(tmp_path) == []
    check = check_repository(tmp_path)
    assert check.clients == ["urn:example:api-gateway", "worker-*.internal.com", "portal"]
    assert [data is not None for data in check.data] == [True, True]


def test_identifier_problems(tmp_path: Path) -> None:
    write(tmp_path, "resources.toml", RESOURCES)
    clients = write(tmp_path, "clients.toml", """\
        [[clients]]
        identifier = { type = "x509_cn", value = "api" }
        [[clients]]
        identifier = { type = "san_uri", value = "urn:a b" }
        [[clients]]
        name = "star"
        identifier = { type = "san_dns", value = "*.*" }
        [[clients]]
        name = "extra"
        identifier = { type = "san_uri", value = "urn:x", kind = "uri" }
        [[clients]]
        name = "twin"
        identifier = [{ type = "san_uri", value = "urn:x" }, "urn:y"]
        [[clients]]
        resources = ["orders"]
        """)
    assert problems(tmp_path) == [
        ("clients.toml", 2, "client 'api': identifier type must be one of san_uri, san_dns"),
        ("clients.toml", 4, "client 'urn:a b': identifier needs value = \"...\" (non-empty, no spaces)"),
        ("clients.toml", 7, "client 'star': identifier '*.*' would match almost any certificate; name the clients"),
        ("clients.toml", 10, "client 'extra': unknown key 'kind' in its identifier (keys: type, value)"),
        ("clients.toml", 13, "client 'twin': identifier san_uri 'urn:x' is already client 'extra''s "
                             f"(at {clients}:10)"),
        ("clients.toml", 13, 'identifier must be a table { type = "san_uri" | "san_dns", value = "..." }'),
        ("clients.toml", 14, 'a [[clients]] entry needs a non-empty name = "..."'),
    ]


def test_grant_tables_operations_and_designations(tmp_path: Path) -> None:
    write(tmp_path, "resources.toml", RESOURCES)
    write(tmp_path, "clients.toml", """\
        [[clients]]
        name = "a"
        resources = [
          { name = "orders", operations = ["delete"] },
          { name = "ordres", operations = ["read"] },
          { operations = ["read"] },
          { name = "orders" },
          { name = "orders", operations = ["read"], designations = { tenant_id = "acme" } },
          { name = "invoices", operations = ["read"], designations = { anchor = "db:other" } },
          { name = "invoices", operations = ["read"], designations = { tenant_id = 7 } },
          42,
        ]
        """)
    assert problems(tmp_path) == [
        ("clients.toml", 4, "client 'a': resource 'orders' has no operation 'delete' (its operations: read, write)"),
        ("clients.toml", 5, "client 'a' names resource 'ordres', which is not defined "
                            "(resources: invoices, orders, payouts)"),
        ("clients.toml", 6, 'a permission needs a name = "NAME"'),
        ("clients.toml", 7, 'a permission needs operations = ["read", ...] (non-empty strings)'),
        ("clients.toml", 8, "client 'a': designations apply only to capability resources, and 'orders' issues "
                            "none (add mechanisms = [\"capability\"] to it)"),
        ("clients.toml", 9, "designation label 'anchor' is reserved (a resource's anchor = \"...\" binds the anchor)"),
        ("clients.toml", 10, 'designations must be a table of LABEL = "VALUE" (non-empty strings)'),
        ("clients.toml", 11, "resources must be an array of resource names"),
    ]


def test_realm_problems(tmp_path: Path) -> None:
    write(tmp_path, "resources.toml", RESOURCES)
    clients = write(tmp_path, "clients.toml", """\
        [[clients]]
        name = "portal"
        identifier = { type = "san_uri", value = "urn:example:portal" }
        identity_token_enabled = "yes"
        [clients.domain]
        default_roles = "member"
        [clients.domain.default_role]
        name = "guest"
        [[clients.domain.roles]]
        name = "admin"
        resources = [{ name = "orders", operations = ["read", "purge"] }]
        [[clients.domain.roles]]
        name = "admin"
        [[clients.domain.roles]]
        title = "x"
        [[clients.domain.role_assignments]]
        identity = "urn:example:other:alice"
        role = "admin"
        [[clients.domain.role_assignments]]
        identity = "urn:example:portal:bob"
        role = "root"
        [[clients.domain.role_assignments]]
        identities = ["urn:example:portal:bob"]
        identity = "urn:example:portal:carol"
        role = "admin"
        [[clients.domain.role_assignments]]
        identities = ["urn:example:portal:bob"]
        role = "admin"

        [[clients]]
        name = "wild"
        identifier = { type = "san_uri", value = "urn:example:*" }
        identity_token_enabled = true
        [clients.domain.default_role]
        name = "member"
        resources = [{ name = "orders", operations = ["read"] }]
        [[clients.domain.roles]]
        name = "member"
        """)
    assert problems(tmp_path) == [
        ("clients.toml", 4, "identity_token_enabled must be true or false"),
        ("clients.toml", 5, "client 'portal' has a domain but not identity_token_enabled = true "
                            "(a realm mints identity tokens for its members)"),
        ("clients.toml", 6, "client 'portal': unknown key 'default_roles' in domain "
                            "(keys: default_role, role_assignments, roles)"),
        ("clients.toml", 8, "client 'portal': default_role names role 'guest', which is not defined in "
                            "[[clients.domain.roles]] (roles: admin); or give it resources = [...] here"),
        ("clients.toml", 11, "role 'admin' of client 'portal': resource 'orders' has no operation 'purge' "
                             "(its operations: read, write)"),
        ("clients.toml", 13, f"client 'portal': role 'admin' defined twice (first at line 10)"),
        ("clients.toml", 14, 'client \'portal\': role needs name = "..."'),
        ("clients.toml", 15, "client 'portal': unknown key 'title' in role (keys: name, permissions, resources)"),
        ("clients.toml", 17, "client 'portal': 'urn:example:other:alice' is not in its domain "
                             "(members are urn:example:portal:NAME)"),
        ("clients.toml", 21, "client 'portal': role assignment names role 'root', which is not defined (roles: admin)"),
        ("clients.toml", 22, 'a role assignment needs identity = "..." or identities = [...] (one of them)'),
        ("clients.toml", 27, "client 'portal': 'urn:example:portal:bob' is assigned a role twice (first at line 20)"),
        ("clients.toml", line_of(clients, "[clients.domain.default_role]", 2),
         "client 'wild': a realm (a client with a domain) needs exactly one san_uri identifier, without '*' "
         "(its members are REALM:NAME)"),
        ("clients.toml", line_of(clients, "[clients.domain.default_role]", 2),
         "client 'wild': default_role 'member' is also defined in [[clients.domain.roles]]; define it once"),
    ]


def test_multi_party_and_capability_declarations(tmp_path: Path) -> None:
    write(tmp_path, "resources.toml", f"""\
        [resources.a]
        mechanisms = ["multi_party"]
        [resources.b]
        [resources.b.multi_party]
        nodes = [{{ component = "x", public_key = "{PARTY}" }}]
        [resources.c]
        type = "multi_party"
        multi_party = {{ nodes = [] }}
        [resources.d]
        mechanisms = ["multi_party"]
        [resources.d.multi_party]
        nodes = [
          {{ component = "x", public_key = "{PARTY}", authorization_service = "a b" }},
          {{ component = "x", public_key = "ed25519/00" }},
        ]
        [resources.e]
        mechanisms = ["multi_party"]
        multi_party = "x"
        [resources.f]
        anchor = "db:main"
        [resources.g]
        mechanisms = ["capability", "service_chain"]
        anchor = ""
        nodes = [{{ component = "x", public_key = "{PARTY}" }}]
        """)
    assert problems(tmp_path) == [
        ("resources.toml", 2, "resource 'a' declares multi-party sign-offs but has no [resources.a.multi_party] "
                              "table with nodes = [...]"),
        ("resources.toml", 4, "resource 'b' has multi-party nodes but does not declare them: "
                              "add mechanisms = [\"multi_party\"]"),
        ("resources.toml", 8, "the multi-party sign-offs of 'c' has no nodes"),
        ("resources.toml", 13, "authorization_service must be the sign-off authority's address, "
                               "e.g. \"auth.example.com:443\" (no spaces)"),
        ("resources.toml", 14, "duplicate component 'x' in the multi-party sign-offs of 'd' (first at line 13)"),
        ("resources.toml", 14, "bad public_key: ed25519 public key must be 64 hex digits, got 2"),
        ("resources.toml", 18, "multi_party must be a table: [resources.e.multi_party] with nodes = "
                               "[{ component = ..., public_key = ..., authorization_service = \"HOST:PORT\" }]"),
        ("resources.toml", 20, "resource 'f' has an anchor but issues no capability tokens: "
                               "add mechanisms = [\"capability\"] (or remove the anchor)"),
        ("resources.toml", 22, "resource 'g' issues capability tokens, which carry no service chain: "
                               "declare either capability or service_chain"),
        ("resources.toml", 23, 'anchor must be a non-empty string, e.g. anchor = "db:main"'),
    ]


def test_cacerts_problems(tmp_path: Path) -> None:
    write(tmp_path, "resources.toml", "[cacerts]\ncert_chain = 'not a certificate'\n")
    write(tmp_path, "clients.toml", "[cacerts]\ncert_chain = '''-----BEGIN CERTIFICATE-----\nAAAA\n"
                                    "-----END CERTIFICATE-----'''\n")
    assert problems(tmp_path) == [
        ("resources.toml", 2, "cert_chain must hold PEM certificates (-----BEGIN CERTIFICATE----- ...)"),
        ("clients.toml", 1, f"[cacerts] given twice (first at {tmp_path / 'resources.toml'}:1)"),
    ]
    (tmp_path / "clients.toml").unlink()
    write(tmp_path, "resources.toml", "[cacerts]\ncert_chain = '''-----BEGIN CERTIFICATE-----\nAAAA\n"
                                      "-----END CERTIFICATE-----'''\n[other]\n")
    assert problems(tmp_path) == [
        ("resources.toml", 2, "cert_chain: a certificate in it does not parse (expected PEM X.509 certificates)"),
    ]
    write(tmp_path, "resources.toml", "cacerts = 'x'\n")
    assert problems(tmp_path)[0][2].startswith("cacerts must be a table: [cacerts] with cert_chain")


def test_policy_validate_cli_reports_realm_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "resources.toml", RESOURCES)
    clients = write(tmp_path, "clients.toml", CLEAN_CLIENTS)
    assert main(["policy", "validate", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"{tmp_path}: ok (2 files, 3 resources, 0 service chains, 3 clients)"
    clients.write_text(CLEAN_CLIENTS.replace('role = "admin"', 'role = "boss"'))
    assert main(["policy", "validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    line = line_of(clients, '"boss"')
    assert out == [f"{clients}:{line}: client 'portal': role assignment names role "
                   "'boss', which is not defined (roles: admin, member)"]
