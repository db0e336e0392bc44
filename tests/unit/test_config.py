"""Policy repositories (hessra_pg.repository.checker): both resources.toml layouts,
validation with line numbers, the line index, and `hessra-pg policy validate`."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from hessra_pg.cli import main
from hessra_pg.repository.checker import (
    LineIndex,
    Problem,
    RepositoryProblemsError,
    RepositoryReadError,
    check_repository,
    load_resources,
    validate_repository,
)
from hessra_pg.core.keys import public_key_pem
from tests import vectors


def chain() -> list[dict[str, str]]:
    """auth_service -> payment_service -> order_service (the vectors' chain)."""
    return vectors.order_service_chain()


def key(component: str) -> str:
    return vectors.service_nodes()[component]["public_key"]


def inline_nodes(nodes: list[dict[str, str]]) -> str:
    rows = "".join(f'    {{ component = "{n["component"]}", public_key = "{n["public_key"]}" }},\n' for n in nodes)
    return f"nodes = [\n{rows}]\n"


def layout_type(name: str, nodes: list[dict[str, str]]) -> str:
    """Layout 1: [resources.X] type = "service_chain" with nodes."""
    return f'[resources.{name}]\ntype = "service_chain"\noperations = ["read", "write"]\n' + inline_nodes(nodes)


def layout_mechanisms(name: str, nodes: list[dict[str, str]]) -> str:
    """Layout 2: mechanisms = ["service_chain"] and [resources.X.service_chain] nodes."""
    return (f'[resources.{name}]\nmechanisms = ["service_chain"]\n\n'
            f"[resources.{name}.service_chain]\n" + inline_nodes(nodes))


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path) -> list[tuple[str, int, str]]:
    return [(Path(p.file).name, p.line, p.message) for p in validate_repository(path)]


def line_of(path: Path, needle: str, occurrence: int = 1) -> int:
    """1-based line of the n-th line containing needle."""
    hits = [number for number, text in enumerate(path.read_text().splitlines(), start=1) if needle in text]
    return hits[occurrence - 1]


# -- loading ---------------------------------------------------------------

def test_both_layouts_load_the_same_chain(tmp_path: Path) -> None:
    path = write(tmp_path, "resources.toml",
                 layout_type("order_service", chain()) + "\n" + layout_mechanisms("payments", chain()))
    loaded = load_resources(path)
    assert loaded == {"order_service": chain(), "payments": chain()}
    assert list(loaded) == ["order_service", "payments"]  # file order


def test_array_of_tables_nodes_and_pem_keys_are_canonical(tmp_path: Path) -> None:
    pem = public_key_pem(key("order_service"))
    text = '[resources.notify]\nmechanisms = ["identity", "service_chain"]\n'
    for component in ("api_gateway", "payment_service"):
        text += f'[[resources.notify.service_chain.nodes]]\ncomponent = "{component}"\npublic_key = "{key(component)}"\n'
    text += f"[[resources.notify.service_chain.nodes]]\ncomponent = 'order_service'\npublic_key = '''\n{pem}'''\n"
    path = write(tmp_path, "resources.toml", text)
    assert load_resources(path) == {"notify": [
        {"component": "api_gateway", "public_key": key("api_gateway")},
        {"component": "payment_service", "public_key": key("payment_service")},
        {"component": "order_service", "public_key": key("order_service")},
    ]}


def test_resources_without_a_chain_are_skipped_but_checked(tmp_path: Path) -> None:
    path = write(tmp_path, "resources.toml", layout_type("orders", chain()) + """
        [resources.reports]
        operations = ["read"]

        [resources.audit]
        type = "singleton"
        operations = "read"
    """)
    with pytest.raises(RepositoryProblemsError) as raised:
        load_resources(path)
    line = line_of(path, 'operations = "read"')
    assert [str(p) for p in raised.value.problems] == [
        f"{path}:{line}: operations must be an array of non-empty strings"
    ]
    assert "1 problem in" in str(raised.value)
    path.write_text(path.read_text().replace('operations = "read"', 'operations = ["read"]'))
    assert load_resources(path) == {"orders": chain()}


