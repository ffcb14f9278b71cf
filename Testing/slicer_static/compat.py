"""Rule 2: Python 3.9 (Slicer 5.8) and 3.12 (Slicer >= 5.10).  Every file compiles with both (with a real
interpreter where one is found, else with ``ast.parse(feature_version=...)``), and nothing that compiles on 3.9
fails when run there or on 3.12 (unions evaluated at runtime, ``match``, new keywords and names, removed modules)."""
from __future__ import annotations

import ast
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

from .common import (call_name, dotted, group_py_files, is_pnw_decorator, loc, python_groups, string_constants,
                     type_checking_nodes)
from .config import (BUILTIN_TYPE_NAMES, NEW_STDLIB_MODULES, NEW_STDLIB_NAMES, REMOVED_312_MODULES,
                     REMOVED_312_UNITTEST_ALIASES, TYPING_GENERICS, Problems)


# --------------------------------------------------------------------------------------------------------------------
# Rule 2: Python 3.9 and 3.12
# --------------------------------------------------------------------------------------------------------------------
_VERSION_PROBE = "import sys; print(tuple(sys.version_info[:2]))"
_COMPILE_SCRIPT = r"""
import json, os, py_compile, sys, tempfile, warnings
warnings.simplefilter("error", SyntaxWarning)
files = json.loads(sys.stdin.read())
errors = []
with tempfile.TemporaryDirectory() as tmp:
    for i, f in enumerate(files):
        try:
            py_compile.compile(f, cfile=os.path.join(tmp, "%d.pyc" % i), doraise=True)
        except py_compile.PyCompileError as e:
            ev = e.exc_value
            errors.append([f, getattr(ev, "lineno", None) or 0,
                           "%s: %s" % (e.exc_type_name, getattr(ev, "msg", None) or str(ev))])
        except Exception as e:
            errors.append([f, 0, "%s: %s" % (type(e).__name__, e)])
print(json.dumps(errors))
"""


@lru_cache(maxsize=None)
def find_python(version: Tuple[int, int]) -> Optional[str]:
    """A working ``python3.X`` interpreter (pyenv versions, PATH); pyenv shims that fail are skipped."""
    tag = f"{version[0]}.{version[1]}"
    candidates: List[str] = []
    if tuple(sys.version_info[:2]) == tuple(version):
        candidates.append(sys.executable)
    roots = [os.environ.get("PYENV_ROOT", ""), str(Path.home() / ".pyenv"), "/root/.pyenv", "/opt/pyenv"]
    for root in dict.fromkeys(r for r in roots if r):
        found = glob.glob(os.path.join(root, "versions", f"{tag}.*", "bin", f"python{tag}"))
        found.sort(key=lambda p: [int(x) if x.isdigit() else 0 for x in re.split(r"[.\-]", Path(p).parents[1].name)],
                   reverse=True)
        candidates.extend(found)
    for name in (f"python{tag}",):
        w = shutil.which(name)
        if w:
            candidates.append(w)
    for exe in dict.fromkeys(candidates):
        try:
            out = subprocess.run([exe, "-c", _VERSION_PROBE], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0 and out.stdout.strip() == str(tuple(version)):
            return exe
    return None


def check_compile(repo: Path, version: Tuple[int, int], files: Optional[List[Path]] = None
                  ) -> Tuple[Problems, Optional[str]]:
    """Rule 2: the files compile with Python ``version`` (SyntaxWarnings count).  Returns ``(problems, note)``:
    ``note`` says when no such interpreter was found and the in-process fallback was used."""
    repo = Path(repo)
    if files is None:
        files = [f for g in python_groups(repo) for f in group_py_files(repo, g)]
    problems: Problems = []
    exe = find_python(version)
    if exe is not None:
        try:
            out = subprocess.run([exe, "-I", "-c", _COMPILE_SCRIPT], input=json.dumps([str(f) for f in files]),
                                 capture_output=True, text=True, timeout=1800)
            errors = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            errors = None
        if errors is not None:
            for f, line, msg in errors:
                problems.append(f"{loc(repo, Path(f), line)}: does not compile with Python {version[0]}.{version[1]} "
                                f"({exe}; SyntaxWarnings count as errors): {msg}")
            return problems, None
    # fallback: the running interpreter, with ast's feature_version for older targets
    note = (f"no working python{version[0]}.{version[1]} found; checked with ast.parse(feature_version="
            f"{version}) under Python {sys.version_info[0]}.{sys.version_info[1]}")
    for f in files:
        try:
            src = f.read_text(encoding="utf-8")
            with warnings.catch_warnings():
                warnings.simplefilter("error", SyntaxWarning)
                if tuple(sys.version_info[:2]) > tuple(version):
                    ast.parse(src, filename=str(f), feature_version=version)
                compile(src, str(f), "exec", dont_inherit=True)
        except SyntaxError as e:
            problems.append(f"{loc(repo, f, e.lineno)}: does not compile for Python {version[0]}.{version[1]} "
                            f"(SyntaxWarnings count as errors): {type(e).__name__}: {e.msg}")
        except (ValueError, UnicodeDecodeError, SyntaxWarning) as e:
            problems.append(f"{loc(repo, f, None)}: does not compile for Python {version[0]}.{version[1]}: {e}")
    return problems, note


def _contains_bitor(node: ast.AST) -> bool:
    return any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(node))


