"""The house reads one way (docs/ARCHITECTURE.md): no import cycle anywhere in geonorm_core or
proofs, no library module imports the command line, and every import goes to its own floor or
a lower one.

Imports are read from the source (every ``import``, top level or inside a function, since
a lazy import is still a dependency), not from what Python happens to have loaded.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: where each top-level source folder installs (setup.py's package_dir)
PACKAGES = {"geonorm_core": ROOT / "geonorm_core", "geonorm_core.proofs": ROOT / "proofs"}
CLI = "geonorm_core.cli"


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for f in sorted(folder.rglob("*.py")):
            parts = list(f.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if "data" in parts[:-1]:
                continue  # generator scripts shipped beside the data, not part of the package
            found[".".join([package, *parts])] = f
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of the project ``name`` imports (resolved; ``from P import m`` counts as P.m
    when m is a module)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod == "proofs" or mod.startswith("proofs."):
                mod = "geonorm_core." + mod
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import a.b.c` depends on the deepest project module named
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def test_the_graph_is_read(graph):
    """The reader sees the edges the architecture names (a reader that sees nothing passes nothing)."""
    assert "geonorm_core.measure" in graph["geonorm_core.adapter"]
    assert "geonorm_core.dumps.reading" in graph["geonorm_core.cli.analyze_dump"]
    assert "geonorm_core.dumps.dask" in graph["geonorm_core.dumps.reading"]  # a lazy import counts
    assert "geonorm_core.proofs.toolkit" in graph["geonorm_core.proofs.projection"]


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_library_module_imports_the_command_line(graph):
    up = {(m, t) for m, deps in graph.items() if not m.startswith(CLI) for t in deps if t.startswith(CLI)}
    assert up == set()


#: The floors of docs/ARCHITECTURE.md, lowest first, and the modules on each (a module path, or a
#: package and everything in it).  A module imports only from its own floor or lower ones; a new
#: module must be placed here (the test says so), which is where its author decides its floor.
FLOORS = {
    "core": ("_native", "ops", "_arrays", "slow", "runtime", "nn", "durable", "proofs"),
    "measurement": ("measure", "measure_torch"),
    "accumulators": ("accumulate",),
    "report": ("report", "figures", "merging"),
    "sources": ("sites", "adapter", "checkpoint", "interop", "caches", "loading", "models", "whisper", "ct2",
                "corpus", "dumps", "dask", "distributed"),
    "experiments": ("swap", "monitor", "convert", "workload", "bench"),
    "cli": ("cli", ""),  # "": the package's facade, geonorm_core/__init__.py, which re-exports every floor
}


def floor_of(module: str) -> str:
    short = module.removeprefix("geonorm_core").removeprefix(".")
    for floor, members in FLOORS.items():
        if any(short == m or short.startswith(m + ".") for m in members if m) or (short == "" and "" in members):
            return floor
    raise AssertionError(f"{module}: which floor is it on? Add it to FLOORS (docs/ARCHITECTURE.md)")


def test_every_import_goes_to_the_same_floor_or_down(graph):
    rank = {f: i for i, f in enumerate(FLOORS)}
    up = sorted(f"{m} ({floor_of(m)}) imports {t} ({floor_of(t)})" for m, deps in graph.items() for t in deps
                if rank[floor_of(t)] > rank[floor_of(m)])
    assert up == []


def test_the_floor_check_sees_an_upward_import():
    rank = {f: i for i, f in enumerate(FLOORS)}
    assert rank[floor_of("geonorm_core.measure")] < rank[floor_of("geonorm_core.adapter")]
    assert floor_of("geonorm_core.dumps.reading") == "sources" and floor_of("geonorm_core") == "cli"
    with pytest.raises(AssertionError, match="which floor"):
        floor_of("geonorm_core.somewhere_new")


def test_dumps_live_in_their_own_room():
    """No module of the dumps subpackage is over ~500 lines (one concept, one home, readable)."""
    for f in (ROOT / "geonorm_core" / "dumps").glob("*.py"):
        assert len(f.read_text(encoding="utf-8").splitlines()) <= 520, f.name


def test_old_public_paths_still_work():
    import geonorm_core as gn
    from geonorm_core import dumps

    assert gn.analyze_dump is dumps.analyze_dump and gn.open_activations is dumps.open_activations
    assert gn.DumpError is dumps.DumpError
    da = pytest.importorskip("dask.array")
    from geonorm_core.dask import analyze_array

    x = da.from_array(__import__("numpy").random.default_rng(0).normal(size=(40, 8)), chunks=10)
    assert analyze_array(x, scheduler="synchronous").tokens == 40
