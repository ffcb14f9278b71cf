"""Static rules for what only desktop Slicer runs: how the module widgets and logics use dependencies, background
processes, shortcuts, their lifecycle and each other.  Each rule is a class of defect once found by reading the
modules against Slicer's own source; ``Testing/test_slicer_lifecycle.py`` re-introduces each defect into a copy of
the REAL extension and shows the rule reports it.

Read with ``ast`` only (no Qt, no Slicer): it runs on a clean clone with the standard library.  These helpers are
this file's own (``_loc``, ``_parse`` and ``_dotted`` differ slightly from those of ``common``).
"""
from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, List, Tuple

from .config import COMMON_LIB, CORE_PACKAGE, Problems

CORE = CORE_PACKAGE

#: standard-library modules that exist on one platform only: never imported at file scope of the core or of the
#: Slicer code (Slicer runs on Windows, macOS and Linux)
PLATFORM_ONLY_MODULES = {
    "resource": "POSIX", "fcntl": "POSIX", "termios": "POSIX", "tty": "POSIX", "pty": "POSIX", "pwd": "POSIX",
    "grp": "POSIX", "posix": "POSIX", "crypt": "POSIX", "spwd": "POSIX", "syslog": "POSIX", "nis": "POSIX",
    "readline": "POSIX", "curses": "POSIX", "msvcrt": "Windows", "winreg": "Windows", "winsound": "Windows",
    "_winapi": "Windows", "nt": "Windows",
}
#: core functions that take seconds to hours: the GUI's process (module files and Libs) never imports them; it
#: runs ``python -m infanite …`` in a background process instead
LONG_RUNNING_CORE = {"register_cohort", "register_one", "register_stack", "train", "generate", "simulate_cohort",
                     "run_pipeline", "download_templates", "evaluate_atlas", "detect_devices", "describe_devices",
                     "n4_correct"}


def module_names(repo: Path) -> List[str]:
    return sorted(d.name for d in repo.iterdir() if d.is_dir() and d.name.startswith("INFANiTE")
                  and d.name != COMMON_LIB and (d / f"{d.name}.py").is_file())


def slicer_py_files(repo: Path) -> List[Path]:
    """The module files, their Libs and the common lib (what runs inside Slicer's process)."""
    files = []
    for folder in [repo / m for m in module_names(repo)] + [repo / COMMON_LIB]:
        files += sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)
    return files


def _loc(repo: Path, path: Path, line: int) -> str:
    return f"{path.relative_to(repo).as_posix()}:{line}"


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return _dotted(node.func) + "()"
    return ""


def _file_scope(body) -> List[ast.stmt]:
    """Statements run at import: the module body, into if/try/with/class bodies, not into functions."""
    out = []
    for stmt in body:
        out.append(stmt)
        for name in ("body", "orelse", "finalbody"):
            if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and isinstance(getattr(stmt, name, None),
                                                                                               list):
                out += _file_scope(getattr(stmt, name))
        for handler in getattr(stmt, "handlers", []):
            out += _file_scope(handler.body)
    return out


def _classes(tree: ast.Module, suffix: str) -> List[ast.ClassDef]:
    return [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith(suffix)]


