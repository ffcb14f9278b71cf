"""Discovery of the modules and of the Python files to check, and the ``ast`` helpers the checkers share."""
from __future__ import annotations

import ast
import fnmatch
import os
import sys
import sysconfig
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

from .config import COMMON_LIB, CORE_PACKAGE, IGNORED_FILE_PATTERNS, MODULE_PREFIX


# --------------------------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------------------------
def relpath(repo: Path, path: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(repo).resolve()).as_posix()
    except ValueError:
        return str(path)


def loc(repo: Path, path: Path, line: Optional[int]) -> str:
    return f"{relpath(repo, path)}:{line or 1}"


def ignored(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in IGNORED_FILE_PATTERNS)


def walk_files(folder: Path) -> Iterator[Path]:
    """Files under ``folder`` (recursively), skipping caches, hidden entries and ignored names."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and not ignored(name):
                yield Path(root) / name


def discover_modules(repo: Path) -> List[str]:
    """Top-level folders ``INFANiTE*/`` holding ``<Folder>.py``."""
    repo = Path(repo)
    return sorted(d.name for d in repo.iterdir()
                  if d.is_dir() and d.name.startswith(MODULE_PREFIX) and d.name != COMMON_LIB
                  and (d / f"{d.name}.py").is_file())


def incomplete_module_folders(repo: Path) -> List[str]:
    """``INFANiTE*/`` folders that look like modules (a Lib, Resources/ or CMakeLists.txt) but lack ``<Folder>.py``."""
    repo = Path(repo)
    out = []
    for d in sorted(p for p in repo.iterdir() if p.is_dir() and p.name.startswith(MODULE_PREFIX)):
        if d.name == COMMON_LIB or (d / f"{d.name}.py").is_file() or (d / "__init__.py").is_file():
            continue
        if (d / f"{d.name}Lib").is_dir() or (d / "Resources").is_dir() or (d / "CMakeLists.txt").is_file():
            out.append(d.name)
    return out


def python_groups(repo: Path, *, with_core: bool = True) -> List[str]:
    """Folders whose .py files are checked: every module-like ``INFANiTE*/`` folder, the common lib, the core."""
    repo = Path(repo)
    names = [d.name for d in sorted(repo.iterdir()) if d.is_dir() and d.name.startswith(MODULE_PREFIX)]
    if with_core and (repo / CORE_PACKAGE).is_dir():
        names.append(CORE_PACKAGE)
    return names


def group_py_files(repo: Path, group: str) -> List[Path]:
    folder = Path(repo) / group
    return [p for p in walk_files(folder) if p.suffix == ".py"] if folder.is_dir() else []


def parse(path: Path) -> Optional[ast.Module]:
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, ValueError, UnicodeDecodeError):
        return None  # the compile checks report it


def call_name(func: ast.AST) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return dotted(node.func)
    return ""


def _is_type_checking(test: ast.AST) -> bool:
    return dotted(test).split(".")[-1] == "TYPE_CHECKING"


def type_checking_nodes(tree: ast.AST) -> set:
    """ids of every node inside an ``if TYPE_CHECKING:`` body (never executed)."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for stmt in node.body:
                ids.update(id(n) for n in ast.walk(stmt))
    return ids


def file_scope_statements(body: Sequence[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements executed when the file is imported: the module body, recursing into if/try/with/for/while and
    class bodies, not into function bodies nor ``if TYPE_CHECKING:`` bodies."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, ast.If):
            if not _is_type_checking(stmt.test):
                yield from file_scope_statements(stmt.body)
            yield from file_scope_statements(stmt.orelse)
        elif isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
            yield from file_scope_statements(stmt.body)
            for handler in stmt.handlers:
                yield from file_scope_statements(handler.body)
            yield from file_scope_statements(stmt.orelse)
            yield from file_scope_statements(stmt.finalbody)
        elif isinstance(stmt, (ast.With, ast.AsyncWith, ast.For, ast.AsyncFor, ast.While)):
            yield from file_scope_statements(stmt.body)
            yield from file_scope_statements(getattr(stmt, "orelse", []))
        elif isinstance(stmt, ast.ClassDef):
            yield from file_scope_statements(stmt.body)
        elif type(stmt).__name__ == "Match":
            for case in stmt.cases:
                yield from file_scope_statements(case.body)


def walk_executed(node: ast.AST) -> Iterator[ast.AST]:
    """``ast.walk`` that does not enter function/lambda bodies nor nested statement blocks of compound statements
    (those come separately from :func:`file_scope_statements`); decorators and default values are executed."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        roots = list(node.decorator_list) + list(node.args.defaults) + [d for d in node.args.kw_defaults if d]
    elif isinstance(node, ast.ClassDef):
        roots = list(node.decorator_list) + list(node.bases) + [k.value for k in node.keywords]
    elif isinstance(node, ast.If):
        roots = [node.test]
    elif isinstance(node, (ast.For, ast.AsyncFor)):
        roots = [node.iter]
    elif isinstance(node, ast.While):
        roots = [node.test]
    elif isinstance(node, (ast.With, ast.AsyncWith)):
        roots = [item.context_expr for item in node.items]
    elif isinstance(node, ast.Try) or type(node).__name__ in ("TryStar", "Match"):
        roots = [getattr(node, "subject")] if hasattr(node, "subject") else []
    else:
        roots = [node]
    stack = list(roots)
    while stack:
        n = stack.pop()
        yield n
        for child in ast.iter_child_nodes(n):
            if isinstance(child, (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            stack.append(child)


def string_constants(node: ast.AST) -> List[str]:
    out = []
    for n in ast.walk(node):
        if isinstance(n, ast.Constant) and isinstance(n.value, str):
            out.append(n.value)
    return out


def class_bases(cls: ast.ClassDef) -> List[str]:
    return [dotted(b).split(".")[-1] for b in cls.bases]


def is_pnw_decorator(dec: ast.AST) -> bool:
    return dotted(dec).split(".")[-1] in ("parameterNodeWrapper", "parameterPack")


def parameter_node_classes(tree: ast.Module) -> List[ast.ClassDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
            and any(dotted(d).split(".")[-1] == "parameterNodeWrapper" for d in n.decorator_list)]


def parameter_fields(cls: ast.ClassDef) -> Dict[str, int]:
    return {stmt.target.id: stmt.lineno for stmt in cls.body
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)}


@lru_cache(maxsize=None)
def stdlib_module_names() -> frozenset:
    names = getattr(sys, "stdlib_module_names", None)
    if names:
        return frozenset(names)
    found = set(sys.builtin_module_names)      # Python 3.9: list the standard library directory
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for entry in stdlib.iterdir():
        if entry.name in ("site-packages", "dist-packages"):
            continue
        if entry.suffix == ".py":
            found.add(entry.stem)
        elif entry.is_dir() and (entry / "__init__.py").is_file():
            found.add(entry.name)
    dynload = stdlib / "lib-dynload"
    if dynload.is_dir():
        found.update(p.name.split(".")[0] for p in dynload.iterdir())
    return frozenset(found)
