"""The house's layers, read from the source with ``ast`` (every module of kiyotaka_ws, imports inside
functions included): shared/ARCHITECTURE.md's table, kept true.

Rules, each its own test, each failure a list of ``path:line: what is wrong``:

* every module has a layer (``LAYERS`` below: a new module must be placed);
* a module imports only the layers its own may import (``MAY_IMPORT``): the transport nothing of
  Kiyotaka outside itself, the vocabulary only itself, the seam only the vocabulary, nothing below
  the facade any facade module;
* no module reads another object's private attributes (``x._name`` where ``x`` is not ``self`` or
  ``cls``) or imports a private name from another module of the package;
* no import cycle, lazy imports (inside functions) included; imports under ``if TYPE_CHECKING:``
  never run, so they count for the layers but not for cycles;
* an error that carries a URL is built with ``redact_url(...)`` (the vocabulary cannot redact it);
* a module's logger is ``logging.getLogger(__name__)``.
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterator

import attrs

import kiyotaka_ws

PACKAGE = pathlib.Path(kiyotaka_ws.__file__).parent
NAME = "kiyotaka_ws"

VOCABULARY, TRANSPORT, SEAM, CORE, FACADE, TOOLS = "vocabulary", "transport", "seam", "core", "facade", "tools"

# Module (dotted, under kiyotaka_ws; a package covers its modules unless they are named) -> layer.
LAYERS = {
    "errors": VOCABULARY, "status": VOCABULARY, "channels": VOCABULARY, "events": VOCABULARY,
    "protocol": VOCABULARY, "_version": VOCABULARY, "threads": VOCABULARY,
    "_transport": TRANSPORT,
    "source": SEAM,
    "session": CORE, "session_core": CORE, "dispatch": CORE, "fastpath": CORE, "latency": CORE, "recording": CORE,
    "replay": CORE, "external": CORE, "_arguments": CORE, "pacing": CORE, "shards": CORE,
    "_nats": CORE,  # the NATS consumer is a source, like a recording...
    "_nats.relay": FACADE,  # ... while the relay is built on a client
    "": FACADE,  # kiyotaka_ws/__init__.py
    "client": FACADE, "streams": FACADE, "testing": FACADE, "metrics": FACADE, "nats": FACADE,
    "analysis": FACADE,
    "_cli": TOOLS, "__main__": TOOLS,
}

MAY_IMPORT = {
    VOCABULARY: {VOCABULARY},
    TRANSPORT: {TRANSPORT},
    SEAM: {SEAM, VOCABULARY},
    CORE: {CORE, SEAM, VOCABULARY, TRANSPORT},
    FACADE: {FACADE, CORE, SEAM, VOCABULARY, TRANSPORT},
    TOOLS: {TOOLS, FACADE, CORE, SEAM, VOCABULARY, TRANSPORT},
}

# Private-looking attributes that are public API of the standard library: a namedtuple's methods
# start with "_" only so that they cannot clash with field names (BookLevel._make and so on).
STDLIB_PRIVATE_API = {"_make", "_replace", "_asdict", "_fields", "_field_defaults"}

# Cycles that exist for now, each with why and until when (none is the goal).
KNOWN_CYCLES: dict[frozenset[str], str] = {}


@attrs.frozen
class Import:
    source: str        # the importing module
    target: str        # an imported module of the package
    line: int
    type_only: bool    # under ``if TYPE_CHECKING:``


def modules() -> dict[str, pathlib.Path]:
    """Every module of the package: dotted name -> file."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join([NAME, *parts])] = path
    return found


MODULES = modules()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}"


