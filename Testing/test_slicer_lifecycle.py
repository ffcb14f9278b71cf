"""Static rules for what only desktop Slicer runs: how the module widgets and logics use dependencies, background
processes, shortcuts, their lifecycle and each other.  Each rule is a class of defect once found by reading the
modules against Slicer's own source; the tests re-introduce each defect into a copy of the REAL extension and show
the rule reports it.

Read with ``ast`` only (no Qt, no Slicer): it runs on a clean clone with the standard library and pytest.  What
is behaviour rather than structure (the review table's header, handles of the stack left behind, the loss chart
that other modules must not replace, a second parameter node, the environment of an external Python, Windows
process flags) is tested on real MRML / real processes in ``test_registration_lib.py``, ``test_training_lib.py``
and ``test_slicer_process.py``; calls to APIs Slicer does not expose are ``test_slicer_api.py``'s.
"""
from __future__ import annotations

import ast
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, List, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = "infanite"
COMMON_LIB = "INFANiTECommonLib"

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

Problems = List[str]


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


@pytest.mark.parametrize("name, rule", RULES, ids=[n for n, _ in RULES])
def test_the_extension_follows_the_rule(name, rule):
    problems = rule(REPO)
    assert not problems, f"{name}: {len(problems)} problem(s)\n  " + "\n  ".join(problems)


# --------------------------------------------------------------------------------------------------------------------
# Each defect re-introduced into a copy of the real extension is reported
# --------------------------------------------------------------------------------------------------------------------
def copy_extension(dest: Path) -> Path:
    for name in module_names(REPO) + [COMMON_LIB, CORE]:
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.nii.gz"))
    return dest


def _replace(root: Path, rel: str, old: str, new: str) -> None:
    path = root / rel
    text = path.read_text(encoding="utf-8")
    assert old in text, f"the fixed code changed: {old!r} is no longer in {rel}; update this defect's mutation"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


REG = "INFANiTERegistration/INFANiTERegistration.py"
TRAIN = "INFANiTETraining/INFANiTETraining.py"
ATLAS = "INFANiTEAtlas/INFANiTEAtlas.py"
MIXIN = "INFANiTECommonLib/widget.py"

_API_INDEXES: dict = {}


def check_slicer_api(root: Path) -> Problems:
    """The API check of ``test_slicer_api.py`` (calls against what Slicer 5.8.1 / 5.10.0 expose to Python)."""
    from slicer_api.checker import check_extension, load_indexes

    if not _API_INDEXES:
        _API_INDEXES.update(load_indexes(Path(__file__).resolve().parent / "slicer_api" / "index"))
    return check_extension(root, _API_INDEXES).problems


SAMPLES = "INFANiTECommonLib/sampledata.py"
PACKAGING_FIXED = ("    try:\n        import slicer.packaging as packaging\n    except ImportError:\n        return None\n"
                   "    return packaging")