def _string_annotation_has_bitor(node: ast.AST) -> bool:
    for s in string_constants(node):
        try:
            if _contains_bitor(ast.parse(s, mode="eval")):
                return True
        except SyntaxError:
            continue
    return False


def _typeish(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and node.value is None:
        return True
    if isinstance(node, ast.Name) and node.id in BUILTIN_TYPE_NAMES:
        return True
    if isinstance(node, ast.Subscript):
        head = dotted(node.value).split(".")[-1]
        return head in BUILTIN_TYPE_NAMES or head in TYPING_GENERICS
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _typeish(node.left) or _typeish(node.right)
    return False


def check_runtime_compat(repo: Path, files: Iterable[Path]) -> Problems:
    """Rule 2 (runtime): what compiles on 3.9 but fails when run there (or on 3.12)."""
    repo = Path(repo)
    problems: Problems = []
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except SyntaxError as e:
            problems.append(f"{loc(repo, path, e.lineno)}: cannot be analysed (SyntaxError under Python "
                            f"{sys.version_info[0]}.{sys.version_info[1]}: {e.msg}): `{(e.text or '').strip()}`")
            continue
        except (ValueError, UnicodeDecodeError) as e:
            problems.append(f"{loc(repo, path, None)}: cannot be analysed: {e}")
            continue
        at = lambda n: loc(repo, path, getattr(n, "lineno", None))  # noqa: E731
        future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
                     and any(a.name == "annotations" for a in n.names) for n in tree.body)
        skip = type_checking_nodes(tree)
        annotation_ids = set()
        # annotations: evaluated at runtime on 3.9 without the __future__ import (not those of local variables)
        local_ann = set()
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for stmt in ast.walk(fn):
                    if isinstance(stmt, ast.AnnAssign) and stmt is not fn:
                        local_ann.add(id(stmt))
        for node in ast.walk(tree):
            anns: List[ast.AST] = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                for arg in list(a.posonlyargs) + list(a.args) + list(a.kwonlyargs) + [a.vararg, a.kwarg]:
                    if arg is not None and arg.annotation is not None:
                        anns.append(arg.annotation)
                if node.returns is not None:
                    anns.append(node.returns)
            elif isinstance(node, ast.AnnAssign):
                anns.append(node.annotation)
            for ann in anns:
                annotation_ids.update(id(n) for n in ast.walk(ann))
                evaluated = not (isinstance(node, ast.AnnAssign) and id(node) in local_ann)
                if not future and evaluated and id(ann) not in skip and _contains_bitor(ann):
                    problems.append(f"{at(ann)}: `{ast.unparse(ann)}` (PEP 604 union) in an annotation is evaluated "
                                    f"at runtime on Python 3.9: add `from __future__ import annotations` or use "
                                    f"Optional/Union")
        # parameterNodeWrapper runs typing.get_type_hints: string annotations are evaluated too
        for cls in ast.walk(tree):
            if isinstance(cls, ast.ClassDef) and any(is_pnw_decorator(d) for d in cls.decorator_list):
                for stmt in cls.body:
                    if isinstance(stmt, ast.AnnAssign) and (_contains_bitor(stmt.annotation)
                                                            or _string_annotation_has_bitor(stmt.annotation)):
                        problems.append(f"{at(stmt)}: {cls.name}.{ast.unparse(stmt.target)}: `X | Y` in a "
                                        f"@{dotted(cls.decorator_list[0]).split('.')[-1]} class fails on Python "
                                        f"3.9 (typing.get_type_hints evaluates it even with `from __future__ import "
                                        f"annotations`); use Optional[...] / Union[...]")
        for node in ast.walk(tree):
            if id(node) in skip or id(node) in annotation_ids:
                continue
            if type(node).__name__ == "Match":
                problems.append(f"{at(node)}: `match` statement needs Python 3.10")
            elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) \
                    and (_typeish(node.left) or _typeish(node.right)):
                problems.append(f"{at(node)}: `{ast.unparse(node)}` builds a union type at runtime: TypeError on "
                                f"Python 3.9; use Optional/Union or a tuple")
            elif isinstance(node, ast.Call):
                name = call_name(node.func)
                kws = {k.arg for k in node.keywords if k.arg}
                if name in ("isinstance", "issubclass") and len(node.args) == 2 and _contains_bitor(node.args[1]) \
                        and not _typeish(node.args[1]):
                    problems.append(f"{at(node)}: `{ast.unparse(node)}`: a `|` union as {name}() argument needs "
                                    f"Python 3.10; pass a tuple")
                if name == "zip" and "strict" in kws:
                    problems.append(f"{at(node)}: zip(..., strict=...) needs Python 3.10")
                new_kws = sorted(kws & {"slots", "kw_only", "match_args", "weakref_slot"})
                if name == "dataclass" and new_kws:
                    problems.append(f"{at(node)}: dataclass({', '.join(new_kws)}=...) needs Python 3.10+")
                if name == "field" and "kw_only" in kws:
                    problems.append(f"{at(node)}: field(kw_only=...) needs Python 3.10")
                if isinstance(node.func, ast.Attribute) and node.func.attr in REMOVED_312_UNITTEST_ALIASES:
                    problems.append(f"{at(node)}: .{node.func.attr}() was removed in Python 3.12 (Slicer ≥ 5.10); "
                                    f"use {REMOVED_312_UNITTEST_ALIASES[node.func.attr]}")
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                new = NEW_STDLIB_NAMES.get(node.module, {})
                for alias in node.names:
                    if alias.name in new:
                        v = new[alias.name]
                        problems.append(f"{at(node)}: `from {node.module} import {alias.name}` needs Python "
                                        f"{v[0]}.{v[1]} (use typing_extensions or guard with TYPE_CHECKING)")
                root = node.module.split(".")[0]
                if root in NEW_STDLIB_MODULES:
                    problems.append(f"{at(node)}: module {root} needs Python 3.11")
                if root in REMOVED_312_MODULES:
                    problems.append(f"{at(node)}: module {root} was removed in Python 3.12")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    root = alias.name.split(".")[0]
                    if root in NEW_STDLIB_MODULES:
                        problems.append(f"{at(node)}: module {root} needs Python 3.11")
                    if root in REMOVED_312_MODULES:
                        problems.append(f"{at(node)}: module {root} was removed in Python 3.12")
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.attr in NEW_STDLIB_NAMES.get(node.value.id, {}):
                v = NEW_STDLIB_NAMES[node.value.id][node.attr]
                problems.append(f"{at(node)}: {node.value.id}.{node.attr} needs Python {v[0]}.{v[1]}")
    return problems
