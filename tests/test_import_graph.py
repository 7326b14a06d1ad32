"""The package's import graph has no cycles (issue 15).

Read from the source with ``ast``, not by importing: an edge is an ``import``/``from ... import`` of a
phonebridge module. The rule is over module-level imports (what runs when a module is imported), leaving out
``if TYPE_CHECKING:`` blocks, which never run. A package's ``__init__`` is not an implicit edge of its
submodules: it runs first, but a child never needs what its parent imports.

A second test reads function-local imports too: a lazy import is fine for start-up time, but one that only
dodges a cycle is the same knot, tied later. It lists the cycles those would make, so the known ones stay
known and no new one comes in.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "phonebridge"

# Cycles through function-local imports that remain, each as the list of modules from its smallest name round
# to it again. Empty: every one found by the issue (cli <-> workers, replay <-> testing.replay) is gone.
KNOWN_LOCAL_CYCLES: list[list[str]] = []


def module_name(path: Path) -> str:
    parts = ["phonebridge", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(body: list[ast.stmt], *, local: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported (and, if `local`, in its functions)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and not local:
            continue
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _imports(node.orelse, local=local)
        else:  # every other compound statement (if, try, with, for, match, class bodies...) runs its blocks
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    yield from _imports([child], local=local)
                elif isinstance(child, (ast.excepthandler, ast.match_case)):
                    yield from _imports(child.body, local=local)


def _targets(node: ast.Import | ast.ImportFrom, here: str, is_package: bool, known: set[str]) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            name = alias.name
            while name and name not in known:  # `import phonebridge.a.b` needs phonebridge.a.b
                name = name.rpartition(".")[0]
            if name:
                yield name
        return
    base = node.module or ""
    if node.level:
        anchor = here.split(".") if is_package else here.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, *([base] if base else [])])
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        if submodule in known:
            yield submodule  # `from phonebridge import replay` imports the module phonebridge.cassette.replay
        elif base in known:
            yield base


def import_graph(*, local: bool = False) -> dict[str, set[str]]:
    """phonebridge module -> the phonebridge modules it imports (module level; with `local`, in functions too)."""
    found = modules()
    known = set(found)
    graph: dict[str, set[str]] = {}
    for name, path in found.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges = {
            target
            for node in _imports(tree.body, local=local)
            for target in _targets(node, name, path.name == "__init__.py", known)
        }
        edges.discard(name)
        # A submodule importing its own package (or an ancestor) is the normal package pattern, not a cycle.
        graph[name] = {t for t in edges if not name.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of the graph (Tarjan, then a shortest walk round it)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_one_cycle(graph, component) for component in sorted(components)]


def _one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest cycle from the component's first module back to it (breadth-first inside the component)."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & members):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle in component {component}")  # Tarjan only hands over cyclic components


def _show(found: list[list[str]]) -> str:
    return "\n".join(" -> ".join(cycle) for cycle in found)


def test_the_package_has_no_import_cycle_at_module_level() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles (module-level imports):\n" + _show(found)


def test_function_local_imports_add_no_cycle_beyond_the_known_ones() -> None:
    found = cycles(import_graph(local=True))
    assert found == KNOWN_LOCAL_CYCLES, "import cycles through function-local imports:\n" + _show(found)


def test_the_graph_sees_what_the_package_imports() -> None:
    # The reader itself: a cycle test over a graph with no edges would pass on anything.
    graph, lazy = import_graph(), import_graph(local=True)
    assert "phonebridge.errors" in graph["phonebridge.call.core"]
    assert "phonebridge.testing.harness" in graph["phonebridge.testing.replay"]
    assert "phonebridge.agent.definition" not in graph["phonebridge"]  # under `if TYPE_CHECKING:` only
    assert "phonebridge.agent.definition" in lazy["phonebridge"]  # ...and in the lazy __getattr__
    assert "phonebridge.server.app" not in graph["phonebridge.cli"] and "phonebridge.server.app" in lazy["phonebridge.server.serving"]


def test_the_reader_finds_imports_in_every_kind_of_block() -> None:
    source = """
import phonebridge.a
if TYPE_CHECKING:
    import phonebridge.hidden
else:
    import phonebridge.b
try:
    import phonebridge.c
except ImportError:
    import phonebridge.d
class K:
    import phonebridge.e
async def f():
    async with x:
        import phonebridge.lazy
    match y:
        case 1:
            import phonebridge.lazier
"""
    def names(local: bool) -> set[str]:
        return {alias.name for node in _imports(ast.parse(source).body, local=local) for alias in node.names}

    assert names(False) == {f"phonebridge.{m}" for m in "abcde"}
    assert names(True) == names(False) | {"phonebridge.lazy", "phonebridge.lazier"}


def test_the_moved_replay_command_says_where_it_went() -> None:
    import phonebridge.cassette.replay

    with pytest.raises(AttributeError, match="import it from phonebridge.cassette.replay_cli"):
        phonebridge.cassette.replay.run_replay  # noqa: B018


def test_cycles_are_found_and_printed() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d", "a"}, "e": {"f"}, "f": {"e"}}
    assert cycles(graph) == [["a", "b", "c", "a"], ["e", "f", "e"]]
    assert _show(cycles(graph)) == "a -> b -> c -> a\ne -> f -> e"
