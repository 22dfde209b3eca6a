"""The import graph stays layered: read from the source (ast), every import counted, deferred ones too."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

SERVICE = ROOT / "service"
EXPORT = ROOT / "export"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(path: Path) -> set[str]:
    """Every project module `path` imports, at any depth of the file (`from a import b`: a.b when b is a
    module, else a)."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if is_module(full) else base)
    return {name for name in found if name.split(".")[0] in ("service", "export") and is_module(name)}


def graph(root: Path) -> dict[str, set[str]]:
    return {module_name(p): imported_modules(p) for p in sorted(root.rglob("*.py")) if "gen" not in p.parts}


def find_cycle(edges: dict[str, set[str]]) -> list[str]:
    """One import circle of `edges` (as a path that ends where it starts), or [] when there is none."""
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> list[str]:
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target in on_stack:
                return [*stack[stack.index(target) :], target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        on_stack.discard(node)
        done.add(node)
        return []

    for start in sorted(edges):
        if start not in done:
            cycle = visit(start)
            if cycle:
                return cycle
    return []


def test_the_cycle_finder_finds_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_service_imports_have_no_circle() -> None:
    edges = graph(SERVICE)
    # A package's __init__ imported on the way to its modules is not an arrow back.
    edges = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in edges.items()}
    assert find_cycle(edges) == []


# service/ from the bottom up: a module imports only from its own layer or the ones below it.
LAYERS = (
    (
        "the base",
        ("errors", "contract", "keys_file", "settings", "metrics", "logs", "gen", "request_id", "tracing", "priority"),
    ),
    ("the request path and Triton", ("pipeline", "repository", "model_identity", "triton")),
    ("the serving state and lifecycle", ("models", "state", "admission", "lifecycle")),
    ("the APIs", ("api",)),
    ("the process floor", ("process",)),
    ("one facade process", ("server",)),
    ("N worker processes", ("workers",)),
    ("entry points and the client library", ("serve", "cli", "client")),
)


def layer_of(module: str) -> int:
    top = module.split(".")[1]
    for index, (_, names) in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"{module} is in no layer of LAYERS: add it where it belongs")


def test_no_arrow_from_a_lower_module_to_a_higher_one() -> None:
    upward = [
        f"{module} ({LAYERS[layer_of(module)][0]}) -> {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in graph(SERVICE).items()
        if module != "service"
        for target in targets
        if target != "service" and layer_of(target) > layer_of(module)
    ]
    assert upward == []


def test_the_process_floor_is_below_both_process_modules() -> None:
    edges = graph(SERVICE)
    floor = [m for m in edges if m.startswith("service.process")]
    assert floor
    for module in floor:
        assert not edges[module] & {"service.server", "service.workers", "service.serve"}, module
    assert "service.workers" not in edges["service.server"]
    assert "service.server" in edges["service.workers"]  # a worker is one facade process
    # Errors are the lowest room: they import nothing of the project.
    assert edges["service.errors"] == set()


def test_export_imports_only_the_contract_of_the_service() -> None:
    """Rules export and serving share live in service/contract.py; service.cli only to register commands."""
    for module, targets in graph(EXPORT).items():
        service = {t for t in targets if t.startswith("service")}
        allowed = {"service", "service.contract"} | ({"service.cli"} if module == "export.cli" else set())
        assert service <= allowed, (module, service - allowed)


def test_the_contract_reads_no_checkpoint_and_imports_no_pipeline() -> None:
    targets = imported_modules(SERVICE / "contract.py")
    assert not {t for t in targets if t.startswith("service.")}, targets
