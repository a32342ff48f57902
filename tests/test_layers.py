"""The pipeline's layering: stages import downwards only, so no stage borrows another's internals.

sft -> eval -> serve (client) -> prompts -> data;  every stage may use medner/ helpers.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# what each stage may import besides itself and medner/ helpers
ALLOWED = {
    "data": set(),
    "prompts": {"data"},
    "serve": {"prompts", "data"},
    "eval": {"serve", "prompts", "data"},
    "sft": {"eval", "serve", "prompts", "data"},
}
# medner/ helpers that must stay below every stage except where they name the stage they serve
HELPERS_MAY_IMPORT = {"prompts", "data"}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medner."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("medner.")}
    return out


def test_stages_import_downwards_only():
    bad = []
    for stage, allowed in ALLOWED.items():
        for f in (ROOT / stage).rglob("*.py"):
            for mod in _imports(f) & set(ALLOWED):
                if mod != stage and mod not in allowed:
                    bad.append(f"{f.relative_to(ROOT)} imports medner.{mod}")
    assert not bad, bad


def test_shared_helpers_do_not_import_stages_above_the_contract():
    # the command line and the demo sit on top of everything; the package's __init__ is its public face
    # (`from medner import Extractor`, imported lazily)
    skip = {"cli.py", "demo.py", "__init__.py"}
    bad = []
    for f in (ROOT / "medner").glob("*.py"):
        if f.name in skip:
            continue
        for mod in _imports(f) & set(ALLOWED):
            if mod not in HELPERS_MAY_IMPORT:
                bad.append(f"medner/{f.name} imports medner.{mod}")
    assert not bad, bad