def test_directory_loads_its_resources_toml_only(tmp_path: Path) -> None:
    write(tmp_path, "resources.toml", layout_type("orders", chain()))
    write(tmp_path, "clients.toml", '[clients.web]\nresources = ["nope"]\n')  # not read by load_resources
    assert load_resources(tmp_path) == {"orders": chain()}


def test_load_refuses_a_file_with_problems(tmp_path: Path) -> None:
    bad = [dict(chain()[0]), dict(chain()[0])]
    path = write(tmp_path, "resources.toml", layout_type("orders", bad))
    with pytest.raises(RepositoryProblemsError) as raised:
        load_resources(path)
    (problem,) = raised.value.problems
    assert problem == Problem(str(path), 6, "duplicate component 'auth_service' in the service chain of "
                                            "'orders' (first at line 5)")


def test_unreadable_input(tmp_path: Path) -> None:
    with pytest.raises(RepositoryReadError, match="no such file or directory"):
        validate_repository(tmp_path / "missing")
    with pytest.raises(RepositoryReadError, match="no resources.toml"):
        validate_repository(tmp_path)
    with pytest.raises(RepositoryReadError, match="no such file"):
        load_resources(tmp_path)


# -- validation ------------------------------------------------------------

def test_clean_repository(tmp_path: Path) -> None:
    write(tmp_path, "resources.toml", layout_type("order_service", chain()) + "\n"
          + layout_mechanisms("payments", chain()[:2]) + '\n[resources.reports]\noperations = ["read"]\n')
    write(tmp_path, "clients.toml", """
        [clients.billing]
        resources = ["payments", "reports"]
        permissions = [{ resource = "order_service", operations = ["read"] }]

        [clients.web]
        permissions = [
            { resource = "order_service", operations = ["read", "write"] },
            { resource = "payments", operations = ["anything"] },  # payments lists no operations
        ]
    """)
    assert validate_repository(tmp_path) == []


def test_array_of_clients_form(tmp_path: Path) -> None:
    write(tmp_path, "resources.toml", layout_type("orders", chain()))
    clients = write(tmp_path, "clients.toml", """
        [[clients]]
        name = "web"
        permissions = [{ resource = "orders", operations = ["read"] }]

        [[clients]]
        name = "batch"
        [[clients.permissions]]
        resource = "orders"
        operations = ["write", "delete"]
        [[clients.permissions]]
        resource = "invoices"
        operations = ["read"]

        [[clients]]
        name = "web"
        resources = ["orders"]
    """)
    first_web = line_of(clients, 'name = "web"')
    assert problems_of(tmp_path) == [
        ("clients.toml", line_of(clients, '"delete"'),
         "client 'batch': resource 'orders' has no operation 'delete' (its operations: read, write)"),
        ("clients.toml", line_of(clients, '"invoices"'),
         "client 'batch' names resource 'invoices', which is not defined (resources: orders)"),
        ("clients.toml", line_of(clients, 'name = "web"', 2),
         f"duplicate client 'web' (first defined at {clients}:{first_web})"),
    ]


def test_undefined_resources_are_reported_where_they_are_named(tmp_path: Path) -> None:
    write(tmp_path, "resources.toml", layout_type("orders", chain()))
    clients = write(tmp_path, "clients.toml", """
        [clients.web]
        resources = [
            "orders",
            "ordres",
        ]
        permissions = [{ resource = "invoices", operations = ["read"] }]
    """)
    assert problems_of(tmp_path) == [
        ("clients.toml", 5, "client 'web' names resource 'ordres', which is not defined (resources: orders)"),
        ("clients.toml", 7, "client 'web' names resource 'invoices', which is not defined (resources: orders)"),
    ]
    assert line_of(clients, '"ordres"') == 5


def test_a_lone_clients_file_does_not_check_references(tmp_path: Path) -> None:
    path = write(tmp_path, "clients.toml", '[clients.web]\nresources = ["orders"]\n')
    assert validate_repository(path) == []


