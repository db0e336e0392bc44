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
                 nodes: Any) -> list[dict[str, str]] | None:
    if not isinstance(nodes, list):
        repo.add(document, where, "nodes must be an array of { component = ..., public_key = ... } tables")
        return None
    if not nodes:
        repo.add(document, where, f"the service chain of {name!r} has no nodes")
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
                     f"duplicate component {component!r} in the service chain of {name!r} "
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


def _check_clients(repo: _Repository, document: _Document, check_references: bool) -> None:
    assert document.data is not None
    clients = document.data.get("clients")
    if clients is None:
        return
    entries: list[tuple[str, KeyPath, dict[str, Any]]] = []
    if isinstance(clients, dict):
        for name, spec in clients.items():
            if not isinstance(spec, dict):
                repo.add(document, ("clients", name), f"client {name!r} must be a table ([clients.{name}])")
                continue
            entries.append((name, ("clients", name), spec))
    elif isinstance(clients, list):
        for index, spec in enumerate(clients):
            at: KeyPath = ("clients", index)
            if not isinstance(spec, dict):
                repo.add(document, at, "each [[clients]] entry must be a table")
                continue
            name = spec.get("name")
            if not isinstance(name, str) or not name:
                repo.add(document, at, "a [[clients]] entry needs a non-empty name = \"...\"")
                continue
            entries.append((name, at + ("name",), spec))
    else:
        repo.add(document, ("clients",), "clients must be [clients.NAME] tables or [[clients]] entries")
        return
    for name, where, spec in entries:
        if name in repo.clients:
            first, first_at = repo.clients[name]
            repo.add(document, where, f"duplicate client {name!r} (first defined at {repo.at(first, first_at)})")
            continue
        repo.clients[name] = (document, where)
        base = where[:-1] if where[-1] == "name" else where
        _check_grants(repo, document, name, base, spec, check_references)


def _check_grants(repo: _Repository, document: _Document, client: str, base: KeyPath,
                  spec: dict[str, Any], check_references: bool) -> None:
    resources = spec.get("resources")
    if resources is not None:
        if not isinstance(resources, list) or not all(isinstance(r, str) for r in resources):
            repo.add(document, base + ("resources",), "resources must be an array of resource names")
        else:
            for index, resource in enumerate(resources):
                _check_reference(repo, document, base + ("resources", index), client, resource, check_references)
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
        resource, operations = permission.get("resource"), permission.get("operations")
        if not isinstance(resource, str) or not resource:
            repo.add(document, at + ("resource",) if "resource" in permission else at,
                     "a permission needs a resource = \"NAME\"")
            continue
        known = _check_reference(repo, document, at + ("resource",), client, resource, check_references)
        if not isinstance(operations, list) or not operations or not all(isinstance(o, str) and o for o in operations):
            repo.add(document, at + ("operations",) if "operations" in permission else at,
                     "a permission needs operations = [\"read\", ...] (non-empty strings)")
            continue
        allowed = known.get("operations") if known is not None else None
        if isinstance(allowed, list):
            for position, operation in enumerate(operations):
                if operation not in allowed:
                    repo.add(document, at + ("operations", position),
                             f"client {client!r}: resource {resource!r} has no operation {operation!r} "
                             f"(its operations: {', '.join(map(str, allowed))})")


def _check_reference(repo: _Repository, document: _Document, where: KeyPath, client: str, resource: str,
                     check_references: bool) -> dict[str, Any] | None:
    """The referenced resource's spec, or None (recording a problem if it
    is undefined and references are checked)."""
    found = repo.resources.get(resource)
    if found is not None:
        return found[1]
    if check_references:
        defined = ", ".join(sorted(repo.resources)) or "none"
        repo.add(document, where, f"client {client!r} names resource {resource!r}, which is not defined "
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

    @property
    def ok(self) -> bool:
        return not self.problems


def check_repository(path: str | Path) -> RepositoryCheck:
    """Check the policy repository at `path` (see :func:`validate_repository`)
    and say what it defines."""
    files = repository_files(path)
    repo = _check(files)
    return RepositoryCheck(files=[str(file) for file in files], problems=repo.problems,
                           resources=list(repo.resources), chains=repo.chains, clients=list(repo.clients))


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
