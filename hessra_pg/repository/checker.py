"""Hessra policy repositories: ``resources.toml`` and ``clients.toml``.

A policy repository is a directory holding ``resources.toml`` and, optionally,
``clients.toml`` (either file may hold both kinds of tables). This module reads
the service chains out of it (:func:`load_resources`, for ``hessra-pg chains
import``) and checks the whole repository (:func:`validate_repository`, for
``hessra-pg policy validate``), reporting every problem as ``FILE:LINE:
message``.

``resources.toml`` -- both layouts of the Hessra docs::

    [resources.order_service]              # layout 1
    type = "service_chain"
    operations = ["read", "write"]         # optional: checked against clients
    nodes = [
        { component = "auth_service", public_key = "ed25519/..." },
        { component = "payment_service", public_key = "ed25519/..." },
    ]

    [resources.payments]                   # layout 2
    mechanisms = ["service_chain"]
    [resources.payments.service_chain]
    nodes = [{ component = "auth_service", public_key = "ed25519/..." }]

    [resources.payouts]                    # multi-party sign-offs (an authority
    mechanisms = ["multi_party"]           # returns them as pending_signoffs)
    [resources.payouts.multi_party]
    nodes = [{ component = "treasury", public_key = "ed25519/...",
               authorization_service = "treasury.example.com:443" }]

    [resources.invoices]                   # capability tokens
    mechanisms = ["capability"]
    anchor = "db:main"                     # optional

``nodes`` may also be written as ``[[resources.NAME.nodes]]`` tables. A
resource without a service chain is allowed (and checked). Keys are PEM or
``ed25519/<hex>`` / ``secp256r1/<hex>``.

``clients.toml`` -- either tables keyed by client name or an array::

    [clients.billing]
    resources = ["order_service"]          # any operation
    permissions = [{ resource = "payments", operations = ["read"] }]

    [[clients]]
    name = "web"
    permissions = [{ resource = "order_service", operations = ["read", "write"] }]

and the seeds' layout of the Hessra docs, which an authority serves from
(``hessra_pg.authority``; docs/authority.md)::

    [cacerts]                              # CAs of the client certificates
    cert_chain = '''-----BEGIN CERTIFICATE-----...'''

    [[clients]]                            # named by a certificate SAN
    identifier = { type = "san_uri", value = "urn:example:api-gateway" }
    resources = [{ name = "orders", operations = ["read", "write"] }]
    identity_token_enabled = true          # may get and use identity tokens

    [[clients]]                            # `*`: one or more characters of one
    identifier = { type = "san_dns", value = "worker-*.internal.com" }  # label / segment
    resources = [{ name = "invoices", operations = ["read"],
                   designations = { tenant_id = "acme" } }]   # capability resources only

    [[clients]]                            # a realm: mints identities REALM:NAME
    identifier = { type = "san_uri", value = "urn:example:portal" }
    identity_token_enabled = true
    [clients.domain.default_role]          # the role of members with no assignment:
    name = "member"                        # a role below, or inline resources = [...]
    [[clients.domain.roles]]
    name = "member"
    resources = [{ name = "orders", operations = ["read"] }]
    [[clients.domain.roles]]
    name = "admin"
    resources = [{ name = "orders", operations = ["read", "write"] }]
    [[clients.domain.role_assignments]]
    identity = "urn:example:portal:alice"  # or identities = [...]
    role = "admin"

No SQL, no psycopg: this module only parses files. tomllib parses them
(values, syntax errors with their line and column); it gives no positions for
what it parsed, so :class:`LineIndex` finds the line of each table, key and
array element by cutting the text into statements at line ends and letting
tomllib parse each one alone: no TOML lexer (strings, escapes, comments,
quoted keys) is written here.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hessra_pg.errors import ConfigurationError, KeyFormatError, RepositoryReadError
from hessra_pg.core.keys import canonical_public_key

__all__ = [
    "CLIENTS_FILE",
    "RESOURCES_FILE",
    "LineIndex",
    "Problem",
    "RepositoryCheck",
    "RepositoryProblemsError",
    "RepositoryReadError",
    "check_repository",
    "load_resources",
    "repository_files",
    "validate_repository",
]

RESOURCES_FILE = "resources.toml"
CLIENTS_FILE = "clients.toml"
SERVICE_CHAIN = "service_chain"

KeyPath = tuple[str | int, ...]


class RepositoryProblemsError(ConfigurationError):
    """A policy repository file has problems; ``problems`` lists them."""

    sqlstate = "22023"  # invalid_parameter_value (see hessra_pg.errors)

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        files = sorted({problem.file for problem in problems})
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{count} in {', '.join(files)}:\n" + "\n".join(f"  {p}" for p in problems))


@dataclass(frozen=True)
class Problem:
    """One problem found in a repository file, at a 1-based line."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


# -- line index ------------------------------------------------------------

def _loads(text: str) -> dict[str, Any] | None:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None


def _paths(value: Any, path: KeyPath) -> Iterator[KeyPath]:
    """`path` and the path of everything inside `value`."""
    yield path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        yield from _paths(item, path + (key,))