def test_bad_permission_shapes(tmp_path: Path) -> None:
    write(tmp_path, "resources.toml", layout_type("orders", chain()))
    write(tmp_path, "clients.toml", """
        [clients.a]
        resources = "orders"
        [clients.b]
        permissions = [{ operations = ["read"] }, { resource = "orders" }, "orders"]
        [clients.c]
        permissions = { resource = "orders" }
    """)
    assert problems_of(tmp_path) == [
        ("clients.toml", 3, "resources must be an array of resource names"),
        ("clients.toml", 5, 'a permission needs a resource = "NAME"'),
        ("clients.toml", 5, 'a permission needs operations = ["read", ...] (non-empty strings)'),
        ("clients.toml", 5, "each permission must be a table { resource = ..., operations = [...] }"),
        ("clients.toml", 7, "permissions must be an array of { resource = ..., operations = [...] } tables"),
    ]


def test_duplicate_resources_and_clients_across_files(tmp_path: Path) -> None:
    resources = write(tmp_path, "resources.toml", layout_type("orders", chain()) + "\n[clients.web]\n")
    write(tmp_path, "clients.toml", """
        [clients.web]
        resources = ["orders"]

        [resources.orders]
        operations = ["read"]
    """)
    assert problems_of(tmp_path) == [
        ("clients.toml", 2, f"duplicate client 'web' (first defined at {resources}:{line_of(resources, '[clients.web]')})"),
        ("clients.toml", 5, f"duplicate resource 'orders' (first defined at {resources}:1)"),
    ]


def test_duplicate_table_in_one_file_is_a_toml_error(tmp_path: Path) -> None:
    path = write(tmp_path, "resources.toml", layout_type("orders", chain()) + '\n[resources.orders]\ntype = "x"\n')
    (problem,) = validate_repository(path)
    assert problem.line == line_of(path, "[resources.orders]", 2)
    assert problem.message.startswith("TOML syntax error: Cannot declare ('resources', 'orders') twice (column")


@pytest.mark.parametrize(("text", "line", "message"), [
    ('[resources.a]\ntype = "service_chain"\nnodes = [\n  { component = "x", public_key = },\n]\n', 4,
     "TOML syntax error: Invalid value (column 35)"),
    ('[resources.a]\ntype = "service_chain\n', 2, "TOML syntax error: Illegal character '\\n' (column 22)"),
    ('[resources.a]\nnodes = [\n', 3, "TOML syntax error: Invalid value (at the end of the file)"),
])
def test_toml_syntax_errors_have_line_and_column(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, "resources.toml", text)
    assert validate_repository(path) == [Problem(str(path), line, message)]


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "resources.toml"
    path.write_bytes(b'[resources.a]\ncomment = "caf\xe9"\n')
    assert validate_repository(path) == [Problem(str(path), 2, "not UTF-8 text (TOML files must be UTF-8)")]


def test_key_formats(tmp_path: Path) -> None:
    nodes = chain()
    path = write(tmp_path, "resources.toml", f"""\
        [resources.orders]
        type = "service_chain"
        nodes = [
            {{ component = "auth_service", public_key = "{nodes[0]["public_key"]}" }},
            {{ component = "payment_service", public_key = "ed25519/78ef" }},
            {{ component = "order_service", public_key = 42 }},
            {{ component = "x", public_key = "rsa/00" }},
            {{ component = "y" }},
        ]
        """)
    assert problems_of(path) == [
        ("resources.toml", 5, "bad public_key: ed25519 public key must be 64 hex digits, got 4"),
        ("resources.toml", 6, "public_key must be a string (PEM or 'ed25519/<hex>' / 'secp256r1/<hex>')"),
        ("resources.toml", 7, "bad public_key: public key must be PEM or 'ed25519/<64 hex>' / 'secp256r1/<66 hex>'"),
        ("resources.toml", 8, "node 5 of 'orders' needs a public_key"),
    ]


