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
    assert "geonorm_core.analysis.measure" in graph["geonorm_core.sources.adapter"]
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


#: The floors of docs/ARCHITECTURE.md, lowest first, read from the tree: the core is the modules that
#: sit directly in geonorm_core/ (with the native code and the proofs); every other floor is a set of
#: folders.  A module imports only from its own floor or lower ones; a new folder must be placed here,
#: which is where its author decides its floor.
CORE_FOLDERS = ("_native", "proofs")
FLOORS = {
    "core": CORE_FOLDERS,
    "analysis": ("analysis",),
    "sources": ("sources", "dumps", "models"),
    "experiments": ("experiments",),
    "cli": ("cli",),   # and the package's facade, geonorm_core/__init__.py, which re-exports every floor
}


def floor_of(module: str) -> str:
    short = module.removeprefix("geonorm_core").removeprefix(".")
    if short == "":
        return "cli"
    head = short.split(".")[0]
    if (ROOT / "geonorm_core" / f"{head}.py").is_file():
        return "core"
    for floor, folders in FLOORS.items():
        if head in folders:
            return floor
    raise AssertionError(f"{module}: which floor is it on? Add its folder to FLOORS (docs/ARCHITECTURE.md)")


def test_every_import_goes_to_the_same_floor_or_down(graph):
    rank = {f: i for i, f in enumerate(FLOORS)}
    up = sorted(f"{m} ({floor_of(m)}) imports {t} ({floor_of(t)})" for m, deps in graph.items() for t in deps
                if rank[floor_of(t)] > rank[floor_of(m)])
    assert up == []


def test_the_floor_check_sees_an_upward_import():
    rank = {f: i for i, f in enumerate(FLOORS)}
    assert rank[floor_of("geonorm_core.analysis.measure")] < rank[floor_of("geonorm_core.sources.adapter")]
    assert floor_of("geonorm_core.dumps.reading") == "sources" and floor_of("geonorm_core") == "cli"
    with pytest.raises(AssertionError, match="which floor"):
        floor_of("geonorm_core.somewhere_new.module")
    assert floor_of("geonorm_core.ops") == "core" and floor_of("geonorm_core._native._core") == "core"


def test_every_folder_of_the_package_is_a_floors_room():
    folders = {f.name for f in (ROOT / "geonorm_core").iterdir() if (f / "__init__.py").is_file()}
    placed = {name for names in FLOORS.values() for name in names}
    assert folders <= placed, f"folders on no floor: {sorted(folders - placed)}"


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
    with pytest.warns(DeprecationWarning, match="dumps.dask"):
        from geonorm_core.dask import analyze_array

    x = da.from_array(__import__("numpy").random.default_rng(0).normal(size=(40, 8)), chunks=10)
    assert analyze_array(x, scheduler="synchronous").tokens == 40


@pytest.mark.parametrize("old", sorted(__import__("geonorm_core._moved", fromlist=["MOVED"]).MOVED))
def test_a_moved_module_keeps_its_old_path_for_one_release(old):
    """``import geonorm_core.<old>`` warns and gives the module at its new path, the same object."""
    import importlib
    import sys

    from geonorm_core._moved import MOVED

    pytest.importorskip("torch")
    new = importlib.import_module(f"geonorm_core.{MOVED[old]}")
    sys.modules.pop(f"geonorm_core.{old}", None)
    with pytest.warns(DeprecationWarning, match=f"geonorm_core.{old} moved to geonorm_core.{MOVED[old]}"):
        module = importlib.import_module(f"geonorm_core.{old}")
    assert module is new and module.__spec__.name == f"geonorm_core.{MOVED[old]}"   # its own spec, kept
    assert (ROOT / "geonorm_core" / f"{old}.py").exists() is False   # the tree holds only the new path


def test_whispers_speech_half_keeps_its_old_names():
    """geonorm_core.whisper held the speech functions too; they moved to models.speech."""
    pytest.importorskip("torch")
    from geonorm_core.models import speech, whisper

    with pytest.warns(DeprecationWarning, match="moved to geonorm_core.models.speech.analyze_whisper"):
        assert whisper.analyze_whisper is speech.analyze_whisper
    with pytest.raises(AttributeError):
        whisper.no_such_name  # noqa: B018


def test_the_registry_api_keeps_its_path():
    from geonorm_core.models import MODELS, load_model
    from geonorm_core.models.registry import MODELS as registry_models
    from geonorm_core.models.registry import load_model as registry_load

    assert MODELS is registry_models and load_model is registry_load


def test_import_star_gives_the_core_without_torch():
    import subprocess
    import sys

    code = ("import sys; from geonorm_core import *; import geonorm_core as gn; "
            "assert 'torch' not in sys.modules, 'import * pulled in torch'; "
            "assert {'analyze', 'load_model', 'to_rmsnorm'} <= set(dir(gn)); print(len(gn.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