class LineIndex:
    """Line numbers of the tables, keys and array elements of a TOML text.

    tomllib gives values but no positions, and this module keeps no TOML
    lexer of its own to find them: the text is cut at line ends into its
    statements (a ``[table]`` / ``[[array]]`` header, or ``key = value`` with
    the lines its value spans), and tomllib parses each statement alone, so
    strings, escapes, comments and quoted or dotted keys are tomllib's
    business. A statement is grown a line at a time until tomllib accepts
    it; a multi-line array is read one element line at a time, each parsed
    inside ``x = [`` ... ``]``, which gives every element the line it starts
    on. The only things decided here are that a statement starting with
    ``[`` is a header, and that ``[[a.b]]`` headers enter the latest entry
    of the arrays of tables they name.

    Maps every path (``("resources", "orders", "nodes", 1, "public_key")``,
    list indices as ints, array-of-tables entries numbered like lists) to
    the line where it is written. Where a value spans lines (a multi-line
    string, a nested multi-line array), tomllib can't say where inside it a
    line ends: what it holds, and anything written after it on the line
    where it ends, get the line where it starts. Meant for text that tomllib
    accepted; on anything else it keeps what it found so far.
    """

    def __init__(self, text: str) -> None:
        self.lines: dict[KeyPath, int] = {}
        self._arrays: dict[KeyPath, int] = {}
        self._text = text.replace("\r\n", "\n").split("\n")
        self._scan()

    def line(self, path: Iterable[str | int]) -> int:
        """The line of `path`, else of its nearest written ancestor, else 1."""
        key = tuple(path)
        for end in range(len(key), 0, -1):
            found = self.lines.get(key[:end])
            if found is not None:
                return found
        return 1

    def _record(self, value: Any, path: KeyPath, index: int) -> None:
        for found in _paths(value, path):
            self.lines.setdefault(found, index + 1)

    def _resolve(self, keys: list[str]) -> KeyPath:
        """A header's path, entering the latest entry of arrays of tables."""
        path: KeyPath = ()
        for key in keys:
            path += (key,)
            if path in self._arrays:
                path += (self._arrays[path] - 1,)
        return path

    def _chunks(self, start: int, *wrappers: tuple[str, str]) -> tuple[int, int, dict[str, Any]] | None:
        """The fewest lines from `start` that tomllib accepts inside one of
        `wrappers` (prefix, suffix): (last line, which wrapper, parsed)."""
        for end in range(start, len(self._text)):
            chunk = "\n".join(self._text[start:end + 1])
            for which, (prefix, suffix) in enumerate(wrappers):
                parsed = _loads(prefix + chunk + suffix)
                if parsed is not None:
                    return end, which, parsed
        return None

    def _scan(self) -> None:
        table: KeyPath = ()
        index = 0
        while index < len(self._text):
            if self._text[index].lstrip().startswith("["):  # a header: one line
                header = _loads(self._text[index])
                if header is None:
                    return
                keys: list[str] = []
                node: Any = header
                while isinstance(node, dict) and len(node) == 1:
                    (key, node), = node.items()
                    keys.append(key)
                if isinstance(node, list):  # [[keys]]
                    array = self._resolve(keys[:-1]) + (keys[-1],)
                    count = self._arrays.get(array, 0)
                    self._arrays[array] = count + 1
                    table = array + (count,)
                    self.lines.setdefault(array, index + 1)
                else:
                    table = self._resolve(keys)
                self.lines.setdefault(table, index + 1)
                index += 1
                continue
            # key = value (or a blank or comment line), or the start of an
            # array that goes on past the end of the chunk.
            found = self._chunks(index, ("", ""), ("", "\n]"))
            if found is None:
                return
            end, open_array, statement = found
            for key, item in statement.items():
                self._record(item, table + (key,), index)
            if not open_array:
                index = end + 1
                continue
            path, node = table, statement
            while isinstance(node, dict):
                (key, node), = node.items()
                path += (key,)
            index = self._elements(end + 1, path, len(node))

    def _elements(self, index: int, path: KeyPath, count: int) -> int:
        """Read the rest of the multi-line array at `path` (`count` elements
        so far) from line `index`; the line after its closing ``]``."""
        while index < len(self._text):
            if self._text[index].lstrip().startswith(","):  # `, item` (the comma of the line above)
                self._text[index] = self._text[index].replace(",", " ", 1)
            found = self._chunks(index, ("x = [\n", "\n]"), ("x = [\n", ""))
            if found is None:
                break
            end, closed, parsed = found
            for offset, item in enumerate(parsed["x"]):
                self._record(item, path + (count + offset,), index)
            count += len(parsed["x"])
            index = end + 1
            if closed:
                return index
        return len(self._text)


# -- documents -------------------------------------------------------------

@dataclass
class _Document:
    """One parsed file (data is None when it does not parse)."""

    name: str
    data: dict[str, Any] | None = None
    index: LineIndex | None = None

    def line(self, path: Iterable[str | int]) -> int:
        return self.index.line(path) if self.index else 1


def repository_files(path: str | Path) -> list[Path]:
    """The files `hessra-pg policy validate PATH` reads: a single file, or
    a directory's resources.toml (required) and clients.toml (optional)."""
    root = Path(path)
    if root.is_dir():
        resources = root / RESOURCES_FILE
        if not resources.is_file():
            raise RepositoryReadError(f"{root}: not a policy repository (no {RESOURCES_FILE} in it)")
        clients = root / CLIENTS_FILE
        return [resources, clients] if clients.is_file() else [resources]
    if root.is_file():
        return [root]
    if root.exists():
        raise RepositoryReadError(f"{root}: not a regular file or directory")
    raise RepositoryReadError(f"{root}: no such file or directory")