def test_key_in_a_multiline_string_reports_its_key_line(tmp_path: Path) -> None:
    path = write(tmp_path, "resources.toml", """\
        [resources.orders]
        mechanisms = ["service_chain"]
        [[resources.orders.service_chain.nodes]]
        component = "a"
        public_key = '''
        -----BEGIN PUBLIC KEY-----
        not base64 [at all] # really
        -----END PUBLIC KEY-----
        '''
        [[resources.orders.service_chain.nodes]]
        component = "a"
        public_key = "ed25519/e57618058b1d2e0381a9813c1405830d5ed7d603717384ef555d9cc0cfa65d83"
        """)
    lines = [(line, message.split(":")[0]) for _, line, message in problems_of(path)]
    assert lines == [(5, "bad public_key"), (11, "duplicate component 'a' in the service chain of 'orders' (first at line 4)")]


def test_chain_declarations(tmp_path: Path) -> None:
    nodes = inline_nodes(chain()[:1])
    path = write(tmp_path, "resources.toml",
                 '[resources.a]\ntype = "service_chain"\n'                              # 1-2: no nodes
                 '[resources.b]\nmechanisms = ["service_chain"]\n'                      # 3-4: no table
                 '[resources.c]\nmechanisms = ["service_chain"]\n[resources.c.service_chain]\n'  # 5-7: table w/o nodes
                 '[resources.d]\n' + nodes +                                           # 8-11: undeclared
                 '[resources.e]\ntype = "service_chain"\n' + nodes +                   # 12-16
                 '[resources.e.service_chain]\n' + nodes +                             # 17-20: nodes twice
                 '[resources.f]\ntype = "service_chain"\nnodes = []\n'                 # 21-23: empty
                 '[resources.g]\ntype = 1\nmechanisms = "service_chain"\n'             # 24-26
                 '[resources.h]\nmechanisms = ["service_chain"]\nservice_chain = ["x"]\n'  # 27-29
                 '[resources.i]\ntype = "service_chain"\nnodes = ["auth_service", { public_key = "x" }]\n'  # 30-32
                 '[resources.j]\ntype = "service_chain"\nnodes = "auth_service"\n')    # 33-35
    assert problems_of(path) == [
        ("resources.toml", 2, "resource 'a' declares a service chain but has no nodes: add nodes = [...]"),
        ("resources.toml", 4, "resource 'b' declares a service chain but has no nodes: "
                              "add [resources.b.service_chain] with nodes = [...]"),
        ("resources.toml", 7, "[resources.c.service_chain] has no nodes = [...]"),
        ("resources.toml", 9, "resource 'd' has service chain nodes but does not declare a service chain: "
                              "add type = \"service_chain\" or mechanisms = [\"service_chain\"]"),
        ("resources.toml", 18, "resource 'e' gives its service chain nodes twice (nodes and service_chain.nodes); keep one"),
        ("resources.toml", 23, "the service chain of 'f' has no nodes"),
        ("resources.toml", 25, 'type must be a string, e.g. type = "service_chain"'),
        ("resources.toml", 26, 'mechanisms must be an array of strings, e.g. mechanisms = ["service_chain"]'),
        ("resources.toml", 29, "service_chain must be a table: [resources.h.service_chain] with nodes = [...]"),
        ("resources.toml", 32, "node 1 of 'i' must be a table { component = ..., public_key = ... }"),
        ("resources.toml", 32, "node 2 of 'i' needs a non-empty component string"),
        ("resources.toml", 32, "bad public_key: public key must be PEM or 'ed25519/<64 hex>' / 'secp256r1/<66 hex>'"),
        ("resources.toml", 35, "nodes must be an array of { component = ..., public_key = ... } tables"),
    ]


def test_resources_and_clients_of_the_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, "resources.toml", 'resources = ["orders"]\nclients = "web"\n')
    assert problems_of(path) == [
        ("resources.toml", 1, "resources must be tables: [resources.NAME]"),
        ("resources.toml", 2, "clients must be [clients.NAME] tables or [[clients]] entries"),
    ]
    path.write_text('[resources]\norders = "x"\n[clients]\nweb = 1\n')
    assert problems_of(path) == [
        ("resources.toml", 2, "resource 'orders' must be a table ([resources.orders])"),
        ("resources.toml", 4, "client 'web' must be a table ([clients.web])"),
    ]


