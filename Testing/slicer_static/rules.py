"""Rule 3 (imports at file scope, package installation) and rule 6 (the module's files, its classes, the state a
widget keeps)."""
from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path
from typing import Iterable, Iterator, List, Optional

from .common import (call_name, class_bases, dotted, file_scope_statements, group_py_files, loc,
                     parameter_node_classes, parse, relpath, stdlib_module_names, string_constants, walk_executed)
from .config import (ALLOWED_FILE_SCOPE_IMPORTS, ALLOWED_WIDGET_ATTRIBUTES, COMMON_LIB, CORE_PACKAGE,
                     FORBIDDEN_FILE_SCOPE_IMPORTS, INSTALLER_CALLS, MAX_MODULE_LINES, PIP_CALLS,
                     STDLIB_ONLY_CORE_MODULES, TORCH_RE, Problems)


# --------------------------------------------------------------------------------------------------------------------
# Rule 3: imports at file scope and package installation
# --------------------------------------------------------------------------------------------------------------------
def _own_lib(group: str) -> Optional[str]:
    return None if group in (COMMON_LIB, CORE_PACKAGE) else f"{group}Lib"


def check_file_scope_imports(repo: Path, group: str) -> Problems:
    """Rule 3: file-scope imports of a module folder (or of INFANiTECommonLib) name only the standard library, what
    Slicer bundles, INFANiTECommonLib and the module's own Lib (relative imports are fine)."""
    repo = Path(repo)
    allowed = set(ALLOWED_FILE_SCOPE_IMPORTS) | {COMMON_LIB}
    own = _own_lib(group)
    if own:
        allowed.add(own)
    stdlib = stdlib_module_names()
    problems: Problems = []
    for path in group_py_files(repo, group):
        tree = parse(path)
        if tree is None:
            continue
        for stmt in file_scope_statements(tree.body):
            if isinstance(stmt, ast.Import):
                names = [a.name for a in stmt.names]
            elif isinstance(stmt, ast.ImportFrom) and stmt.level == 0 and stmt.module:
                names = [stmt.module]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                if name in STDLIB_ONLY_CORE_MODULES:
                    continue
                if root in FORBIDDEN_FILE_SCOPE_IMPORTS:
                    problems.append(f"{loc(repo, path, stmt.lineno)}: `{ast.unparse(stmt)}` at file scope: "
                                    f"{FORBIDDEN_FILE_SCOPE_IMPORTS[root]}")
                elif root not in allowed and root not in stdlib:
                    problems.append(f"{loc(repo, path, stmt.lineno)}: `{ast.unparse(stmt)}` at file scope: {root!r} "
                                    f"is not bundled with Slicer (allowed: standard library, "
                                    f"{', '.join(sorted(allowed))}); import it inside the function that needs it")
    return problems


def _installer_calls(nodes: Iterable[ast.AST]) -> Iterator[ast.Call]:
    for n in nodes:
        if isinstance(n, ast.Call) and call_name(n.func) in INSTALLER_CALLS:
            yield n


def check_no_installs(repo: Path, group: str) -> Problems:
    """Rule 3: no package installation at file scope or in a ScriptedLoadableModule* class ``__init__``; no pip
    install of torch anywhere."""
    repo = Path(repo)
    problems: Problems = []
    for path in group_py_files(repo, group):
        tree = parse(path)
        if tree is None:
            continue
        executed = [n for stmt in file_scope_statements(tree.body) for n in walk_executed(stmt)]
        for call in _installer_calls(executed):
            problems.append(f"{loc(repo, path, call.lineno)}: `{ast.unparse(call)}` installs packages at import "
                            f"time (file scope): call it from a button handler")
        for cls in ast.walk(tree):
            if isinstance(cls, ast.ClassDef) and any(b.startswith("ScriptedLoadableModule") for b in class_bases(cls)):
                for fn in cls.body:
                    if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.name == "__init__":
                        for call in _installer_calls(ast.walk(fn)):
                            problems.append(f"{loc(repo, path, call.lineno)}: `{ast.unparse(call)}` in "
                                            f"{cls.name}.__init__ installs packages when Slicer starts")
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call):
                continue
            strings = string_constants(call)
            name = call_name(call.func)
            is_pip = name in PIP_CALLS or ("pip" in strings and "install" in strings) \
                or any(re.search(r"\bpip\s+install\b", s) for s in strings)
            if is_pip and any(TORCH_RE.search(s) for s in strings):
                problems.append(f"{loc(repo, path, call.lineno)}: `{ast.unparse(call)}` pip-installs torch: PyTorch "
                                f"comes from the PyTorch extension (PyTorchUtils), never from pip_install")
    return problems


# --------------------------------------------------------------------------------------------------------------------
# Rule 6: module structure, classes and widget state
# --------------------------------------------------------------------------------------------------------------------
def check_module_layout(repo: Path, module: str) -> Problems:
    """Rule 6 (files): Lib package, UI, icon (a PNG), CMakeLists.txt; resourcePath(...) literals exist."""
    repo = Path(repo)
    folder = repo / module
    problems: Problems = []
    lib = folder / f"{module}Lib"
    if not (lib / "__init__.py").is_file():
        problems.append(f"{relpath(repo, lib)}/__init__.py:1: missing (the module's Lib package)")
    for rel in (f"Resources/UI/{module}.ui", f"Resources/Icons/{module}.png", "CMakeLists.txt"):
        if not (folder / rel).is_file():
            problems.append(f"{module}/{rel}:1: missing")
    icon = folder / "Resources" / "Icons" / f"{module}.png"
    if icon.is_file() and not icon.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n":
        problems.append(f"{relpath(repo, icon)}:1: not a PNG file")
    module_py = folder / f"{module}.py"
    tree = parse(module_py)
    if tree is not None:
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and call_name(node.func) == "resourcePath" and node.args \
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                if not (folder / "Resources" / node.args[0].value).exists():
                    problems.append(f"{loc(repo, module_py, node.lineno)}: resourcePath({node.args[0].value!r}) → "
                                    f"{module}/Resources/{node.args[0].value} does not exist")
    return problems