# Where tomllib says a syntax error is: the end of its message (Python 3.11
# has no lineno/colno attributes on TOMLDecodeError).
_POSITION = re.compile(r"\s*\((?:at line (\d+), column (\d+)|at end of document)\)\s*$")


def _read(path: Path, problems: list[Problem]) -> _Document:
    document = _Document(str(path))
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise RepositoryReadError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        problems.append(Problem(document.name, line, "not UTF-8 text (TOML files must be UTF-8)"))
        return document
    try:
        document.data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        match = _POSITION.search(message)
        line = text.count("\n") + 1
        if match:
            message = message[: match.start()]
            if match.group(1):
                line = int(match.group(1))
                message += f" (column {match.group(2)})"
            else:
                message += " (at the end of the file)"
        problems.append(Problem(document.name, line, f"TOML syntax error: {message}"))
        return document
    document.index = LineIndex(text)
    return document


# -- checks ----------------------------------------------------------------

@dataclass
class _Repository:
    """What the documents define, and the problems found so far."""

    problems: list[Problem] = field(default_factory=list)
    #: resource name -> (document, its spec table)
    resources: dict[str, tuple[_Document, dict[str, Any]]] = field(default_factory=dict)
    clients: dict[str, tuple[_Document, KeyPath]] = field(default_factory=dict)
    chains: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    #: resource name -> its multi-party nodes ({component, public_key[, authorization_service]})
    parties: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    #: resources that issue capability tokens
    capabilities: set[str] = field(default_factory=set)
    #: (identifier type, value) -> (document, where, client name)
    identifiers: dict[tuple[str, str], tuple[_Document, KeyPath, str]] = field(default_factory=dict)
    #: where [cacerts] was first given
    cacerts: tuple[_Document, KeyPath] | None = None
    documents: list[_Document] = field(default_factory=list)

    def add(self, document: _Document, path: KeyPath, message: str) -> None:
        self.problems.append(Problem(document.name, document.line(path), message))

    def at(self, document: _Document, path: KeyPath) -> str:
        return f"{document.name}:{document.line(path)}"


def _check_resources(repo: _Repository, document: _Document) -> None:
    assert document.data is not None
    resources = document.data.get("resources")
    if resources is None:
        return
    if not isinstance(resources, dict):
        repo.add(document, ("resources",), "resources must be tables: [resources.NAME]")
        return
    for name, spec in resources.items():
        where: KeyPath = ("resources", name)
        if name in repo.resources:
            first, _ = repo.resources[name]
            repo.add(document, where, f"duplicate resource {name!r} (first defined at {repo.at(first, where)})")
            continue
        if not isinstance(spec, dict):
            repo.add(document, where, f"resource {name!r} must be a table ([resources.{name}])")
            continue
        repo.resources[name] = (document, spec)
        _check_operations(repo, document, where, spec)
        nodes = _resource_chain(repo, document, name, spec)
        if nodes is not None:
            repo.chains[name] = nodes
        _resource_mechanisms(repo, document, name, spec)


def _check_operations(repo: _Repository, document: _Document, where: KeyPath, spec: dict[str, Any]) -> None:
    operations = spec.get("operations")
    if operations is None:
        return
    if not isinstance(operations, list) or not all(isinstance(op, str) and op for op in operations):
        repo.add(document, where + ("operations",), "operations must be an array of non-empty strings")
        return
    seen: set[str] = set()
    for index, operation in enumerate(operations):
        if operation in seen:
            repo.add(document, where + ("operations", index), f"duplicate operation {operation!r}")
        seen.add(operation)


def _resource_chain(repo: _Repository, document: _Document, name: str,
                    spec: dict[str, Any]) -> list[dict[str, str]] | None:
    """Check a resource's service-chain declaration; its nodes if it has a
    valid chain, None otherwise (no chain, or problems recorded)."""
    where: KeyPath = ("resources", name)
    kind, mechanisms = spec.get("type"), spec.get("mechanisms")
    declared_at: KeyPath | None = None
    if kind is not None:
        if not isinstance(kind, str):
            repo.add(document, where + ("type",), "type must be a string, e.g. type = \"service_chain\"")
        elif kind == SERVICE_CHAIN:
            declared_at = where + ("type",)
    if mechanisms is not None:
        if not isinstance(mechanisms, list) or not all(isinstance(m, str) for m in mechanisms):
            repo.add(document, where + ("mechanisms",),
                     "mechanisms must be an array of strings, e.g. mechanisms = [\"service_chain\"]")
        elif SERVICE_CHAIN in mechanisms:
            declared_at = declared_at or where + ("mechanisms",)

    sources: list[KeyPath] = []
    if "nodes" in spec:
        sources.append(where + ("nodes",))
    table = spec.get(SERVICE_CHAIN)
    if table is not None:
        if not isinstance(table, dict):
            repo.add(document, where + (SERVICE_CHAIN,),
                     f"{SERVICE_CHAIN} must be a table: [resources.{name}.{SERVICE_CHAIN}] with nodes = [...]")
            return None
        if "nodes" not in table:
            repo.add(document, where + (SERVICE_CHAIN,), f"[resources.{name}.{SERVICE_CHAIN}] has no nodes = [...]")
            return None
        sources.append(where + (SERVICE_CHAIN, "nodes"))

    if len(sources) > 1:
        repo.add(document, sources[1],
                 f"resource {name!r} gives its service chain nodes twice (nodes and {SERVICE_CHAIN}.nodes); keep one")
        return None
    if declared_at is None:
        if sources:
            repo.add(document, sources[0],
                     f"resource {name!r} has service chain nodes but does not declare a service chain: "
                     f"add type = \"service_chain\" or mechanisms = [\"service_chain\"]")
        return None
    if not sources:
        layout = ("nodes = [...]" if declared_at[-1] == "type"
                  else f"[resources.{name}.{SERVICE_CHAIN}] with nodes = [...]")
        repo.add(document, declared_at, f"resource {name!r} declares a service chain but has no nodes: add {layout}")
        return None
    return _chain_nodes(repo, document, name, sources[0], _get(document.data, sources[0]))