def layer_of(module: str) -> str | None:
    """The layer of the longest entry of ``LAYERS`` that names ``module`` or a package holding it."""
    rest = module[len(NAME) + 1:] if module != NAME else ""
    parts = rest.split(".") if rest else []
    for n in range(len(parts), -1, -1):
        layer = LAYERS.get(".".join(parts[:n]))
        if layer is not None and (n > 0 or not parts):
            return layer
    return None


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute name of ``from <node.module> import ...`` written in ``module``."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not _is_package(module):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The package's modules an import statement runs: each named module and, for a submodule,
    the packages above it that the importer is not itself inside."""
    if isinstance(node, ast.Import):
        named = [alias.name for alias in node.names]
    else:
        base = _resolve(module, node)
        named = [base] + [f"{base}.{alias.name}" for alias in node.names]
    seen = set()
    for name in named:
        if name not in MODULES:
            continue
        parts = name.split(".")
        for n in range(1, len(parts) + 1):
            target = ".".join(parts[:n])
            inside = module.startswith(target + ".") or target == module  # already running
            if target in MODULES and not inside and target not in seen:
                seen.add(target)
                yield target


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _visit(module: str, node: ast.AST, type_only: bool, found: list[Import]) -> None:
    if isinstance(node, ast.If) and _type_checking(node.test):
        for child in node.body:
            _visit(module, child, True, found)
        for child in node.orelse:
            _visit(module, child, type_only, found)
        return
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        found.extend(Import(module, target, node.lineno, type_only) for target in _targets(module, node))
    for child in ast.iter_child_nodes(node):
        _visit(module, child, type_only, found)


def imports() -> list[Import]:
    """Every import of a package module, wherever it is written (functions included)."""
    found: list[Import] = []
    for module, tree in TREES.items():
        _visit(module, tree, False, found)
    return found


IMPORTS = imports()


def fail_with(problems: list[str], rule: str) -> None:
    assert not problems, f"{rule}:\n  " + "\n  ".join(problems)


# -- the tests ---------------------------------------------------------------------------------------

def test_every_module_has_a_layer() -> None:
    fail_with([f"{where(m, 1)}: {m} is in no layer (add it to LAYERS, as in ARCHITECTURE.md's table)"
               for m in MODULES if layer_of(m) is None], "modules without a layer")


def test_the_transport_imports_nothing_of_kiyotaka() -> None:
    fail_with([f"{where(i.source, i.line)}: {i.source} imports {i.target}"
               for i in IMPORTS if layer_of(i.source) == TRANSPORT and layer_of(i.target) != TRANSPORT],
              "the transport (_transport/) imports nothing of kiyotaka_ws outside itself")


def test_nothing_below_the_facade_imports_it() -> None:
    below = {VOCABULARY, TRANSPORT, SEAM, CORE}
    fail_with([f"{where(i.source, i.line)}: {i.source} ({layer_of(i.source)}) imports {i.target} (facade)"
               for i in IMPORTS if layer_of(i.source) in below and layer_of(i.target) == FACADE],
              "nothing below the facade imports a facade module (client, streams, testing, metrics, nats, ...)")


def test_no_module_imports_a_layer_it_may_not() -> None:
    problems = []
    for i in IMPORTS:
        mine, theirs = layer_of(i.source), layer_of(i.target)
        if mine is not None and theirs is not None and theirs not in MAY_IMPORT[mine]:
            allowed = ", ".join(sorted(MAY_IMPORT[mine]))
            problems.append(f"{where(i.source, i.line)}: {i.source} ({mine}) imports {i.target} ({theirs}); "
                            f"a {mine} module may import: {allowed}")
    fail_with(problems, "imports against ARCHITECTURE.md's layers")


def _own_instances(function: ast.AST) -> set[str]:
    """Names that a classmethod binds to an instance it builds itself (``client = cls(...)``): an
    alternate constructor setting up its own object, as ``__init__`` does through ``self``."""
    names: set[str] = set()
    for node in ast.walk(function):
        if (isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name) and node.value.func.id == "cls"):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def private_reach_ins() -> list[str]:
    problems = []
    for module, tree in TREES.items():
        own: dict[int, set[str]] = {}  # id(attribute node) -> names that are the function's own object
        for function in ast.walk(tree):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = _own_instances(function)
                if names:
                    for node in ast.walk(function):
                        own.setdefault(id(node), set()).update(names)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                attr, value = node.attr, node.value
                if not attr.startswith("_") or (attr.startswith("__") and attr.endswith("__")):
                    continue
                if isinstance(value, ast.Name) and (value.id in ("self", "cls") or value.id in own.get(id(node), ())):
                    continue
                if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super":
                    continue
                if attr in STDLIB_PRIVATE_API:
                    continue
                problems.append(f"{where(module, node.lineno)}: reads {ast.unparse(node)}")
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(module, node)
                if source == NAME or source.startswith(NAME + "."):
                    for alias in node.names:
                        private = alias.name.startswith("_") and not alias.name.endswith("__")
                        if private and f"{source}.{alias.name}" not in MODULES:
                            problems.append(f"{where(module, node.lineno)}: imports the private {alias.name} "
                                            f"of {source}")
    return problems


def test_no_module_reads_another_objects_private_attributes() -> None:
    fail_with(private_reach_ins(), "private attributes read from outside their object (use a named, public "
                                   "method of the seam instead: source.Host, source.Source)")


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), or with a self-loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _shortest_cycle(edges: dict[str, set[str]], component: list[str]) -> list[str]:
    """One shortest cycle through the component's first module, as a path back to it (BFS)."""
    start, members = component[0], set(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(edges.get(v, set()) & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if w not in came_from:
                    came_from[w] = v
                    following.append(w)
        frontier = following
    return [start, start]


def test_no_import_cycles() -> None:
    edges: dict[str, set[str]] = {}
    lines: dict[tuple[str, str], int] = {}
    for i in IMPORTS:
        if not i.type_only:
            edges.setdefault(i.source, set()).add(i.target)
            lines.setdefault((i.source, i.target), i.line)
    cycles = _cycles(edges)
    problems = [f"{' <-> '.join(sorted(known))} is no longer a cycle: take it out of KNOWN_CYCLES"
                for known in KNOWN_CYCLES if known not in {frozenset(c) for c in cycles}]
    for component in cycles:
        if frozenset(component) in KNOWN_CYCLES:
            continue
        path = _shortest_cycle(edges, component)
        links = [f"{where(a, lines[a, b])}: {a} imports {b}" for a, b in zip(path, path[1:])]
        problems.append(f"a cycle ({len(component)} modules are caught in it):\n    " + "\n    ".join(links))
    fail_with(problems, "import cycles (lazy imports inside functions count)")


def test_the_cycle_check_sees_lazy_imports_and_packages() -> None:
    """The checker itself: a lazy import is an edge, a submodule import runs its package."""
    lazy = [i for i in IMPORTS if i.source == f"{NAME}.client" and i.target == f"{NAME}._nats.consumer"]
    assert lazy and not lazy[0].type_only  # from_nats imports it inside the method
    assert any(i.source == f"{NAME}.client" and i.target == f"{NAME}._nats" for i in IMPORTS)
    graph = {"a": {"b", "d"}, "b": {"c"}, "c": {"a"}, "d": {"b"}}
    assert _cycles(graph) == [["a", "b", "c", "d"]] and _shortest_cycle(graph, ["a", "b", "c", "d"]) == ["a", "b", "c", "a"]


def test_errors_that_carry_a_url_get_it_redacted() -> None:
    problems = []
    for module, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "ConnectionFailedError":
                for keyword in node.keywords:
                    value = keyword.value
                    if keyword.arg == "url" and not (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                                                     and value.func.id == "redact_url"):
                        problems.append(f"{where(module, node.lineno)}: url={ast.unparse(value)}")
    fail_with(problems, "ConnectionFailedError(url=...) takes redact_url(...): errors.py cannot redact it itself")


def test_loggers_are_named_by_module() -> None:
    problems = []
    for module, tree in TREES.items():
        for node in tree.body:  # module level: the module's own logger
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                func = node.value.func
                if isinstance(func, ast.Attribute) and func.attr == "getLogger":
                    args = node.value.args
                    if not (len(args) == 1 and isinstance(args[0], ast.Name) and args[0].id == "__name__"):
                        problems.append(f"{where(module, node.lineno)}: {ast.unparse(node)}")
    fail_with(problems, "a module's logger is logging.getLogger(__name__) (a child of 'kiyotaka_ws')")


def test_the_private_access_rule_catches_a_reach_in(tmp_path: pathlib.Path) -> None:
    """The rule fails on what it is meant to catch, and spares what it is meant to spare."""
    tree = ast.parse("class C:\n"
                     "    @classmethod\n"
                     "    def make(cls):\n"
                     "        c = cls()\n"
                     "        c._x = 1\n"
                     "        return c\n"
                     "def f(client, level):\n"
                     "    level._make(())\n"
                     "    return client._done\n")
    saved = dict(TREES)
    TREES.clear()
    TREES[f"{NAME}.client"] = tree
    try:
        assert [p.split(": ", 1)[1] for p in private_reach_ins()] == ["reads client._done"]
    finally:
        TREES.clear()
        TREES.update(saved)


def test_setup_cfg_lists_every_package() -> None:
    """Every folder of the package is shipped (setup.cfg names packages one by one)."""
    import configparser

    config = configparser.ConfigParser()
    config.read(PACKAGE.parent / "setup.cfg")
    listed = {name.strip() for name in config["options"]["packages"].split(",")}
    packages = {m for m in MODULES if _is_package(m)}
    assert packages == listed, f"setup.cfg [options] packages: add {sorted(packages - listed)}"


def test_the_client_offers_the_host_seam() -> None:
    """What extras and tools use of a client is ``source.Host``, and ``KiyotakaClient`` has all of it."""
    import inspect

    from kiyotaka_ws import KiyotakaClient
    from kiyotaka_ws.source import Host

    members = [name for name in vars(Host) if not name.startswith("_")]
    assert members and not [name for name in members if not hasattr(KiyotakaClient, name)]
    for name in members:
        mine, theirs = getattr(Host, name), getattr(KiyotakaClient, name)
        if inspect.isfunction(mine):
            assert list(inspect.signature(mine).parameters) == list(inspect.signature(theirs).parameters), name