# (issue-12 defect, mutation re-introducing it, rule, text the problem must contain)
DEFECTS = [
    ("1-review-table-selection", lambda r: _replace(r, REG, "view.selectionModel().selectedRows()",
                                                    "self.ui.reviewTableView.selectedMRMLTableRows()"),
     check_slicer_api, [REG, "qMRMLTableView has no Python-visible member 'selectedMRMLTableRows'"]),
    ("1-selection-property-called", lambda r: _replace(r, REG, "view.selectionModel().selectedRows()",
                                                       "view.selectionModel().selectedIndexes()"),
     check_slicer_api, [REG, "'selectedIndexes' is a Q_PROPERTY"]),
    ("2-sample-data-properties-as-a-list", lambda r: _replace(
        r, SAMPLES, '"loadFileProperties": {"labelmap": labelmap}', '"loadFileProperties": [{}, {"labelmap": True}]'),
     check_slicer_api, [SAMPLES, "registerCustomSampleDataSource(loadFileProperties=…): a list literal"]),
    ("11-deprecated-column-header", lambda r: _replace(
        r, "INFANiTETraining/INFANiTETrainingLib/controller.py", "SetUseColumnTitleAsColumnHeader(True)",
        "SetUseColumnNameAsColumnHeader(True)"), check_slicer_api, ["SetUseColumnNameAsColumnHeader is deprecated"]),
    ("11-slicer-packaging-never-imported", lambda r: _replace(
        r, "INFANiTECommonLib/dependencies.py", PACKAGING_FIXED, '    import slicer\n\n    return getattr(slicer, '
                                                                 '"packaging", None)'),
     check_slicer_api, ["dependencies.py:", "slicer.packaging is a submodule that 'import slicer' does not import"]),
    ("3-resource-at-file-scope", lambda r: _replace(r, "infanite/inr/train.py", "import torch\n",
                                                    "import resource\nimport torch\n"),
     check_platform_imports, ["infanite/inr/train.py:", "'resource' exists on POSIX only"]),
    ("3-fcntl-in-a-lib", lambda r: _replace(r, "INFANiTECommonLib/process.py", "import json\n",
                                            "import fcntl\nimport json\n"),
     check_platform_imports, ["INFANiTECommonLib/process.py:", "'fcntl'"]),
    ("4-run-without-dependencies", lambda r: _replace(r, MIXIN, "            self.ensureDependencies()\n", ""),
     check_dependencies_first, ["ParameterNodeWidgetMixin._run does not ensure"]),
    ("4-button-outside-run", lambda r: _replace(
        r, REG, 'button.connect("clicked(bool)", lambda _=False, h=handler: self._run(h))',
        'button.connect("clicked(bool)", handler)'), check_dependencies_first, [REG, "route it through"]),
    ("4-widget-overrides-run", lambda r: _replace(
        r, TRAIN, "    def fillDevices(self, devices, description):",
        "    def _run(self, handler):\n        handler()\n\n    def fillDevices(self, devices, description):"),
     check_dependencies_first, [TRAIN, "overrides _run"]),
    ("4-self-test-without-dependencies", lambda r: _replace(r, ATLAS, "        ensure_dependencies(need_torch=False)\n"
                                                                      "        slicer.mrmlScene.Clear()\n",
                                                            "        slicer.mrmlScene.Clear()\n"),
     check_dependencies_first, ["INFANiTEAtlasTest.setUp does not call ensure_dependencies"]),
    ("6-exit-drops-the-parameter-node", lambda r: _replace(
        r, MIXIN, '        """Stop reacting to the parameter node; keep it (a running process still reports into it)."""\n',
        '        """Stop."""\n        self.setParameterNode(None)\n'),
     check_widget_lifecycle, ["ParameterNodeWidgetMixin.exit drops the parameter node"]),
    ("6-shortcut-on-the-main-window", lambda r: _replace(r, REG, "            shortcut.setEnabled(False)\n", ""),
     check_widget_lifecycle, [REG, "QShortcut that is not scoped"]),
    ("8-cleanup-leaves-the-process", lambda r: _replace(r, MIXIN, "        self.logic.shutdown()\n", ""),
     check_widget_lifecycle, ["cleanup does not stop the background process"]),
    ("8-module-cleanup-skips-the-mixin", lambda r: _replace(
        r, ATLAS, "        ParameterNodeWidgetMixin.cleanup(self)      # stops the generation's process tree\n",
        "        self.removeObservers()\n"), check_widget_lifecycle, [ATLAS, "does not call ParameterNodeWidgetMixin"]),
    ("10-download-without-finish", lambda r: _replace(
        r, REG, "            self.startInBackground(self.logic.downloadTemplates, self.onProgress,\n"
                "                                   self._finish(self.logic.finishDownload))",
        "            self.logic.downloadTemplates(self.logic.getParameterNode(), onProgress=self.onProgress)"),
     check_background_processes, [REG, "calls self.logic.downloadTemplates(…) directly"]),
    ("10-process-without-on-finished", lambda r: _replace(
        r, REG, "        return self.startProcess(command, onProgress, onFinished)\n\n    def finishDownload",
        "        return self.startProcess(command, onProgress)\n\n    def finishDownload"),
     check_background_processes, [REG, "downloadTemplates starts a process without onFinished"]),
    ("11-self-test-wait-blocks-events", lambda r: _replace(
        r, TRAIN, "logic.controller.wait(timeout=900, on_idle=slicer.app.processEvents)",
        "logic.controller.wait(timeout=900)"), check_background_processes, [TRAIN, "without on_idle"]),
    ("11-refine-in-the-gui-process", lambda r: _replace(
        r, "INFANiTERegistration/INFANiTERegistrationLib/review.py", "    def _apply_refined(",
        "    def refine(self, sid):\n        from infanite.registration.stack import register_stack\n\n"
        "        return register_stack\n\n    def _apply_refined("),
     check_background_processes, ["review.py:", "infanite.registration.stack.register_stack", "blocks the GUI"]),
    ("11-cuda-detection-in-the-gui", lambda r: _replace(
        r, "INFANiTETraining/INFANiTETrainingLib/controller.py", "def devices_from_event(",
        "def detect():\n    from infanite.devices import detect_devices\n\n    return detect_devices()\n\n\n"
        "def devices_from_event("), check_background_processes, ["infanite.devices.detect_devices"]),
    ("11-t2-selector-lists-label-maps", lambda r: _replace(
        r, "INFANiTERegistration/Resources/UI/INFANiTERegistration.ui",
        '        <property name="showChildNodeTypes">\n         <bool>false</bool>\n        </property>\n', ""),
     check_volume_selectors, ["t2VolumeSelector", "showChildNodeTypes"]),
    ("12-private-widget-state-of-another-module", lambda r: _replace(
        r, TRAIN, '        slicer.util.getModuleLogic("INFANiTEAtlas").getParameterNode().runPath = pathlib.Path(run)',
        '        slicer.modules.infaniteatlas.widgetRepresentation().self()._parameterNode.runPath = '
        'pathlib.Path(run)'), check_module_coupling, [TRAIN, "_parameterNode", "private state"]),
]


@pytest.mark.parametrize("mutate, rule, expected", [pytest.param(m, r, e, id=i) for i, m, r, e in DEFECTS])
def test_each_defect_reintroduced_is_reported(tmp_path, mutate, rule, expected):
    root = copy_extension(tmp_path)
    assert rule(root) == [], "the copy of the fixed extension must pass this rule"
    mutate(root)
    problems = rule(root)
    assert any(all(e in p for e in expected) for p in problems), \
        f"expected a problem containing {expected}, got:\n  " + "\n  ".join(problems or ["(none)"])