def _chain_nodes(repo: _Repository, document: _Document, name: str, where: KeyPath,
                 nodes: Any, kind: str = "service chain") -> list[dict[str, str]] | None:
    if not isinstance(nodes, list):
        repo.add(document, where, "nodes must be an array of { component = ..., public_key = ... } tables")
        return None
    if not nodes:
        repo.add(document, where, f"the {kind} of {name!r} has no nodes")
        return None
    before = len(repo.problems)
    parsed: list[dict[str, str]] = []
    seen: dict[str, int] = {}
    for index, node in enumerate(nodes):
        at = where + (index,)
        if not isinstance(node, dict):
            repo.add(document, at, f"node {index + 1} of {name!r} must be a table {{ component = ..., public_key = ... }}")
            continue
        component, key = node.get("component"), node.get("public_key")
        if not isinstance(component, str) or not component.strip():
            repo.add(document, at + ("component",) if "component" in node else at,
                     f"node {index + 1} of {name!r} needs a non-empty component string")
        elif component in seen:
            repo.add(document, at + ("component",),
                     f"duplicate component {component!r} in the {kind} of {name!r} "
                     f"(first at line {seen[component]})")
        else:
            seen[component] = document.line(at + ("component",))
        if "public_key" not in node:
            repo.add(document, at, f"node {index + 1} of {name!r} needs a public_key")
            continue
        canonical = _public_key(repo, document, at + ("public_key",), key)
        if canonical is not None and isinstance(component, str):
            parsed.append({"component": component, "public_key": canonical})
    return parsed if len(repo.problems) == before else None


def _public_key(repo: _Repository, document: _Document, where: KeyPath, key: Any) -> str | None:
    if not isinstance(key, str):
        repo.add(document, where, "public_key must be a string (PEM or 'ed25519/<hex>' / 'secp256r1/<hex>')")
        return None
    try:
        return canonical_public_key(key)
    except KeyFormatError as error:
        repo.add(document, where, f"bad public_key: {error}")
        return None


# -- multi-party sign-offs and capability tokens (what an authority issues) --

MULTI_PARTY = "multi_party"
CAPABILITY = "capability"
_RESERVED_DESIGNATIONS = ("anchor", "facet")


def _declared(spec: dict[str, Any], where: KeyPath, mechanism: str) -> KeyPath | None:
    """Where `spec` declares `mechanism` (type = "..." or mechanisms = [...]),
    or None. Malformed type/mechanisms are reported by _resource_chain."""
    if spec.get("type") == mechanism:
        return where + ("type",)
    mechanisms = spec.get("mechanisms")
    if isinstance(mechanisms, list) and mechanism in mechanisms:
        return where + ("mechanisms",)
    return None


def _resource_mechanisms(repo: _Repository, document: _Document, name: str, spec: dict[str, Any]) -> None:
    """Multi-party sign-offs ([resources.NAME.multi_party] nodes, each with an
    optional authorization_service) and capability tokens (type or
    mechanisms "capability", optional anchor = "...")."""
    where: KeyPath = ("resources", name)
    parties_declared = _declared(spec, where, MULTI_PARTY)
    table = spec.get(MULTI_PARTY)
    if table is None:
        if parties_declared is not None:
            repo.add(document, parties_declared,
                     f"resource {name!r} declares multi-party sign-offs but has no "
                     f"[resources.{name}.{MULTI_PARTY}] table with nodes = [...]")
    elif not isinstance(table, dict) or "nodes" not in table:
        repo.add(document, where + (MULTI_PARTY,),
                 f"{MULTI_PARTY} must be a table: [resources.{name}.{MULTI_PARTY}] with nodes = "
                 "[{ component = ..., public_key = ..., authorization_service = \"HOST:PORT\" }]")
    elif parties_declared is None:
        repo.add(document, where + (MULTI_PARTY,),
                 f"resource {name!r} has multi-party nodes but does not declare them: "
                 f"add mechanisms = [\"{MULTI_PARTY}\"]")
    else:
        at = where + (MULTI_PARTY, "nodes")
        nodes = _chain_nodes(repo, document, name, at, table["nodes"], kind="multi-party sign-offs")
        services_ok = True
        raw_nodes = table["nodes"] if isinstance(table["nodes"], list) else []
        for index, node in enumerate(raw_nodes):
            service = node.get("authorization_service") if isinstance(node, dict) else None
            if service is not None and (not isinstance(service, str) or not service.strip()
                                        or any(c.isspace() for c in service)):
                services_ok = False
                repo.add(document, at + (index, "authorization_service"),
                         "authorization_service must be the sign-off authority's address, "
                         "e.g. \"auth.example.com:443\" (no spaces)")
        if nodes is not None and services_ok:
            for node, raw in zip(nodes, raw_nodes):
                if isinstance(raw.get("authorization_service"), str):
                    node["authorization_service"] = raw["authorization_service"]
            repo.parties[name] = nodes

    capability = _declared(spec, where, CAPABILITY)
    anchor = spec.get("anchor")
    if anchor is not None:
        if not isinstance(anchor, str) or not anchor.strip():
            repo.add(document, where + ("anchor",), "anchor must be a non-empty string, e.g. anchor = \"db:main\"")
        elif capability is None:
            repo.add(document, where + ("anchor",),
                     f"resource {name!r} has an anchor but issues no capability tokens: "
                     f"add mechanisms = [\"{CAPABILITY}\"] (or remove the anchor)")
    if capability is None:
        return
    repo.capabilities.add(name)
    for other, what in ((SERVICE_CHAIN, "service chain"), (MULTI_PARTY, "multi-party sign-offs")):
        if _declared(spec, where, other) is not None:
            repo.add(document, capability,
                     f"resource {name!r} issues capability tokens, which carry no {what}: "
                     f"declare either {CAPABILITY} or {other}")


