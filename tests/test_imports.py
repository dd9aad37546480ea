"""npool's modules import each other without circles: no module imports (at its top or inside a
function) one that imports it back, directly or through others. A package's own submodules
needing the package are not circles (Python imports the package first), nor is a module's
PEP 562 ``__getattr__`` resolving an alias on first use; everything else is an edge of the
graph, read from the sources' import statements."""
import ast
import pathlib

SOURCE = pathlib.Path(__file__).resolve().parents[1] / "src" / "npool"


def _modules():
    modules = {}
    for path in SOURCE.rglob("*.py"):
        parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _nodes(tree):
    """The nodes of a module, less the bodies of a module-level ``__getattr__`` (PEP 562: a
    name it resolves on first use is an alias of another module's, looked up once both are
    imported - npool.tf's Keras layers are npool.keras' classes) and of ``if TYPE_CHECKING:``
    (never run): neither is an import edge."""
    skipped = [node for node in tree.body if
               (isinstance(node, ast.FunctionDef) and node.name == "__getattr__") or
               (isinstance(node, ast.If) and isinstance(node.test, ast.Name) and
                node.test.id == "TYPE_CHECKING")]
    inside = {id(n) for node in skipped for n in ast.walk(node)}
    return [node for node in ast.walk(tree) if id(node) not in inside]


def _imports(name, path, modules):
    """The npool modules that module ``name`` imports."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in _nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def _cycle_through(start, graph):
    """A path of imports from ``start`` back to itself, or None."""
    stack, seen = [(start, (start,))], set()
    while stack:
        node, path = stack.pop()
        for following in graph[node]:
            if following == start:
                return path + (start,)
            if following not in seen:
                seen.add(following)
                stack.append((following, path + (following,)))
    return None


def test_no_module_imports_one_that_imports_it_back():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert "npool._checks" in graph and graph["npool.torch._ops"]  # the graph was read
    cycles = [cycle for cycle in map(lambda name: _cycle_through(name, graph), sorted(graph))
              if cycle]
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_test_module_imports_another():
    """Shared test code lives in helpers.py, gpu_backends.py and conftest.py: a test module
    imported by another would run its tests twice and breaks --import-mode=importlib."""
    tests = pathlib.Path(__file__).resolve().parent
    offenders = []
    for path in sorted(tests.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name} imports {name}" for name in names
                          if name.split(".")[0].startswith("test_")]
    assert not offenders, "\n".join(offenders)