EXPECTED_CLASSES = {"": "ScriptedLoadableModule", "Widget": "ScriptedLoadableModuleWidget",
                    "Logic": "ScriptedLoadableModuleLogic", "Test": "ScriptedLoadableModuleTest"}
MODULE_PARENT_ATTRIBUTES = ("title", "categories", "contributors", "helpText")


def check_module_classes(repo: Path, module: str) -> Problems:
    """Rule 6: the four Scripted* classes, a @parameterNodeWrapper class, a Test class whose runTest runs every
    test_ method, a short module file."""
    repo = Path(repo)
    module_py = repo / module / f"{module}.py"
    if not module_py.is_file():
        return [f"{relpath(repo, module_py)}:1: missing"]
    text = module_py.read_text(encoding="utf-8")
    tree = parse(module_py)
    if tree is None:
        return [f"{relpath(repo, module_py)}:1: does not parse"]
    problems: Problems = []
    n_lines = len(text.splitlines())
    if n_lines >= MAX_MODULE_LINES:
        problems.append(f"{loc(repo, module_py, n_lines)}: {n_lines} lines (must stay < {MAX_MODULE_LINES}; move "
                        f"logic to {module}Lib)")
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    for suffix, base in EXPECTED_CLASSES.items():
        name = module + suffix
        cls = classes.get(name)
        if cls is None:
            problems.append(f"{loc(repo, module_py, 1)}: no class {name}({base})")
        elif base not in class_bases(cls):
            problems.append(f"{loc(repo, module_py, cls.lineno)}: class {name} does not derive from {base} "
                            f"(bases: {', '.join(class_bases(cls)) or 'none'})")
    if not parameter_node_classes(tree):
        problems.append(f"{loc(repo, module_py, 1)}: no @parameterNodeWrapper class")
    main = classes.get(module)
    if main is not None:
        init = next((f for f in main.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None)
        assigned = set()
        for node in ast.walk(init) if init else []:
            if isinstance(node, ast.Assign):
                assigned.update(dotted(t) for t in node.targets)
        for attr in MODULE_PARENT_ATTRIBUTES:
            if f"self.parent.{attr}" not in assigned:
                problems.append(f"{loc(repo, module_py, (init or main).lineno)}: {module}.__init__ does not set "
                                f"self.parent.{attr}")
    test = classes.get(module + "Test")
    if test is not None:
        methods = {f.name: f for f in test.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
        tests = sorted(m for m in methods if m.startswith("test_"))
        if not tests:
            problems.append(f"{loc(repo, module_py, test.lineno)}: {test.name} has no test_ method")
        run = methods.get("runTest")
        if run is None:
            problems.append(f"{loc(repo, module_py, test.lineno)}: {test.name} has no runTest method")
        else:
            called = {call_name(n.func) for n in ast.walk(run) if isinstance(n, ast.Call)
                      and isinstance(n.func, ast.Attribute) and dotted(n.func.value) == "self"}
            for t in tests:
                if t not in called:
                    problems.append(f"{loc(repo, module_py, run.lineno)}: {test.name}.runTest does not call "
                                    f"self.{t}()")
    return problems


def _attribute_targets(node: ast.AST) -> Iterator[ast.AST]:
    if isinstance(node, (ast.Tuple, ast.List)):
        for elt in node.elts:
            yield from _attribute_targets(elt)
    elif isinstance(node, ast.Starred):
        yield from _attribute_targets(node.value)
    else:
        yield node


def check_widget_state(repo: Path, module: str) -> Problems:
    """Rule 6: ``<Module>Widget`` only assigns ``self.<name>`` for names in ALLOWED_WIDGET_ATTRIBUTES."""
    repo = Path(repo)
    module_py = repo / module / f"{module}.py"
    tree = parse(module_py)
    if tree is None:
        return [f"{relpath(repo, module_py)}:1: missing or does not parse"]
    widget = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{module}Widget"), None)
    if widget is None:
        return [f"{loc(repo, module_py, 1)}: no class {module}Widget"]
    problems: Problems = []
    for fn in widget.body:
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        args = fn.args.posonlyargs + fn.args.args
        selfname = args[0].arg if args else "self"
        for node in ast.walk(fn):
            targets: List[ast.AST] = []
            if isinstance(node, ast.Assign):
                targets = list(node.targets)
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                targets = [node.target]
            elif isinstance(node, (ast.For, ast.AsyncFor)):
                targets = [node.target]
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                targets = [i.optional_vars for i in node.items if i.optional_vars is not None]
            elif isinstance(node, ast.Call) and call_name(node.func) == "setattr" and node.args \
                    and isinstance(node.func, ast.Name) and dotted(node.args[0]) == selfname:
                problems.append(f"{loc(repo, module_py, node.lineno)}: {widget.name}.{fn.name} uses setattr(self, "
                                f"...): widget state belongs in the parameter node or the logic")
            for target in (t for top in targets for t in _attribute_targets(top)):
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                        and target.value.id == selfname \
                        and not any(fnmatch.fnmatchcase(target.attr, p) for p in ALLOWED_WIDGET_ATTRIBUTES):
                    problems.append(f"{loc(repo, module_py, target.lineno)}: {widget.name}.{fn.name} stores "
                                    f"self.{target.attr}: widget state belongs in the parameter node or the logic "
                                    f"(allowed: {', '.join(ALLOWED_WIDGET_ATTRIBUTES)})")
    return problems