# -- clients ---------------------------------------------------------------

IDENTIFIER_TYPES = ("san_uri", "san_dns")
_IDENTIFIER_KEYS = {"type", "value"}
_DOMAIN_KEYS = {"default_role", "roles", "role_assignments"}
_ROLE_KEYS = {"name", "resources", "permissions"}
_ASSIGNMENT_KEYS = {"identity", "identities", "role"}


def _identifier_name(identifier: Any) -> str | None:
    """The display name of a [[clients]] entry without a name: its first
    identifier's value."""
    first = identifier[0] if isinstance(identifier, list) and identifier else identifier
    if isinstance(first, dict) and isinstance(first.get("value"), str) and first["value"].strip():
        return first["value"]
    return None


def _check_clients(repo: _Repository, document: _Document, check_references: bool) -> None:
    assert document.data is not None
    _check_cacerts(repo, document)
    clients = document.data.get("clients")
    if clients is None:
        return
    # (name, where the name is written, the client's table path, its table)
    entries: list[tuple[str, KeyPath, KeyPath, dict[str, Any]]] = []
    if isinstance(clients, dict):
        for name, spec in clients.items():
            if not isinstance(spec, dict):
                repo.add(document, ("clients", name), f"client {name!r} must be a table ([clients.{name}])")
                continue
            entries.append((name, ("clients", name), ("clients", name), spec))
    elif isinstance(clients, list):
        for index, spec in enumerate(clients):
            at: KeyPath = ("clients", index)
            if not isinstance(spec, dict):
                repo.add(document, at, "each [[clients]] entry must be a table")
                continue
            name = spec.get("name")
            if isinstance(name, str) and name:
                entries.append((name, at + ("name",), at, spec))
                continue
            derived = _identifier_name(spec.get("identifier")) if "name" not in spec else None
            if derived is None:
                repo.add(document, at, "a [[clients]] entry needs a non-empty name = \"...\"")
                continue
            entries.append((derived, at + ("identifier",), at, spec))
    else:
        repo.add(document, ("clients",), "clients must be [clients.NAME] tables or [[clients]] entries")
        return
    for name, where, base, spec in entries:
        if name in repo.clients:
            first, first_at = repo.clients[name]
            repo.add(document, where, f"duplicate client {name!r} (first defined at {repo.at(first, first_at)})")
            continue
        repo.clients[name] = (document, where)
        identifiers = _check_identifiers(repo, document, name, base, spec)
        _check_grants(repo, document, f"client {name!r}", base, spec, check_references)
        _check_identity_settings(repo, document, name, base, spec, identifiers, check_references)


def _check_cacerts(repo: _Repository, document: _Document) -> None:
    """[cacerts] cert_chain = PEM: the CAs whose client certificates an
    authority accepts."""
    assert document.data is not None
    cacerts = document.data.get("cacerts")
    if cacerts is None:
        return
    where: KeyPath = ("cacerts",)
    if repo.cacerts is not None:
        first, first_at = repo.cacerts
        repo.add(document, where, f"[cacerts] given twice (first at {repo.at(first, first_at)})")
        return
    repo.cacerts = (document, where)
    if not isinstance(cacerts, dict) or "cert_chain" not in cacerts:
        repo.add(document, where,
                 "cacerts must be a table: [cacerts] with cert_chain = '''-----BEGIN CERTIFICATE-----...'''")
        return
    chain = cacerts["cert_chain"]
    at = where + ("cert_chain",)
    if not isinstance(chain, str) or "-----BEGIN CERTIFICATE-----" not in chain:
        repo.add(document, at, "cert_chain must hold PEM certificates (-----BEGIN CERTIFICATE----- ...)")
        return
    import ssl

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=chain)
    except (ssl.SSLError, ValueError):
        repo.add(document, at, "cert_chain: a certificate in it does not parse (expected PEM X.509 certificates)")


