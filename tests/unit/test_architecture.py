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


DAEMON_ENTRIES = ("rknn_dropbox.cli", "rknn_dropbox.cli_convert", "rknn_dropbox.service.daemon",
                  "rknn_dropbox.status.server")
# only the top-level imports of these reach the daemon: their functions run in workers (service.worker, formats'
# methods) or in other commands than `run` (cli_convert: `convert` imports the converter inside its function; the
# daemon's argument parser imports cli_convert itself)
TOP_LEVEL_ONLY = ("rknn_dropbox.service.worker", "rknn_dropbox.formats", "rknn_dropbox.cli",
                  "rknn_dropbox.cli_convert")


def module_path(name: str) -> Path | None:
    base = PACKAGE.parent.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None  # an attribute imported by name (`from pkg import NAME`), not a module


def top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    body = ast.Module(body=[n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], type_ignores=[])
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    for node in ast.walk(body):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found |= {module} | {f"{module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def daemon_modules() -> dict[str, str]:
    """Every rknn_dropbox module the daemon process can import (lazy imports included), and who imports it."""
    seen: dict[str, str] = {}
    todo = [(name, "entry") for name in DAEMON_ENTRIES]
    while todo:
        name, by = todo.pop()
        path = module_path(name)
        if name in seen or path is None:
            continue
        seen[name] = by
        found = top_level_imports(path) if name.startswith(TOP_LEVEL_ONLY) else imports_of(path)
        parts = name.split(".")
        found |= {".".join(parts[:i]) for i in range(2, len(parts))}  # importing a.b.c runs a/b/__init__ too
        todo += [(m, name) for m in found if m.startswith("rknn_dropbox")]
    return seen


def test_no_daemon_side_module_imports_convert() -> None:
    """Every package the daemon reaches (intake, service, status, store, config, options, toolkits ...), followed
    through every import: none reaches convert/ (only the worker function does, lazily)."""
    modules = daemon_modules()
    assert {"rknn_dropbox.intake.claims", "rknn_dropbox.config", "rknn_dropbox.store"} <= set(modules)
    bad = sorted(f"{by} imports {name}" for name, by in modules.items() if name.startswith("rknn_dropbox.convert"))
    assert not bad, "the daemon reaches convert/:\n" + "\n".join(bad)
