"""ARCHITECTURE.md's import direction, checked: imports point down the layers, and the service layers load no torch."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A module may import its own room and any lower layer, never a higher one nor a sibling of the same layer.
# The longest matching prefix names a module's room.
LAYERS = {
    "vitrina": 0,  # config, errors, images
    "encoders": 1,
    "search": 2,
    "indexer": 3,
    "web": 4,  # the service; it reaches the indexer for item writes
    "evaluation": 5,
    "benchmarks": 5,
    "scripts": 6,  # the `vitrina` CLI: thin commands over everything below
    "evaluation.experiments": 7,  # programs (`python -m`); they reuse scripts/cmd_finetune.py's helpers
}
HEAVY = ("torch", "torchvision", "open_clip", "transformers", "onnxruntime", "onnx", "lightgbm")
TORCH_FREE = ("vitrina", "search", "indexer", "web")  # encoders imports the heavy libraries only when a model is built


def room(module: str) -> str | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return ".".join(parts[:n])
    return None


def modules() -> dict[str, Path]:
    """Every module of the first-party packages: dotted name -> file."""
    found = {}
    for top in ("vitrina", "encoders", "search", "indexer", "web", "evaluation", "benchmarks", "scripts"):
        for path in sorted((REPO / top).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, module: str, known: set[str]) -> list[tuple[int, str, bool]]:
    """(line, imported module, runs at import time) for each import in the file; `from a import b` names a.b
    when that is a module. Imports inside a function or under `if TYPE_CHECKING:` do not run at import time."""
    out: list[tuple[int, str, bool]] = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(node: ast.AST, at_load: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            at_load = False
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                visit(child, False)
            for child in node.orelse:
                visit(child, at_load)
            return
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name, at_load) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            for a in node.names:
                out.append((node.lineno, f"{base}.{a.name}" if f"{base}.{a.name}" in known else base, at_load))
        for child in ast.iter_child_nodes(node):
            visit(child, at_load)

    visit(ast.parse(path.read_text(encoding="utf-8")), True)
    return out


def test_every_package_has_a_layer() -> None:
    tops = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    assert tops == {name for name in LAYERS if "." not in name}


def test_imports_point_down_the_layers() -> None:
    mods = modules()
    wrong = []
    for module, path in mods.items():
        own = room(module)
        assert own is not None, module
        for line, target, _ in imports(path, module, set(mods)):
            other = room(target)
            if other is None or other == own:
                continue
            if LAYERS[other] >= LAYERS[own]:
                wrong.append(f"{path.relative_to(REPO)}:{line}: {own} (layer {LAYERS[own]}) imports {target} "
                             f"({other}, layer {LAYERS[other]})")
    assert not wrong, "imports against ARCHITECTURE.md's direction:\n" + "\n".join(wrong)


def test_the_store_is_the_bottom_of_search() -> None:
    """search/store/ imports nothing else of search/ (the query path and the shopper build on it)."""
    mods = modules()
    wrong = [f"{path.relative_to(REPO)}:{line}: imports {target}"
             for module, path in mods.items() if module.startswith("search.store")
             for line, target, _ in imports(path, module, set(mods))
             if target.startswith("search.") and not target.startswith("search.store")]
    assert not wrong, "\n".join(wrong)


def test_no_heavy_import_at_module_level() -> None:
    """vitrina/, search/, indexer/ and web/ import torch, torchvision, open_clip, transformers or onnx only inside
    functions, so serving, indexing tools and the store load them only when a model is built."""
    mods = modules()
    wrong = [f"{path.relative_to(REPO)}:{line}: imports {target} at module level"
             for module, path in mods.items() if module.split(".")[0] in TORCH_FREE
             for line, target, at_load in imports(path, module, set(mods))
             if at_load and target.split(".")[0] in HEAVY]
    assert not wrong, "\n".join(wrong)


def test_importing_the_service_layers_loads_no_torch() -> None:
    """The same, followed through every import: every module of vitrina/, search/, indexer/ and web/ (the web
    app's blueprints included) imported in a fresh interpreter, and none of the heavy libraries loaded."""
    names = sorted(m for m in modules() if m.split(".")[0] in TORCH_FREE)
    code = (f"import importlib, sys\nfor name in {names!r}:\n    importlib.import_module(name)\n"
            "from web import create_app\n"
            f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})\n"
            "print(heavy)\nsys.exit(1 if heavy else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_architecture_names_every_room() -> None:
    text = (REPO / "ARCHITECTURE.md").read_text(encoding="utf-8")
    rooms = sorted(module.replace(".", "/") + "/" for module, path in modules().items() if path.name == "__init__.py")
    missing = [r for r in rooms if not re.search(rf"(?<![\w/]){re.escape(r)}", text)]
    assert not missing, f"ARCHITECTURE.md does not name {missing}"