def _check_identifiers(repo: _Repository, document: _Document, client: str, base: KeyPath,
                       spec: dict[str, Any]) -> list[tuple[str, str]]:
    """identifier = { type = "san_uri" | "san_dns", value = "..." } (or an
    array of them): how certificates and identity tokens name the client.
    `*` in a value matches one or more characters within one segment
    (between ':' for URIs, between '.' for DNS names). The valid ones."""
    identifier = spec.get("identifier")
    if identifier is None:
        return []
    items = list(enumerate(identifier)) if isinstance(identifier, list) else [(None, identifier)]
    found: list[tuple[str, str]] = []
    for index, item in items:
        at = base + ("identifier",) + (() if index is None else (index,))
        if not isinstance(item, dict):
            repo.add(document, at, "identifier must be a table { type = \"san_uri\" | \"san_dns\", value = \"...\" }")
            continue
        for key in sorted(set(item) - _IDENTIFIER_KEYS):
            repo.add(document, at, f"client {client!r}: unknown key {key!r} in its identifier (keys: type, value)")
        kind, value = item.get("type"), item.get("value")
        if kind not in IDENTIFIER_TYPES:
            repo.add(document, at + ("type",) if "type" in item else at,
                     f"client {client!r}: identifier type must be one of {', '.join(IDENTIFIER_TYPES)}")
            continue
        if not isinstance(value, str) or not value or any(c.isspace() for c in value):
            repo.add(document, at + ("value",) if "value" in item else at,
                     f"client {client!r}: identifier needs value = \"...\" (non-empty, no spaces)")
            continue
        separators = ":" if kind == "san_uri" else "."
        if not value.strip("*" + separators):
            repo.add(document, at + ("value",),
                     f"client {client!r}: identifier {value!r} would match almost any certificate; "
                     "name the clients")
            continue
        key = (kind, value.lower() if kind == "san_dns" else value)
        if key in repo.identifiers:
            first, first_at, owner = repo.identifiers[key]
            repo.add(document, at + ("value",),
                     f"client {client!r}: identifier {kind} {value!r} is already client {owner!r}'s "
                     f"(at {repo.at(first, first_at)})")
            continue
        repo.identifiers[key] = (document, at + ("value",), client)
        found.append((kind, value))
    return found


def _check_identity_settings(repo: _Repository, document: _Document, client: str, base: KeyPath,
                             spec: dict[str, Any], identifiers: list[tuple[str, str]],
                             check_references: bool) -> None:
    """identity_token_enabled, and a realm's [clients.domain] with its
    default_role, roles and role_assignments."""
    enabled = spec.get("identity_token_enabled")
    if enabled is not None and not isinstance(enabled, bool):
        repo.add(document, base + ("identity_token_enabled",), "identity_token_enabled must be true or false")
    domain = spec.get("domain")
    if domain is None:
        return
    at = base + ("domain",)
    where = _written(document, at)
    if not isinstance(domain, dict):
        repo.add(document, at, f"client {client!r}: domain must be a table ([clients.domain] ...)")
        return
    if enabled is not True:
        repo.add(document, where, f"client {client!r} has a domain but not identity_token_enabled = true "
                                  "(a realm mints identity tokens for its members)")
    realm: str | None = None
    uris = [value for kind, value in identifiers if kind == "san_uri"]
    if len(identifiers) != 1 or len(uris) != 1 or "*" in uris[0]:
        repo.add(document, where, f"client {client!r}: a realm (a client with a domain) needs exactly one "
                                  "san_uri identifier, without '*' (its members are REALM:NAME)")
    else:
        realm = uris[0]
    for key in sorted(set(domain) - _DOMAIN_KEYS):
        repo.add(document, at + (key,), f"client {client!r}: unknown key {key!r} in domain "
                                        f"(keys: {', '.join(sorted(_DOMAIN_KEYS))})")

    roles: dict[str, KeyPath] = {}
    listed = domain.get("roles")
    if listed is not None:
        if not isinstance(listed, list):
            repo.add(document, at + ("roles",), "roles must be [[clients.domain.roles]] tables with name = \"...\"")
            listed = []
        for index, role in enumerate(listed):
            role_at = at + ("roles", index)
            name = _check_role(repo, document, client, role_at, role, check_references, "role")
            if name is None:
                continue
            if name in roles:
                repo.add(document, role_at + ("name",),
                         f"client {client!r}: role {name!r} defined twice (first at line {document.line(roles[name])})")
                continue
            roles[name] = role_at + ("name",)

    default = domain.get("default_role")
    default_name: str | None = None
    if default is not None:
        default_at = at + ("default_role",)
        default_name = _check_role(repo, document, client, default_at, default, check_references, "default_role")
        inline = isinstance(default, dict) and ("resources" in default or "permissions" in default)
        if default_name is not None:
            if inline and default_name in roles:
                repo.add(document, default_at, f"client {client!r}: default_role {default_name!r} is also defined "
                                               "in [[clients.domain.roles]]; define it once")
            elif not inline and default_name not in roles:
                known = ", ".join(sorted(roles)) or "none"
                repo.add(document, default_at + ("name",),
                         f"client {client!r}: default_role names role {default_name!r}, which is not defined "
                         f"in [[clients.domain.roles]] (roles: {known}); or give it resources = [...] here")
                default_name = None

    assignments = domain.get("role_assignments")
    if assignments is None:
        return
    if not isinstance(assignments, list):
        repo.add(document, at + ("role_assignments",),
                 "role_assignments must be [[clients.domain.role_assignments]] tables { identity, role }")
        return
    assigned: dict[str, int] = {}
    known_roles = set(roles) | ({default_name} if default_name else set())
    for index, assignment in enumerate(assignments):
        entry_at = at + ("role_assignments", index)
        if not isinstance(assignment, dict):
            repo.add(document, entry_at, "each role assignment must be a table { identity = \"...\", role = \"...\" }")
            continue
        for key in sorted(set(assignment) - _ASSIGNMENT_KEYS):
            repo.add(document, entry_at + (key,), f"client {client!r}: unknown key {key!r} in a role assignment "
                                                  "(keys: identity or identities, role)")
        role = assignment.get("role")
        if not isinstance(role, str) or not role:
            repo.add(document, entry_at + ("role",) if "role" in assignment else entry_at,
                     "a role assignment needs role = \"NAME\"")
        elif role not in known_roles:
            repo.add(document, entry_at + ("role",),
                     f"client {client!r}: role assignment names role {role!r}, which is not defined "
                     f"(roles: {', '.join(sorted(known_roles)) or 'none'})")
        if ("identity" in assignment) == ("identities" in assignment):
            repo.add(document, entry_at,
                     "a role assignment needs identity = \"...\" or identities = [...] (one of them)")
            continue
        if "identity" in assignment:
            values: list[tuple[KeyPath, Any]] = [(entry_at + ("identity",), assignment["identity"])]
        elif isinstance(assignment["identities"], list) and assignment["identities"]:
            values = [(entry_at + ("identities", i), v) for i, v in enumerate(assignment["identities"])]
        else:
            repo.add(document, entry_at + ("identities",), "identities must be a non-empty array of strings")
            continue
        for value_at, value in values:
            if not isinstance(value, str) or not value or any(c.isspace() for c in value):
                repo.add(document, value_at, "an assigned identity must be a non-empty string without spaces")
                continue
            if realm is not None and not value.startswith(realm + ":"):
                repo.add(document, value_at, f"client {client!r}: {value!r} is not in its domain "
                                             f"(members are {realm}:NAME)")
                continue
            if value in assigned:
                repo.add(document, value_at, f"client {client!r}: {value!r} is assigned a role twice "
                                             f"(first at line {assigned[value]})")
                continue
            assigned[value] = document.line(value_at)


