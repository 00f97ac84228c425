"""The package layout reads in one direction: no import cycles, nothing outside rmlora.cli imports the CLI, and each
sub-package imports only from the layers before it (README, "Layout").

The import graph is read from the source with `ast`, so imports inside functions count as much as those at the top
of a module: a cycle hidden behind a function-level import is still a cycle.
"""

from __future__ import annotations

import ast
import os

import pytest

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src", "rmlora")

# The layers, lowest first; a module may import from its own layer and the ones before it. Top-level modules that
# are not packages (errors, lists, config) are layers of their own.
LAYERS = [
    "errors",
    "lists",
    "config",
    "io",  # files on disk (atomic writes, PEFT adapter files, the run folder): knows nothing of the method
    "core",
    "methods",
    "training",
    "analysis",
    "tasks",
    "harness",
    "assets",
    "recipes",  # the paper's tables and figures as files of data, run through the harness
    "bench",
    "cli",
]


def module_files() -> dict[str, str]:
    """Every module of rmlora: dotted name -> path."""
    modules = {}
    for root, _, files in os.walk(SRC):
        for f in files:
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(root, f), os.path.dirname(SRC))[:-3].replace(os.sep, ".")
            modules[rel.removesuffix(".__init__")] = os.path.join(root, f)
    return modules


def imported_modules(name: str, path: str, known: set[str]) -> set[str]:
    """The rmlora modules that `name` imports anywhere in its body (top level, functions, TYPE_CHECKING excluded)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()
    type_checking = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for n in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            # `from rmlora.io import atomic` imports the module rmlora.io.atomic
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("rmlora"):
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        # a package's __init__ re-exporting its children is not a dependency of the children on the package
        graph[name] = {t for t in imported_modules(name, path, known) if not name.startswith(t + ".")}
    return graph


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def strongly_connected_components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative), written out because the test must not depend on a graph library."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(root):
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_the_graph_reader_sees_function_level_and_relative_imports(tmp_path):
    """The reader itself, on a made-up package: a cycle through a function-level import is found."""
    pkg = tmp_path / "rmlora"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from rmlora.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from .. import a\n")
    known = {"rmlora", "rmlora.a", "rmlora.sub", "rmlora.sub.b"}
    graph = {
        "rmlora.a": imported_modules("rmlora.a", str(pkg / "a.py"), known),
        "rmlora.sub.b": imported_modules("rmlora.sub.b", str(pkg / "sub" / "b.py"), known),
    }
    assert graph == {"rmlora.a": {"rmlora.sub.b"}, "rmlora.sub.b": {"rmlora.a"}}
    assert strongly_connected_components(graph) == [["rmlora.a", "rmlora.sub.b"]]


def test_no_import_cycles():
    cycles = strongly_connected_components(import_graph())
    assert not cycles, "import cycles (module-level or function-level imports): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_nothing_outside_the_cli_imports_the_cli():
    offenders = sorted(
        f"{name} imports {target}"
        for name, targets in import_graph().items()
        if not name.startswith("rmlora.cli")
        for target in targets
        if target.startswith("rmlora.cli")
    )
    assert not offenders, offenders


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_imports_only_from_the_layers_before_it(layer):
    order = {name: i for i, name in enumerate(LAYERS)}
    offenders = sorted(
        f"{name} imports {target}"
        for name, targets in import_graph().items()
        if layer_of(name) == layer
        for target in targets
        if layer_of(target) is not None and order.get(layer_of(target), -1) > order[layer]
    )
    assert not offenders, offenders


def test_every_sub_package_has_a_layer():
    layers = {layer_of(name) for name in module_files() if layer_of(name)}
    assert layers <= set(LAYERS), f"add {sorted(layers - set(LAYERS))} to LAYERS (and to the README's Layout)"