def test_duplicate_operations_and_unnamed_clients(tmp_path: Path) -> None:
    path = write(tmp_path, "resources.toml", """\
        [resources.orders]
        operations = ["read",
                      "read"]
        [[clients]]
        resources = ["orders"]
        [clients_note]
        """)
    assert problems_of(path) == [
        ("resources.toml", 3, "duplicate operation 'read'"),
        ("resources.toml", 4, 'a [[clients]] entry needs a non-empty name = "..."'),
    ]


def test_private_keys_are_flagged(tmp_path: Path) -> None:
    node = vectors.service_nodes()["auth_service"]
    path = write(tmp_path, "resources.toml", "")
    path.write_text(
        '[resources.orders]\ntype = "service_chain"\n'
        f'[[resources.orders.nodes]]\ncomponent = "auth_service"\npublic_key = "{node["public_key"]}"\n'
        f'pem_keypair = """{node["pem_keypair"]}"""\n'
    )
    assert problems_of(path) == [
        ("resources.toml", 6, "a private key in the policy repository: keep only public keys here "
                              "(move it to a 0600 file or a secret store)"),
    ]


def test_problem_format() -> None:
    assert str(Problem("repo/resources.toml", 12, "bad public_key: x")) == "repo/resources.toml:12: bad public_key: x"


# -- line index ------------------------------------------------------------

def test_line_index_paths() -> None:
    text = textwrap.dedent('''\
        title = "a # not a comment [x]"  # comment [y]
        "quoted.key" = 1
        dotted . key = { a = 1, "b c" = [1, 2] }
        when = 1979-05-27 07:32:00Z
        multi = """
        ] } [resources.fake]
        """
        lit = \'\'\'x\'\'\'

        [resources."orders/eu"]
        list = [
          "one",   # comment ]
          [2, 3],
          { k = "v" },
        ]

        [[clients]]
        name = "a"
        [[clients.permissions]]
        resource = "x"
        [[clients]]
        name = "b"
        [[clients.permissions]]
        resource = "y"
        [[clients.permissions]]
        resource = "z"
        ''')
    index = LineIndex(text)
    assert index.line(["title"]) == 1
    assert index.line(["quoted.key"]) == 2
    assert index.line(["dotted", "key", "b c", 1]) == 3
    assert index.line(["when"]) == 4
    assert index.line(["lit"]) == 8
    assert ("resources", "fake") not in index.lines
    assert index.line(["resources", "orders/eu"]) == 10
    assert [index.line(["resources", "orders/eu", "list", i]) for i in range(3)] == [12, 13, 14]
    assert index.line(["resources", "orders/eu", "list", 2, "k"]) == 14
    assert index.line(["clients", 0, "name"]) == 18
    assert index.line(["clients", 0, "permissions", 0, "resource"]) == 20
    assert index.line(["clients", 1, "permissions", 1, "resource"]) == 26
    assert index.line(["clients", 1, "permissions", 1]) == 25
    # unknown paths fall back to the nearest ancestor, then line 1
    assert index.line(["resources", "orders/eu", "nope", 3]) == 10
    assert index.line(["nothing"]) == 1