def _written(document: _Document, path: KeyPath) -> KeyPath:
    """`path` if it is written as such, else the first written path inside
    it (a [clients.domain] given only through [clients.domain.roles] ...)."""
    if document.index is None or path in document.index.lines:
        return path
    inside = [(line, key) for key, line in document.index.lines.items() if key[:len(path)] == path]
    return min(inside, key=lambda item: item[0])[1] if inside else path


def _check_role(repo: _Repository, document: _Document, client: str, at: KeyPath, role: Any,
                check_references: bool, what: str) -> str | None:
    """A role table { name, resources/permissions }; its name if usable."""
    if not isinstance(role, dict):
        repo.add(document, at, f"client {client!r}: {what} must be a table with name = \"...\"")
        return None
    for key in sorted(set(role) - _ROLE_KEYS):
        repo.add(document, at + (key,), f"client {client!r}: unknown key {key!r} in {what} "
                                        f"(keys: {', '.join(sorted(_ROLE_KEYS))})")
    name = role.get("name")
    if not isinstance(name, str) or not name:
        repo.add(document, at + ("name",) if "name" in role else at, f"client {client!r}: {what} needs name = \"...\"")
        return None
    _check_grants(repo, document, f"role {name!r} of client {client!r}", at, role, check_references)
    return name


def _check_grants(repo: _Repository, document: _Document, who: str, base: KeyPath,
                  spec: dict[str, Any], check_references: bool) -> None:
    """resources = ["NAME", { name = "NAME", operations = [...] }, ...] and
    permissions = [{ resource = "NAME", operations = [...] }]; either table
    may carry designations = { LABEL = "VALUE" } for a capability resource."""
    resources = spec.get("resources")
    if resources is not None:
        if not isinstance(resources, list):
            repo.add(document, base + ("resources",), "resources must be an array of resource names")
        else:
            for index, resource in enumerate(resources):
                at = base + ("resources", index)
                if isinstance(resource, str):
                    _check_reference(repo, document, at, who, resource, check_references)
                elif isinstance(resource, dict):
                    _check_grant_table(repo, document, who, at, resource, "name", check_references)
                else:
                    # (names, or { name = ..., operations = [...] } tables)
                    repo.add(document, at, "resources must be an array of resource names")
    permissions = spec.get("permissions")
    if permissions is None:
        return
    if not isinstance(permissions, list):
        repo.add(document, base + ("permissions",),
                 "permissions must be an array of { resource = ..., operations = [...] } tables")
        return
    for index, permission in enumerate(permissions):
        at = base + ("permissions", index)
        if not isinstance(permission, dict):
            repo.add(document, at, "each permission must be a table { resource = ..., operations = [...] }")
            continue
        _check_grant_table(repo, document, who, at, permission, "resource", check_references)


