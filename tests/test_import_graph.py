"""The package's import graph: no module imports itself through others, and the layers
import one way (transports -> adapters -> core -> storage).

Every import counts, also those inside functions and under ``TYPE_CHECKING``: an import
that only a type checker follows is still a dependency, and one moved into a function to
dodge a cycle is still a cycle.

    .venv/bin/python -m tests.test_import_graph     # prints every cycle and layer breach
"""

import ast
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
# Source folders and the package names they install as (pyproject.toml's package-dir).
ROOTS = {
    "polybroker": TOP / "polybroker",
    "polybroker.protocols": TOP / "protocols",
    "polybroker.storage": TOP / "storage",
}
# The protocol-neutral core: no I/O, no protocol bytes, no store.
CORE = {
    "polybroker.broker", "polybroker.destinations", "polybroker.exchange_patterns",
    "polybroker.exchanges", "polybroker.journal", "polybroker.limits", "polybroker.message",
    "polybroker.overflow", "polybroker.queue_acks", "polybroker.queue_bounds",
    "polybroker.queue_entries", "polybroker.queue_expiry", "polybroker.queue_registry",
    "polybroker.queue_state", "polybroker.queues",
    "polybroker.refusals", "polybroker.retained", "polybroker.router", "polybroker.sessions",
    "polybroker.shared", "polybroker.timers", "polybroker.delayed",
}
# What the core may not import: the layers above it, and the store's implementation.
ABOVE_CORE = (
    "polybroker.adapters", "polybroker.transports", "polybroker.server", "polybroker.cli",
    "polybroker.persistence", "polybroker.durability", "polybroker.testing",
)


def modules() -> dict[str, tuple[Path, bool]]:
    """Every module by dotted name: its file, and whether it is a package."""
    found = {}
    for package, folder in ROOTS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            found[".".join([package, *parts])] = (path, is_package)
    return found


def imports_of(name: str, path: Path, is_package: bool, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in its file."""
    here = name if is_package else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            for alias in node.names:
                # ``from . import x`` and ``from .a import b`` may name submodules.
                child = f"{module}.{alias.name}"
                targets.add(child if child in known else module)
    return {target for target in targets if target in known and target != name}


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, *found[name], known) for name in sorted(found)}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def layer_breaches(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{name} -> {target}"
        for name in CORE
        for target in graph.get(name, ())
        if target.startswith(ABOVE_CORE)
    )


def test_graph_sees_the_package():
    graph = import_graph()
    assert {"polybroker.broker", "polybroker.storage.store"} <= set(graph)
    assert "polybroker.message" in graph["polybroker.broker"]
    assert "polybroker.storage.record" in graph["polybroker.storage.store"]


def test_cycles_are_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_core_and_storage_have_no_import_cycles():
    graph = import_graph()
    outside = {n for n in graph if n.startswith(("polybroker.adapters", "polybroker.transports"))}
    assert cycles({n: t - outside for n, t in graph.items() if n not in outside}) == []


def test_core_imports_nothing_above_it():
    assert layer_breaches(import_graph()) == []


def test_package_has_no_import_cycles():
    assert cycles(import_graph()) == []


if __name__ == "__main__":
    graph = import_graph()
    for component in cycles(graph):
        print("cycle:", " ".join(component))
    for breach in layer_breaches(graph):
        print("layer:", breach)
