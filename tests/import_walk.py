"""The architecture test's import walker (tests/test_architecture.py): which modules a module imports, at import time or
anywhere. Apart from the tests so that `make mutate` can mutate it (README, "Testing"); checked by hand in
tests/test_architecture.py's walker tests."""

from __future__ import annotations

import ast
from pathlib import Path

import edge_inception

PACKAGE = Path(edge_inception.__file__).parent
ROOT = PACKAGE.parent


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        out[name] = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return out


def resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """Absolute names a statement imports (``from .x import y`` in ``a.b.c`` -> ``a.b.x`` and ``a.b.x.y``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = module.split(".")
    is_package = (PACKAGE.parent / Path(*base) / "__init__.py").exists()
    parts = base if is_package else base[:-1]
    if node.level:
        parts = parts[: len(parts) - (node.level - 1)]
        target = ".".join([*parts, node.module] if node.module else parts)
    else:
        target = node.module or ""
    return [target] + [f"{target}.{a.name}" for a in node.names]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING" or isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _module_level(node: ast.AST) -> list[ast.AST]:
    """Every statement that runs when the module is imported: inside module-level ``try``/``with``/``if``/``for`` and class
    bodies too, not inside functions, and not in ``if TYPE_CHECKING:`` blocks (they never run; their ``else`` does)."""
    out: list[ast.AST] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        for stmt in child.orelse if isinstance(child, ast.If) and _is_type_checking(child) else [child]:  # its else runs
            out.append(stmt)
            out.extend(_module_level(stmt))
    return out


def imports(module: str, tree: ast.Module, *, top_level_only: bool) -> set[str]:
    nodes = _module_level(tree) if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.update(resolve(module, node))
    return found
