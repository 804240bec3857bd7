"""The package's import graph: no cycle (issue 18), and the TLS engine stays sans-IO.

Read from the source with ``ast``, imports under ``if TYPE_CHECKING:`` included: a cycle that only
the type checker sees is still two modules that cannot be read one without the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import bbproxy

PACKAGE = Path(bbproxy.__file__).parent


def imports(path: Path) -> set[str]:
    """The top-level names ``path`` imports: ``bbproxy.x`` as ``.x``, anything else as itself."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add("." + node.module.split(".")[0])
            else:
                found.update("." + alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
    return found


def package_graph() -> dict[str, set[str]]:
    modules = {path.stem: path for path in PACKAGE.glob("*.py")}
    return {
        name: {dep[1:] for dep in imports(path) if dep.startswith(".") and dep[1:] in modules}
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None."""
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        for dep in sorted(graph[name]):
            if dep in path:
                return [*path[path.index(dep) :], dep]
            if dep not in done:
                cycle = visit(dep, [*path, dep])
                if cycle:
                    return cycle
        done.add(name)
        return None

    for name in sorted(graph):
        if name not in done:
            cycle = visit(name, [name])
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycle() -> None:
    graph = package_graph()
    assert {"session", "relay", "handshake", "host", "server"} <= graph.keys()
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_tls_engine_does_no_io() -> None:
    """tlsengine.py is sans-IO like framing.py: bytes in, bytes out, no loop, no socket."""
    assert imports(PACKAGE / "tlsengine.py").isdisjoint({"asyncio", "socket", "selectors", "uvloop"})
