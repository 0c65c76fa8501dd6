"""The service's import structure: data flows one way (transport -> core -> engine), so
the import graph of service/ has no cycle, every package imports only the layers below it,
the transports never import each other, the layers below them know no wire library, the
wire protocol and the client stay light, nothing served imports the training tooling or the
tests, and the README's layout table names every package there is."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "service"
SERVED = (SERVICE, ROOT / "models")
TESTS = ROOT / "tests"
MAX_LINES = 400

# Each part of service/ (a subpackage, or a top-level module) and the parts it may import.
LAYERS = {
    "protocol": set(),
    "config": {"protocol"},
    "engine": {"config", "protocol"},
    "pipelines": {"config", "engine", "protocol"},
    "core": {"config", "engine", "pipelines", "protocol"},
    "monitoring": {"config", "engine", "pipelines", "core", "protocol"},
    "kserve": {"config", "engine", "core", "protocol"},
    "compat": {"config", "engine", "pipelines", "core", "protocol"},
    "http": {"config", "engine", "core", "monitoring", "kserve", "compat", "protocol"},
    "grpc": {"config", "engine", "core", "monitoring", "kserve", "protocol"},
    "app": {"config", "engine", "core", "monitoring", "http", "grpc", "protocol"},
    "cli": {"config", "engine", "core", "monitoring", "app", "protocol"},
    "launcher": {"cli"},
    "rayserve": {"config", "engine", "core", "http", "app", "protocol"},
    "client": {"protocol", "grpc.proto"},
}
TRANSPORTS = ("http", "grpc")
WIRE_LIBRARIES = ("fastapi", "starlette", "uvicorn", "grpc", "grpc_health", "tritonclient")
WIRE_FREE = ("protocol", "config", "engine", "pipelines", "core", "monitoring", "kserve", "compat")
# What the wire protocol may import (beside itself), and what importing the client must not
# load: a trainer's process takes the client without the server's stack.
PROTOCOL_IMPORTS = {"__future__", "enum", "typing", "pydantic"}
CLIENT_MUST_NOT_LOAD = ("torch", "transformers", "numpy", "redis", "fastapi", "starlette", "uvicorn",
                        "tritonclient", "models", "service.core", "service.engine", "service.config")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def sources() -> dict[str, Path]:
    """Every hand-written module of service/ (not the code protoc generates)."""
    return {module_name(p): p for p in sorted(SERVICE.rglob("*.py")) if "_pb2" not in p.name}


def import_nodes(tree: ast.AST):
    """Every import statement run when the code runs (function bodies included), so not
    those under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in import_nodes(ast.Module(body=[child])))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from import_nodes(node)


def imported(path: Path) -> tuple[set[str], set[str]]:
    """The service modules a file imports and the top-level names of the other packages
    it imports."""
    own, others = set(), set()
    for node in import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" if is_module(f"{node.module}.{alias.name}") else node.module
                     for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "service":
                own.add(name)
            else:
                others.add(name.split(".")[0])
    return own, others


def part(module: str) -> str:
    """The part of service/ a module is in: service.core.scoring -> core, service.cli -> cli."""
    parts = module.split(".")[1:]
    return parts[0] if parts else ""


def graph() -> dict[str, set[str]]:
    return {name: imported(path)[0] - {name} for name, path in sources().items()}


def test_service_imports_have_no_cycle():
    edges = graph()
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == "open":
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_each_part_imports_only_the_layers_below_it():
    parts = {part(name) for name in sources()} - {""}
    assert parts == set(LAYERS), f"service/ has {sorted(parts)}; the layering names {sorted(LAYERS)}"
    wrong = []
    for name, deps in graph().items():
        here = part(name)
        if here == "":
            continue
        for dep in deps:
            there = part(dep)
            allowed = LAYERS[here] | {here, ""}  # the package root (service.__version__) imports nothing
            inside_grpc_proto = dep.startswith("service.grpc.proto")
            if there not in allowed and not (inside_grpc_proto and "grpc.proto" in allowed):
                wrong.append(f"{name} imports {dep}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_transports_never_import_each_other():
    crossing = [f"{name} imports {dep}" for name, deps in graph().items() for dep in deps
                if part(name) in TRANSPORTS and part(dep) in TRANSPORTS and part(dep) != part(name)]
    assert not crossing, "\n".join(crossing)


def test_layers_below_the_transports_know_no_wire_library():
    found = []
    for name, path in sources().items():
        if part(name) in WIRE_FREE:
            found += [f"{name} imports {lib}" for lib in sorted(imported(path)[1] & set(WIRE_LIBRARIES))]
    assert not found, "\n".join(found)


def test_served_code_imports_no_training_or_test_code():
    """service/ and models/ are what the wheel and the image ship; training/, the tests (their
    helpers are imported by bare name, tests/ being on the test run's path) and the load tests
    are not there."""
    unshipped = {"training", "tests", "loadtests"} | {p.stem for p in TESTS.glob("*.py")} \
        | {p.parent.name for p in TESTS.glob("*/__init__.py")}
    found = [f"{path.relative_to(ROOT)} imports {name}"
             for root in SERVED for path in sorted(root.rglob("*.py")) if "_pb2" not in path.name
             for name in sorted(imported(path)[1] & unshipped)]
    assert not found, "\n".join(found)


def test_modules_stay_small():
    long = {name: n for name, path in sources().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_readme_layout_names_every_package():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Layout"):]
    named = set(re.findall(r"`service/([a-z_]+)/`", section))
    packages = {p.parent.name for p in SERVICE.glob("*/__init__.py")}
    assert named == packages, f"README layout names {sorted(named)}; service/ has packages {sorted(packages)}"


def test_protocol_imports_only_pydantic_and_the_standard_library():
    found = []
    for name, path in sources().items():
        if part(name) == "protocol":
            own, others = imported(path)
            found += [f"{name} imports {dep}" for dep in sorted(own) if part(dep) != "protocol"]
            found += [f"{name} imports {lib}" for lib in sorted(others - PROTOCOL_IMPORTS)]
    assert not found, "\n".join(found)


def test_importing_the_client_loads_no_server_module():
    """In a fresh interpreter, `import service.client` (and the protocol it returns) loads
    none of the server's stack: no torch, transformers, numpy, Redis, web framework, nor a
    module of the model, core or engine layers."""
    script = "import json, sys; import service.client; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    heavy = [m for m in loaded if any(m == top or m.startswith(f"{top}.") for top in CLIENT_MUST_NOT_LOAD)]
    assert not heavy, f"import service.client loads {heavy}"
    assert {"service.protocol.scoring", "service.grpc.proto.rewardserve_pb2"} <= set(loaded)
