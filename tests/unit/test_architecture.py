"""The import graph keeps the architecture's promise: the daemon and the status server never reach the converter."""

from __future__ import annotations

import ast
from pathlib import Path

import rknn_dropbox

PACKAGE = Path(rknn_dropbox.__file__).parent
FORBIDDEN = ("rknn_dropbox.formats", "rknn_dropbox.convert")
WORKER_SIDE = {"rknn_dropbox.service.worker"}  # runs in the worker processes, which do import the toolkit


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, at the top or lazily inside a function, as absolute dotted names."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def test_the_import_parser_sees_lazy_imports() -> None:
    worker = PACKAGE / "service" / "worker.py"
    assert "rknn_dropbox.convert.job" in imports_of(worker)  # imported inside worker_main / run_order


def test_service_and_status_import_nothing_from_formats_or_convert() -> None:
    offenders = []
    for path in sorted((PACKAGE / "service").rglob("*.py")) + sorted((PACKAGE / "status").rglob("*.py")):
        name = module_name(path)
        if name in WORKER_SIDE:
            continue
        bad = sorted(m for m in imports_of(path) if m.startswith(FORBIDDEN))
        if bad:
            offenders.append(f"{name} imports {', '.join(bad)}")
    assert not offenders, "the daemon side must reach formats/ and convert/ only through service/worker.py:\n" + \
        "\n".join(offenders)


def test_only_the_worker_function_imports_the_converter() -> None:
    """service/worker.py is imported by the pool (in the daemon), so its converter imports must stay lazy."""
    tree = ast.parse((PACKAGE / "service" / "worker.py").read_text(encoding="utf-8"))
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {n.module for n in top_level if isinstance(n, ast.ImportFrom)} | \
        {a.name for n in top_level if isinstance(n, ast.Import) for a in n.names}
    assert not [m for m in names if m and (m.startswith(FORBIDDEN + ("rknn.", "torch")) or m in ("rknn", "torch"))]