def test_line_index_multiline_arrays() -> None:
    """Multi-line arrays element by element, whatever the strings in them
    hold: tomllib reads each statement, this index only counts lines."""
    text = textwrap.dedent('''\
        [resources.a]
        nodes = [ { component = "x" },
          { component = "y", public_key = """
        -----BEGIN PUBLIC KEY-----
        ] }, { component = "fake" },
        """ }, { component = "z" },
          "after"
          , "leading comma"
          # ] a comment
          , 'lit ], [' ]
        a.b = [[1,
          2], [3]]
        deep = [
          [
            "inner",
          ],
          "last",
        ]
        [[resources.a.more]]
        x = 1
        ''')
    index = LineIndex(text)
    assert [index.line(["resources", "a", "nodes", i]) for i in [0, 1, 3, 4, 5]] == [2, 3, 7, 8, 10]
    assert index.line(["resources", "a", "nodes", 1, "public_key"]) == 3
    # written after a multi-line string, on the line where it ends: found where the string starts
    assert index.line(["resources", "a", "nodes", 2]) == 3
    assert ("resources", "a", "nodes", 6) not in index.lines  # no node from inside the string
    assert index.line(["resources", "a", "a", "b", 1]) == 11
    assert [index.line(["resources", "a", "deep", i]) for i in range(2)] == [14, 17]
    # what an element spanning lines holds is found at the line where it starts
    assert index.line(["resources", "a", "deep", 0, 0]) == 14
    assert index.line(["resources", "a", "more", 0, "x"]) == 20


def test_line_index_crlf_and_not_toml() -> None:
    index = LineIndex('[resources.a]\r\nlist = [\r\n  "x",\r\n  "y",\r\n]\r\nz = 1\r\n')
    assert [index.line(["resources", "a", "list", i]) for i in range(2)] == [3, 4]
    assert index.line(["resources", "a", "z"]) == 6
    # text tomllib refuses: what was found before it
    index = LineIndex('a = 1\nb = [\n  "x",\n  nope\n]\n[c]\n')
    assert index.lines == {("a",): 1, ("b",): 2, ("b", 0): 3}


# -- hessra-pg policy validate --------------------------------------------

def test_policy_validate_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "resources.toml", layout_type("orders", chain()))
    clients = write(tmp_path, "clients.toml", '[clients.web]\nresources = ["orders"]\n')
    assert main(["policy", "validate", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"{tmp_path}: ok (2 files, 1 resource, 1 service chain, 1 client)" and err == ""

    clients.write_text('[clients.web]\nresources = ["orders", "invoices"]\n[clients.web2]\nresources = [1]\n')
    assert main(["policy", "validate", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"{clients}:2: client 'web' names resource 'invoices', which is not defined (resources: orders)",
        f"{clients}:4: resources must be an array of resource names",
    ]
    assert err.strip() == "hessra-pg: 2 problems"

    assert main(["policy", "validate", str(tmp_path / "nope")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == f"hessra-pg: error: {tmp_path / 'nope'}: no such file or directory"


def test_policy_validate_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "resources.toml", '[resources.a]\ntype = "service_chain"\n')
    assert main(["policy", "validate", "--json", str(path)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report == {"ok": False, "files": [str(path)], "problems": [
        {"file": str(path), "line": 2,
         "message": "resource 'a' declares a service chain but has no nodes: add nodes = [...]"},
    ]}


def test_check_repository_summary(tmp_path: Path) -> None:
    write(tmp_path, "resources.toml", layout_type("orders", chain()) + '\n[resources.reports]\n')
    write(tmp_path, "clients.toml", '[[clients]]\nname = "web"\n[[clients]]\nname = "batch"\n')
    result = check_repository(tmp_path)
    assert result.ok
    assert result.files == [str(tmp_path / "resources.toml"), str(tmp_path / "clients.toml")]
    assert (result.resources, list(result.chains), result.clients) == (["orders", "reports"], ["orders"],
                                                                       ["web", "batch"])


def test_policy_validate_cli_unreadable_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "resources.toml"
    os.mkfifo(fifo)
    assert main(["policy", "validate", str(fifo)]) == 2
    assert capsys.readouterr().err == f"hessra-pg: error: {fifo}: not a regular file or directory\n"
    fifo.unlink()
    assert main(["policy", "validate", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"hessra-pg: error: {tmp_path}: not a policy repository (no resources.toml in it)\n"
    path = write(tmp_path, "resources.toml", "")
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            return  # root reads any file
        assert main(["policy", "validate", str(path)]) == 2
        assert capsys.readouterr().err == f"hessra-pg: error: cannot read {path}: Permission denied\n"
    finally:
        path.chmod(0o644)
