"""The package layering of docs/architecture.md: imports go down the layers only, no cycles."""

import ast
from pathlib import Path

import jbert

ROOT = Path(jbert.__file__).parent
# Bottom to top. A module may import its own layer's package and any layer below it.
LAYERS = ("errors", "data", "ops", "model", "hf", "training", "evaluation", "tasks", "analysis")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every jbert module -> the jbert modules it imports (anywhere in the file)."""
    graph = {}
    for path in ROOT.rglob("*.py"):
        if "hf_code" in path.parts:  # package data for exports, never imported by jbert
            continue
        name = _module_name(path)
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("jbert")}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jbert"):
                # `from jbert.model import functional` imports the module jbert.model.functional
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}".replace(
                    ".", "/") + ".py" in _FILES else node.module for a in node.names}
        graph[name] = found - {name}
    return graph


_FILES = {str(p.relative_to(ROOT.parent)) for p in ROOT.rglob("*.py")}


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else -1


def test_every_module_belongs_to_a_layer():
    unplaced = [m for m in _imports() if m != "jbert" and m.split(".")[1] not in LAYERS]
    assert not unplaced, f"modules outside the layers of docs/architecture.md: {unplaced}"


def test_imports_only_go_down():
    upward = [f"{m} -> {t}" for m, targets in _imports().items() if m != "jbert"
              for t in targets if t != "jbert" and _layer(t) > _layer(m)]
    assert not upward, "imports from a higher layer:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    graph = _imports()
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt in graph and nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_top_level_stays_small():
    entries = [p.name for p in ROOT.iterdir() if not p.name.startswith(("_", "."))
               or p.name == "__init__.py"]
    assert len(entries) <= 10, sorted(entries)


def test_readme_layout_table_matches_the_tree():
    """Every row names a path that exists, and every module of every layer is named in its row."""
    readme = (ROOT.parent / "README.md").read_text()
    table = readme[readme.index("## Layout"):].split("\n\n")[1]
    rows = {}
    for line in table.splitlines()[2:]:
        path, what = line.strip("|").split("|", 1)
        rows[path.strip().strip("`")] = what
    for path in rows:
        assert (ROOT.parent / path).exists(), f"README layout names {path}, which does not exist"
    for layer in LAYERS:
        key = f"jbert/{layer}" + (".py" if (ROOT / f"{layer}.py").exists() else "/")
        assert key in rows, f"README layout has no row for {key}"
        if key.endswith("/"):
            modules = {p.name for p in (ROOT / layer).glob("*.py") if p.name != "__init__.py"}
            unnamed = {m for m in modules if f"`{m}`" not in rows[key]}
            if layer != "data":  # the data row describes its modules by what they build
                assert not unnamed, f"README row {key} does not name {sorted(unnamed)}"