def _check_grant_table(repo: _Repository, document: _Document, who: str, at: KeyPath, grant: dict[str, Any],
                       key: str, check_references: bool) -> None:
    resource, operations = grant.get(key), grant.get("operations")
    if not isinstance(resource, str) or not resource:
        repo.add(document, at + (key,) if key in grant else at, f"a permission needs a {key} = \"NAME\"")
        return
    known = _check_reference(repo, document, at + (key,), who, resource, check_references)
    if not isinstance(operations, list) or not operations or not all(isinstance(o, str) and o for o in operations):
        repo.add(document, at + ("operations",) if "operations" in grant else at,
                 "a permission needs operations = [\"read\", ...] (non-empty strings)")
    else:
        allowed = known.get("operations") if known is not None else None
        if isinstance(allowed, list):
            for position, operation in enumerate(operations):
                if operation not in allowed:
                    repo.add(document, at + ("operations", position),
                             f"{who}: resource {resource!r} has no operation {operation!r} "
                             f"(its operations: {', '.join(map(str, allowed))})")
    designations = grant.get("designations")
    if designations is None:
        return
    where = at + ("designations",)
    if not isinstance(designations, dict) or "" in designations or not all(
            isinstance(value, str) and value for value in designations.values()):
        repo.add(document, where, "designations must be a table of LABEL = \"VALUE\" (non-empty strings)")
        return
    for label in designations:
        if label in _RESERVED_DESIGNATIONS:
            repo.add(document, where + (label,),
                     f"designation label {label!r} is reserved (a resource's anchor = \"...\" binds the anchor)")
    if known is not None and resource not in repo.capabilities:
        repo.add(document, where, f"{who}: designations apply only to capability resources, and {resource!r} "
                                  f"issues none (add mechanisms = [\"{CAPABILITY}\"] to it)")


def _check_reference(repo: _Repository, document: _Document, where: KeyPath, who: str, resource: str,
                     check_references: bool) -> dict[str, Any] | None:
    """The referenced resource's spec, or None (recording a problem if it
    is undefined and references are checked)."""
    found = repo.resources.get(resource)
    if found is not None:
        return found[1]
    if check_references:
        defined = ", ".join(sorted(repo.resources)) or "none"
        repo.add(document, where, f"{who} names resource {resource!r}, which is not defined "
                                  f"(resources: {defined})")
    return None

_PRIVATE_KEY_NAMES = {"pem_keypair", "private_key", "personal_keypair"}


def _check_secrets(repo: _Repository, document: _Document) -> None:
    """Private keys do not belong in a policy repository."""
    assert document.data is not None
    for path, value in _walk(document.data):
        key = path[-1] if path else None
        if key in _PRIVATE_KEY_NAMES or (isinstance(value, str) and "PRIVATE KEY-----" in value):
            repo.add(document, path, "a private key in the policy repository: keep only public keys here "
                                     "(move it to a 0600 file or a secret store)")


def _walk(value: Any, path: KeyPath = ()) -> Iterator[tuple[KeyPath, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, path + (index,))
    else:
        yield path, value


def _get(data: Any, path: KeyPath) -> Any:
    for key in path:
        data = data[key]
    return data


def _sorted(problems: list[Problem], files: list[str]) -> list[Problem]:
    order = {name: position for position, name in enumerate(files)}
    return sorted(problems, key=lambda p: (order.get(p.file, len(order)), p.line))


def _check(files: list[Path]) -> _Repository:
    repo = _Repository()
    documents = [_read(path, repo.problems) for path in files]
    repo.documents = documents
    parsed = [document for document in documents if document.data is not None]
    for document in parsed:
        _check_resources(repo, document)
    # References are checked when the repository defines resources at all (a
    # lone clients.toml can't say what exists).
    references = bool(repo.resources) or any(
        document.data is not None and "resources" in document.data for document in parsed)
    for document in parsed:
        _check_clients(repo, document, references)
        _check_secrets(repo, document)
    repo.problems = _sorted(repo.problems, [str(path) for path in files])
    return repo


@dataclass(frozen=True)
class RepositoryCheck:
    """The outcome of checking a policy repository."""

    files: list[str]
    problems: list[Problem]
    resources: list[str]
    #: chain name -> nodes, for the resources whose chain is valid
    chains: dict[str, list[dict[str, str]]]
    clients: list[str]
    #: each file's parsed TOML (None where it doesn't parse), in `files` order:
    #: what was checked, for readers that must use exactly that (the authority)
    data: list[dict[str, Any] | None] = field(default_factory=list, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_repository(path: str | Path) -> RepositoryCheck:
    """Check the policy repository at `path` (see :func:`validate_repository`)
    and say what it defines."""
    files = repository_files(path)
    repo = _check(files)
    return RepositoryCheck(files=[str(file) for file in files], problems=repo.problems,
                           resources=list(repo.resources), chains=repo.chains, clients=list(repo.clients),
                           data=[document.data for document in repo.documents])


def validate_repository(path: str | Path) -> list[Problem]:
    """Every problem of the policy repository at `path` (a directory with
    resources.toml and optionally clients.toml, or one .toml file), sorted by
    file and line; empty when it is clean. Raises RepositoryReadError when
    the input can't be read at all."""
    return _check(repository_files(path)).problems


def load_resources(path: str | Path) -> dict[str, list[dict[str, str]]]:
    """The service chains of a resources.toml (or of a repository directory's
    resources.toml): chain name -> ``[{"component", "public_key"}]`` in chain
    order, keys in canonical ``alg/hex`` form, resources without a chain
    left out. Raises RepositoryProblemsError if the file has any problem."""
    root = Path(path)
    file = root / RESOURCES_FILE if root.is_dir() else root
    repo = _check(repository_files(file))
    if repo.problems:
        raise RepositoryProblemsError(repo.problems)
    return repo.chains