def _methods(cls: ast.ClassDef) -> dict:
    return {f.name: f for f in cls.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _calls(node: ast.AST) -> List[ast.Call]:
    return [n for n in ast.walk(node) if isinstance(n, ast.Call)]


# --------------------------------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------------------------------
def check_platform_imports(repo: Path) -> Problems:
    """No platform-only standard-library module at file scope of the core or the Slicer code (``resource`` at
    the top of the training code made ``infanite train`` and ``atlas`` fail on Windows Slicer)."""
    problems = []
    files = sorted((repo / CORE).rglob("*.py")) + slicer_py_files(repo)
    for path in files:
        for stmt in _file_scope(_parse(path).body):
            names = [a.name for a in stmt.names] if isinstance(stmt, ast.Import) else \
                [stmt.module] if isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.level == 0 else []
            for name in names:
                root = name.split(".")[0]
                if root in PLATFORM_ONLY_MODULES:
                    problems.append(f"{_loc(repo, path, stmt.lineno)}: `{ast.unparse(stmt)}` at file scope: "
                                    f"{root!r} exists on {PLATFORM_ONLY_MODULES[root]} only; import it inside the "
                                    f"function, behind a platform check")
    return problems


def _widget_mixin(repo: Path) -> ast.ClassDef:
    tree = _parse(repo / COMMON_LIB / "widget.py")
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ParameterNodeWidgetMixin")


def _calls_named(node: ast.AST, name: str) -> bool:
    return any(_dotted(c.func).split(".")[-1] == name for c in _calls(node))


def check_dependencies_first(repo: Path) -> Problems:
    """Every entry point that reaches the core makes sure its packages are installed first: the widgets' single
    action wrapper ``_run`` ensures them (and ``enter`` runs it); no widget overrides ``_run``; every signal a
    widget connects goes through ``self._run``; every self-test's ``setUp`` calls ``ensure_dependencies``."""
    problems = []
    mixin_path = repo / COMMON_LIB / "widget.py"
    mixin = _methods(_widget_mixin(repo))
    if "_run" not in mixin or not (_calls_named(mixin["_run"], "ensureDependencies")
                                   or _calls_named(mixin["_run"], "ensure_dependencies")):
        line = mixin["_run"].lineno if "_run" in mixin else 1
        problems.append(f"{_loc(repo, mixin_path, line)}: ParameterNodeWidgetMixin._run does not ensure the core's "
                        f"dependencies before running a GUI action")
    if "enter" not in mixin or not _calls_named(mixin["enter"], "_run"):
        problems.append(f"{_loc(repo, mixin_path, mixin.get('enter', mixin.get('_run')).lineno)}: "
                        f"ParameterNodeWidgetMixin.enter does not check the dependencies (through _run)")
    for module in module_names(repo):
        path = repo / module / f"{module}.py"
        tree = _parse(path)
        for widget in _classes(tree, "Widget"):
            if "_run" in _methods(widget):
                problems.append(f"{_loc(repo, path, _methods(widget)['_run'].lineno)}: {widget.name} overrides "
                                f"_run (the action wrapper that ensures the dependencies): set errorMessage instead")
            for call in _calls(widget):
                if not (isinstance(call.func, ast.Attribute) and call.func.attr == "connect" and len(call.args) == 2):
                    continue
                if _dotted(call.func.value) == "self._timer":
                    continue
                handler = call.args[1]
                ok = isinstance(handler, ast.Lambda) and isinstance(handler.body, ast.Call) \
                    and _dotted(handler.body.func) == "self._run"
                if not ok:
                    problems.append(f"{_loc(repo, path, call.lineno)}: {widget.name} connects "
                                    f"{ast.unparse(call.args[0])} to `{ast.unparse(handler)}`: route it through "
                                    f"`lambda …: self._run(…)` (dependencies first, errors shown)")
        for test in _classes(tree, "Test"):
            setup = _methods(test).get("setUp")
            if setup is None or not _calls_named(setup, "ensure_dependencies"):
                problems.append(f"{_loc(repo, path, (setup or test).lineno)}: {test.name}.setUp does not call "
                                f"ensure_dependencies() (a self-test on a fresh Slicer reaches the core)")
    return problems


def check_widget_lifecycle(repo: Path) -> Problems:
    """``exit()`` keeps the parameter node (Slicer's template only disconnects the GUI: a run that reports
    progress while another module is shown writes into it); keyboard shortcuts on the main window are created
    disabled and disabled again in ``exit()`` (else they act, and fail, in every other module); ``cleanup`` stops
    the background process (``shutdown``)."""
    problems = []
    targets = [(repo / COMMON_LIB / "widget.py", _widget_mixin(repo))]
    for module in module_names(repo):
        path = repo / module / f"{module}.py"
        targets += [(path, w) for w in _classes(_parse(path), "Widget")]
    for path, cls in targets:
        methods = _methods(cls)
        exit_fn = methods.get("exit")
        if exit_fn is not None:
            for call in _calls(exit_fn):
                if _dotted(call.func).endswith("setParameterNode") and call.args \
                        and isinstance(call.args[0], ast.Constant) and call.args[0].value is None:
                    problems.append(f"{_loc(repo, path, call.lineno)}: {cls.name}.exit drops the parameter node "
                                    f"(setParameterNode(None)); disconnect the GUI and the observer only")
        shortcuts = [c for c in _calls(cls) if _dotted(c.func).endswith("QShortcut")]
        if shortcuts:
            setup_disables = any(_dotted(c.func).endswith("setEnabled") and c.args
                                 and isinstance(c.args[0], ast.Constant) and c.args[0].value is False
                                 for c in _calls(methods.get("setup", cls)))
            exit_disables = exit_fn is not None and any(
                _dotted(c.func).endswith("setEnabled") and c.args and isinstance(c.args[0], ast.Constant)
                and c.args[0].value is False for c in _calls(exit_fn))
            if not (setup_disables and exit_disables):
                problems.append(f"{_loc(repo, path, shortcuts[0].lineno)}: {cls.name} creates a QShortcut that is "
                                f"not scoped to the module (create it disabled, enable it in enter(), disable it "
                                f"in exit())")
    mixin_cleanup = _methods(_widget_mixin(repo)).get("cleanup")
    if mixin_cleanup is None or not _calls_named(mixin_cleanup, "shutdown"):
        problems.append(f"{_loc(repo, repo / COMMON_LIB / 'widget.py', 1)}: ParameterNodeWidgetMixin.cleanup does "
                        f"not stop the background process (logic.shutdown())")
    for module in module_names(repo):
        path = repo / module / f"{module}.py"
        for widget in _classes(_parse(path), "Widget"):
            cleanup = _methods(widget).get("cleanup")
            if cleanup is not None and not any(_dotted(c.func) == "ParameterNodeWidgetMixin.cleanup"
                                               for c in _calls(cleanup)):
                problems.append(f"{_loc(repo, path, cleanup.lineno)}: {widget.name}.cleanup does not call "
                                f"ParameterNodeWidgetMixin.cleanup (the background process would outlive Slicer)")
    return problems


def check_background_processes(repo: Path) -> Problems:
    """Background processes report their end to the GUI: every ``self.startProcess(...)`` of a logic passes an
    ``onFinished``; a widget starts them only through ``self.startInBackground(logic.method, …)`` (timer, buttons
    and the end handled in one place), never by calling such a logic method itself.  Self-tests that wait for a
    process keep the application responsive (``on_idle=slicer.app.processEvents``).  And the GUI's process never
    imports the core's long-running functions (it runs ``python -m infanite …`` instead)."""
    problems = []
    for module in module_names(repo):
        path = repo / module / f"{module}.py"
        tree = _parse(path)
        starters = set()
        for logic in _classes(tree, "Logic"):
            for name, fn in _methods(logic).items():
                for call in _calls(fn):
                    if _dotted(call.func) == "self.startProcess":
                        starters.add(name)
                        finished = call.args[2] if len(call.args) > 2 else next(
                            (k.value for k in call.keywords if k.arg == "onFinished"), None)
                        if finished is None or (isinstance(finished, ast.Constant) and finished.value is None):
                            problems.append(f"{_loc(repo, path, call.lineno)}: {logic.name}.{name} starts a process "
                                            f"without onFinished: the GUI would never learn it ended")
            methods = _methods(logic)
            while True:                               # a method that calls a starter starts a process too
                more = {name for name, fn in methods.items() if name not in starters
                        and any(_dotted(c.func) in {f"self.{s}" for s in starters} for c in _calls(fn))}
                if not more:
                    break
                starters |= more
        for widget in _classes(tree, "Widget"):
            for call in _calls(widget):
                target = _dotted(call.func)
                if target.startswith("self.logic.") and target.split(".")[-1] in starters:
                    problems.append(f"{_loc(repo, path, call.lineno)}: {widget.name} calls {target}(…) directly: "
                                    f"start it with self.startInBackground({target}, …) so that the buttons, the "
                                    f"timer and the end are handled")
        for test in _classes(tree, "Test"):
            for call in _calls(test):
                if isinstance(call.func, ast.Attribute) and call.func.attr == "wait" \
                        and not any(k.arg == "on_idle" for k in call.keywords):
                    problems.append(f"{_loc(repo, path, call.lineno)}: {test.name} waits with "
                                    f"`{ast.unparse(call)}` without on_idle=slicer.app.processEvents (Slicer freezes)")
    for path in slicer_py_files(repo):
        for node in ast.walk(_parse(path)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == CORE:
                for alias in node.names:
                    if alias.name in LONG_RUNNING_CORE:
                        problems.append(f"{_loc(repo, path, node.lineno)}: imports {node.module}.{alias.name} into "
                                        f"Slicer's process: long work blocks the GUI; build the `python -m infanite` "
                                        f"command and run it in a background process")
    return problems


def check_module_coupling(repo: Path) -> Problems:
    """No Slicer code reads or writes another object's private attribute (``x._name`` with x not self/cls): a
    module reaches another through its logic (``slicer.util.getModuleLogic(name).getParameterNode()``)."""
    problems = []
    for path in slicer_py_files(repo):
        for node in ast.walk(_parse(path)):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                if _dotted(node.value) not in ("self", "cls", "super()"):
                    problems.append(f"{_loc(repo, path, node.lineno)}: `{ast.unparse(node)}` reaches into another "
                                    f"object's private state")
            if isinstance(node, ast.Call) and _dotted(node.func) in ("getattr", "setattr") and len(node.args) >= 2 \
                    and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str) \
                    and node.args[1].value.startswith("_") and not node.args[1].value.startswith("__") \
                    and _dotted(node.args[0]) not in ("self", "cls"):
                problems.append(f"{_loc(repo, path, node.lineno)}: `{ast.unparse(node)}` reaches into another "
                                f"object's private state")
    return problems


def check_volume_selectors(repo: Path) -> Problems:
    """A node selector for scalar volumes lists label maps too (vtkMRMLLabelMapVolumeNode derives from
    vtkMRMLScalarVolumeNode) unless ``showChildNodeTypes`` is false, as Slicer's module template sets it."""
    problems = []
    for module in module_names(repo):
        for ui in sorted((repo / module / "Resources" / "UI").glob("*.ui")):
            for widget in ET.parse(ui).getroot().iter("widget"):
                if widget.get("class") != "qMRMLNodeComboBox":
                    continue
                props = {p.get("name"): p for p in widget.findall("property")}
                types = [s.text for s in props["nodeTypes"].iter("string")] if "nodeTypes" in props else []
                child = props.get("showChildNodeTypes")
                shows_children = child is None or (child.findtext("bool") or "true").strip() != "false"
                if "vtkMRMLScalarVolumeNode" in types and shows_children:
                    problems.append(f"{ui.relative_to(repo).as_posix()}: {widget.get('name')} lists "
                                    f"vtkMRMLScalarVolumeNode with showChildNodeTypes on: it offers label maps as T2 "
                                    f"stacks (set showChildNodeTypes to false)")
    return problems


RULES: List[Tuple[str, Callable[[Path], Problems]]] = [
    ("platform-only imports", check_platform_imports),
    ("dependencies before the core", check_dependencies_first),
    ("widget lifecycle", check_widget_lifecycle),
    ("background processes", check_background_processes),
    ("module coupling", check_module_coupling),
    ("volume selectors", check_volume_selectors),
]


_API_INDEXES: dict = {}


def check_slicer_api(root: Path) -> Problems:
    """The API check of ``test_slicer_api.py`` (calls against what Slicer 5.8.1 / 5.10.0 expose to Python)."""
    from slicer_api.checker import check_extension, load_indexes

    if not _API_INDEXES:
        _API_INDEXES.update(load_indexes(Path(__file__).resolve().parents[1] / "slicer_api" / "index"))
    return check_extension(root, _API_INDEXES).problems
