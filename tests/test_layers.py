"""The layering: data -> prompts -> inference -> sft / serve / eval -> the command line, imports downwards only,
and no import cycle among the library modules (imports inside functions included).
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data", "prompts", "inference", "sft", "serve", "eval", "medner")
# what each stage may import besides itself and the core helpers of medner/
ALLOWED = {
    "data": set(),
    "prompts": {"data"},
    "inference": {"prompts", "data"},
    "serve": {"inference", "prompts", "data"},
    "eval": {"inference", "prompts", "data"},
    "sft": {"eval", "inference", "prompts", "data"},
}
# medner/ holds the core helpers (below every stage: they may import data and prompts only) and the top of the
# house: the command line and the commands it owns alone, and the package's public face (`from medner import
# Extractor`, imported lazily)
TOP = {"cli.py", "demo.py", "export.py", "pull.py", "__init__.py"}
HELPERS_MAY_IMPORT = {"prompts", "data"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["medner"] + (parts[1:] if parts[0] == "medner" else parts))


def _imported(path: Path) -> set[str]:
    """Every ``medner...`` module name ``path`` imports, at any depth (relative imports resolved)."""
    pkg = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("medner")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                b = pkg
                for _ in range(node.level - 1):
                    b = b.rpartition(".")[0]
                base = f"{b}.{base}" if base else b
            if base.startswith("medner"):
                out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return out


def _stages(path: Path) -> set[str]:
    stages = set()
    for name in _imported(path):
        parts = name.split(".")
        if len(parts) > 1 and parts[1] in ALLOWED:
            stages.add(parts[1])
    return stages


def test_stages_import_downwards_only():
    bad = []
    for stage, allowed in ALLOWED.items():
        for f in (ROOT / stage).rglob("*.py"):
            for mod in _stages(f):
                if mod != stage and mod not in allowed:
                    bad.append(f"{f.relative_to(ROOT)} imports medner.{mod}")
    assert not bad, bad


def test_core_helpers_do_not_import_the_stages_above_the_contract():
    bad = []
    for f in (ROOT / "medner").glob("*.py"):
        if f.name in TOP:
            continue
        for mod in _stages(f):
            if mod not in HELPERS_MAY_IMPORT:
                bad.append(f"medner/{f.name} imports medner.{mod}")
    assert not bad, bad


def test_no_import_cycle_among_the_library_modules():
    mods = {_module_name(f): f for pkg in PACKAGES for f in (ROOT / pkg).rglob("*.py")}

    def target(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {m: {t for n in _imported(p) if (t := target(n)) and t not in (m, "medner")} for m, p in mods.items()}
    # Tarjan's strongly connected components: any component of two or more modules is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles
