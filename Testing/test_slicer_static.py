"""Static checks of what only desktop 3D Slicer runs: the scripted modules, their .ui files, the CMake build and
the extension description.  Nothing here imports Qt, Slicer or the modules; everything is read with ``ast``,
``xml`` and a small CMake tokenizer, so it runs on a clean clone with the standard library and pytest.

The checkers are in ``slicer_static/`` (plain functions taking the repository root, and a module name, and
returning a list of problems ``"path:line: message"``; its ``config.py`` holds the knobs: extend them when a new
Slicer API or widget is used).  The tests below run them on the real repository; the ``test_checker_*`` tests at
the end copy a small fake extension (``data/fake_extension/``) under ``tmp_path``, show that it passes, then break
it once per rule and show each checker fails.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import pytest

from slicer_static import (check_catalog_entry, check_compile, check_file_scope_imports, check_image_urls,
                           check_module_classes, check_module_cmake, check_module_layout, check_no_installs,
                           check_parameter_bindings, check_runtime_compat, check_s4ext, check_top_cmake,
                           check_top_subdirectories, check_ui_files, check_widget_state, compat, discover_modules,
                           group_py_files, incomplete_module_folders, parse_cmake, python_groups)
from slicer_static.config import (COMMON_LIB, CORE_PACKAGE, EXTENSION_NAME, MAX_MODULE_LINES, MODULE_PREFIX,
                                  STDLIB_ONLY_CORE_MODULES, Problems)

REPO = Path(__file__).resolve().parents[1]


# ====================================================================================================================
# Tests on the real repository
# ====================================================================================================================
MODULES = discover_modules(REPO)
_NO_MODULES = pytest.param(None, id="NO-MODULES-FOUND")
MODULE_PARAMS = MODULES or [_NO_MODULES]
GROUPS_ALL = python_groups(REPO)
GROUPS_SLICER = python_groups(REPO, with_core=False)


def _need(module: Optional[str]) -> str:
    if module is None:
        pytest.fail(f"no Slicer module found: expected top-level folders {MODULE_PREFIX}*/ holding <Folder>.py in "
                    f"{REPO}")
    return module


def _report(problems: Problems, what: str) -> None:
    problems = list(dict.fromkeys(problems))
    assert not problems, f"{what}: {len(problems)} problem(s)\n  " + "\n  ".join(problems)


def test_modules_discovered():
    incomplete = incomplete_module_folders(REPO)
    assert MODULES, f"no Slicer module found in {REPO} (a module is a folder {MODULE_PREFIX}*/ with <Folder>.py)"
    assert not incomplete, ("module folders without their <Folder>.py (Slicer would not load them): "
                            + ", ".join(f"{m}/{m}.py" for m in incomplete))


@pytest.mark.parametrize("module", MODULE_PARAMS)
def test_ui_files_and_widget_usage(module):
    _report(check_ui_files(REPO, _need(module)), f"{module}: .ui files / self.ui usage")


@pytest.mark.parametrize("module", MODULE_PARAMS)
def test_parameter_node_bindings(module):
    _report(check_parameter_bindings(REPO, _need(module)), f"{module}: parameter node ↔ .ui")


@pytest.mark.parametrize("version", [(3, 9), (3, 12)], ids=["py3.9", "py3.12"])
def test_python_files_compile(version):
    files = [f for g in GROUPS_ALL for f in group_py_files(REPO, g)]
    assert files, "no Python files found"
    problems, note = check_compile(REPO, version, files)
    if note:
        warnings.warn(UserWarning(note))
    _report(problems, f"compile for Python {version[0]}.{version[1]}" + (f" [{note}]" if note else ""))


@pytest.mark.parametrize("group", GROUPS_ALL)
def test_runtime_compatibility_39_312(group):
    _report(check_runtime_compat(REPO, group_py_files(REPO, group)), f"{group}: Python 3.9/3.12 runtime")


@pytest.mark.parametrize("group", GROUPS_SLICER)
def test_file_scope_imports(group):
    _report(check_file_scope_imports(REPO, group), f"{group}: file-scope imports")


@pytest.mark.parametrize("group", GROUPS_ALL)
def test_no_package_installation_at_import(group):
    _report(check_no_installs(REPO, group), f"{group}: package installation")


@pytest.mark.parametrize("module", MODULE_PARAMS)
def test_module_cmake_lists(module):
    _report(check_module_cmake(REPO, _need(module)), f"{module}/CMakeLists.txt")


def test_standard_library_only_core_modules():
    """What the Slicer code may import at file scope from the core imports nothing but the standard library (a
    fresh Slicer has neither torch nor nibabel nor PyYAML)."""
    code = ("import sys\nfor name in ('torch', 'nibabel', 'numpy', 'yaml', 'SimpleITK', 'scipy', 'skimage', "
            "'matplotlib'):\n    sys.modules[name] = None\n"
            + "".join(f"import {m}\n" for m in sorted(STDLIB_ONLY_CORE_MODULES)))
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_top_cmake_ships_core_packages():
    _report(check_top_cmake(REPO), "CMakeLists.txt: core packages")


def test_top_cmake_subdirectories_are_the_modules():
    _need(MODULES[0] if MODULES else None)
    _report(check_top_subdirectories(REPO), "CMakeLists.txt: add_subdirectory")


def test_s4ext_matches_cmake():
    _report(check_s4ext(REPO), f"{EXTENSION_NAME}.s4ext ↔ CMakeLists.txt")


def test_icon_and_screenshot_urls():
    _report(check_image_urls(REPO), "icon/screenshot URLs")


@pytest.mark.parametrize("module", MODULE_PARAMS)
def test_module_layout(module):
    _report(check_module_layout(REPO, _need(module)), f"{module}: files")


@pytest.mark.parametrize("module", MODULE_PARAMS)
def test_module_classes(module):
    _report(check_module_classes(REPO, _need(module)), f"{module}: classes")


@pytest.mark.parametrize("module", MODULE_PARAMS)
def test_widget_state(module):
    _report(check_widget_state(REPO, _need(module)), f"{module}Widget: state")


# ====================================================================================================================
# Checker tests: a fake extension that passes, then broken once per rule
# ====================================================================================================================
FAKE = "INFANiTEFoo"
_PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16                              # the bytes of the fake extension's PNGs
_RAW = "https://raw.githubusercontent.com/example/SlicerINFANiTE/main"   # its icon/screenshot URLs start so
FAKE_EXTENSION = Path(__file__).resolve().parent / "data" / "fake_extension"


def make_fake_extension(root: Path) -> Path:
    """A minimal extension that passes every checker: a copy of ``data/fake_extension/`` (BREAKAGES below asserts
    line numbers of its files: edit them with care)."""
    shutil.copytree(FAKE_EXTENSION, root, dirs_exist_ok=True, copy_function=shutil.copyfile,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return root


def _all_checks(root: Path) -> Problems:
    problems: Problems = []
    for module in discover_modules(root):
        for check in (check_ui_files, check_parameter_bindings, check_module_cmake, check_module_layout,
                      check_module_classes, check_widget_state):
            problems += check(root, module)
    for group in python_groups(root):
        problems += check_runtime_compat(root, group_py_files(root, group))
        problems += check_no_installs(root, group)
    for group in python_groups(root, with_core=False):
        problems += check_file_scope_imports(root, group)
    problems += check_top_cmake(root) + check_top_subdirectories(root) + check_s4ext(root) + check_image_urls(root)
    return problems


def test_checker_fake_extension_passes(tmp_path):
    root = make_fake_extension(tmp_path)
    assert discover_modules(root) == [FAKE]
    _report(_all_checks(root), "fake extension")
    cm = parse_cmake(root / "CMakeLists.txt")
    assert cm.var_string("EXTENSION_DESCRIPTION").startswith('Fetal atlases from thick-slice stacks; with a "quoted"')
    assert [v for v, _ in cm.var("INFANITE_PYTHON_SCRIPTS")] == ["infanite/__init__.py", "infanite/core.py",
                                                                 "INFANiTECommonLib/__init__.py",
                                                                 "INFANiTECommonLib/widget.py"]
    assert [c.values()[0] for c in cm.calls("add_subdirectory")] == [FAKE]   # the bracket comment is skipped
    module_cm = parse_cmake(root / FAKE / "CMakeLists.txt")
    assert [v for v, _ in module_cm.var("MODULE_PYTHON_SCRIPTS")] == [f"{FAKE}.py", f"{FAKE}Lib/__init__.py",
                                                                      f"{FAKE}Lib/helper"]
    assert module_cm.var("MODULE_PYTHON_SCRIPTS")[2][1] == 7          # line numbers survive ${VAR} expansion


def _edit(root: Path, rel: str, old: str, new: str, count: int = 1) -> None:
    path = root / rel
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {rel}"
    path.write_text(text.replace(old, new, count), encoding="utf-8")


def _write(root: Path, rel: str, text: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text, encoding="utf-8")


M = f"{FAKE}/{FAKE}.py"
UI = f"{FAKE}/Resources/UI/{FAKE}.ui"
LIB = f"{FAKE}/{FAKE}Lib/helper.py"
S4 = f"{EXTENSION_NAME}.s4ext"

# (id, mutation, checker(root) → problems, substrings that must all appear in one problem)
BREAKAGES: List[Tuple[str, Callable[[Path], None], Callable[[Path], Problems], Sequence[str]]] = [
    # rule 1
    ("ui-not-xml", lambda r: _edit(r, UI, "</ui>", "</uii>"),
     lambda r: check_ui_files(r, FAKE), [f"{FAKE}.ui:", "not well-formed XML"]),
    ("ui-top-widget", lambda r: _edit(r, UI, 'class="qMRMLWidget"', 'class="QDialog"'),
     lambda r: check_ui_files(r, FAKE), [f"{FAKE}.ui:4:", "top widget class is 'QDialog'"]),
    ("ui-unknown-name", lambda r: _edit(r, M, "self.ui.progressBar.setFormat", "self.ui.progresBar.setFormat"),
     lambda r: check_ui_files(r, FAKE), [f"{FAKE}.py:", "self.ui.progresBar", "no widget/layout named"]),
    ("ui-spacer-is-no-object", lambda r: _edit(r, M, "self.ui.verticalLayout.addStretch(1)",
                                               "self.ui.verticalSpacer.changeSize(1, 1)"),
     lambda r: check_ui_files(r, FAKE), ["self.ui.verticalSpacer"]),
    ("ui-connect-string-class", lambda r: _edit(r, UI, 'class="QPushButton" name="applyButton"',
                                                'class="QLabel" name="applyButton"'),
     lambda r: check_ui_files(r, FAKE), ["self.ui.applyButton.clicked", "is a QLabel", "QPushButton"]),
    ("ui-progress-class", lambda r: _edit(r, UI, 'class="QProgressBar"', 'class="QSlider"'),
     lambda r: check_ui_files(r, FAKE), ["self.ui.progressBar.setFormat", "is a QSlider", "QProgressBar"]),
    ("ui-mrml-class", lambda r: _edit(r, UI, 'class="qMRMLNodeComboBox" name', 'class="QComboBox" name'),
     lambda r: check_ui_files(r, FAKE), ["self.ui.inputSelector.currentNodeChanged", "is a QComboBox", "qMRML*"]),
    ("ui-plaintext-class", lambda r: _edit(r, UI, 'class="QPlainTextEdit"', 'class="QTextEdit"'),
     lambda r: check_ui_files(r, FAKE), ["self.ui.logText.appendPlainText", "is a QTextEdit"]),
    ("ui-value-assign-class", lambda r: _edit(r, UI, 'class="ctkSliderWidget"', 'class="QLineEdit"'),
     lambda r: check_ui_files(r, FAKE), ["self.ui.thresholdSlider.value", "is a QLineEdit"]),
    ("ui-path-class", lambda r: _edit(r, UI, 'class="ctkPathLineEdit"', 'class="ctkDirectoryButton"'),
     lambda r: check_ui_files(r, FAKE), ["self.ui.outputPath.currentPath", "is a ctkDirectoryButton"]),
    ("param-unknown-name", lambda r: _edit(r, UI, "<string>outputFolder</string>", "<string>outputDir</string>"),
     lambda r: check_parameter_bindings(r, FAKE), [f"{FAKE}.ui:", "SlicerParameterName 'outputDir'", "outputPath"]),
    ("param-unused-field", lambda r: _edit(r, M, "    label: Optional[str] = None\n",
                                           "    label: Optional[str] = None\n    neverUsed: int = 0\n"),
     lambda r: check_parameter_bindings(r, FAKE), [f"{FAKE}.py:31:", "INFANiTEFooParameterNode.neverUsed"]),
    ("param-no-wrapper", lambda r: _edit(r, M, "@parameterNodeWrapper\n", ""),
     lambda r: check_parameter_bindings(r, FAKE), ["no @parameterNodeWrapper class"]),
    # rule 2
    ("py39-syntax", lambda r: _write(r, f"{FAKE}/{FAKE}Lib/new.py", "def f(x):\n    match x:\n        case 1:\n"
                                                                 "            return 1\n"),
     lambda r: check_compile(r, (3, 9))[0], ["new.py:2:", "Python 3.9"]),
    ("py312-syntax", lambda r: _write(r, "infanite/bad.py", "print 'hello'\n"),
     lambda r: check_compile(r, (3, 12))[0], ["infanite/bad.py:1:", "Python 3.12"]),
    ("py312-syntax-warning", lambda r: _write(r, "infanite/bad.py", "x = 1\ny = x is 1\n"),
     lambda r: check_compile(r, (3, 12))[0], ["infanite/bad.py:2:", "\"is\" with", "SyntaxWarnings count as errors"]),
    ("pep604-annotation", lambda r: _edit(r, "infanite/core.py", "x: 'int | None'", "x: int | None"),
     lambda r: check_runtime_compat(r, [r / "infanite/core.py"]), ["core.py:4:", "PEP 604", "int | None"]),
    ("pep604-isinstance", lambda r: _edit(r, LIB, "(int, float)", "int | float"),
     lambda r: check_runtime_compat(r, [r / LIB]), ["helper.py:", "int | float"]),
    ("pep604-alias", lambda r: _edit(r, "infanite/core.py", "import torch\n", "import torch\nMaybe = str | None\n"),
     lambda r: check_runtime_compat(r, [r / "infanite/core.py"]), ["core.py:2:", "str | None", "union type"]),
    ("pep604-parameter-node", lambda r: _edit(r, M, "label: Optional[str] = None", "label: 'str | None' = None"),
     lambda r: check_runtime_compat(r, [r / M]), [f"{FAKE}.py:", "INFANiTEFooParameterNode.label",
                                                   "get_type_hints"]),
    ("match-statement", lambda r: _edit(r, "infanite/core.py", "    return x\n",
                                        "    match x:\n        case _:\n            return x\n"),
     lambda r: check_runtime_compat(r, [r / "infanite/core.py"]), ["core.py:5:", "match"]),
    ("zip-strict", lambda r: _edit(r, "infanite/core.py", "    return x\n", "    return zip(x, x, strict=True)\n"),
     lambda r: check_runtime_compat(r, [r / "infanite/core.py"]), ["core.py:5:", "zip(..., strict=...)"]),
    ("dataclass-slots", lambda r: _edit(r, "infanite/core.py", "import torch\n",
                                        "import torch\nfrom dataclasses import dataclass\n\n\n"
                                        "@dataclass(slots=True)\nclass A:\n    x: int = 0\n"),
     lambda r: check_runtime_compat(r, [r / "infanite/core.py"]), ["core.py:5:", "dataclass(slots=...)"]),
    ("typing-self", lambda r: _edit(r, "infanite/core.py", "import torch\n", "import torch\nfrom typing import Self\n"),
     lambda r: check_runtime_compat(r, [r / "infanite/core.py"]), ["core.py:2:", "Self", "3.11"]),
    ("unittest-alias-312", lambda r: _edit(r, M, "self.assertEqual(1, 1)", "self.assertEquals(1, 1)"),
     lambda r: check_runtime_compat(r, [r / M]), [f"{FAKE}.py:", "assertEquals", "3.12"]),
    # rule 3
    ("import-torch-file-scope", lambda r: _edit(r, LIB, "import json\n", "import json\nimport torch\n"),
     lambda r: check_file_scope_imports(r, FAKE), ["helper.py:5:", "import torch", "'torch'"]),
    ("import-in-try", lambda r: _edit(r, LIB, "import json\n", "import json\ntry:\n    import nibabel\n"
                                                                "except ImportError:\n    nibabel = None\n"),
     lambda r: check_file_scope_imports(r, FAKE), ["helper.py:6:", "'nibabel'"]),
    ("import-in-class-body", lambda r: _edit(r, M, "class INFANiTEFooLogic(ScriptedLoadableModuleLogic):\n",
                                             "class INFANiTEFooLogic(ScriptedLoadableModuleLogic):\n"
                                             "    import yaml\n"),
     lambda r: check_file_scope_imports(r, FAKE), [f"{FAKE}.py:", "'yaml'"]),
    ("import-infanite-file-scope", lambda r: _edit(r, M, "import logging\n",
                                                   "import logging\nfrom infanite import cli\n"),
     lambda r: check_file_scope_imports(r, FAKE), [f"{FAKE}.py:3:", "from infanite import cli", "torch/nibabel"]),
    ("import-common-lib-third-party", lambda r: _edit(r, "INFANiTECommonLib/widget.py", "import vtk\n",
                                                      "import vtk\nimport skimage.io\n"),
     lambda r: check_file_scope_imports(r, COMMON_LIB), ["INFANiTECommonLib/widget.py:4:", "'skimage'"]),
    ("import-other-module-lib", lambda r: _edit(r, M, "import logging\n", "import logging\nimport INFANiTEBarLib\n"),
     lambda r: check_file_scope_imports(r, FAKE), [f"{FAKE}.py:3:", "'INFANiTEBarLib'"]),
    ("install-file-scope", lambda r: _edit(r, M, "import logging\n",
                                           "import logging\nslicer.util.pip_install('nibabel')\n"),
     lambda r: check_no_installs(r, FAKE), [f"{FAKE}.py:3:", "pip_install", "file scope"]),
    ("install-in-if-file-scope", lambda r: _edit(r, LIB, "import json\n",
                                                 "import json\nif True:\n    x = [pip_ensure(['nibabel'])]\n"),
     lambda r: check_no_installs(r, FAKE), ["helper.py:6:", "pip_ensure", "file scope"]),
    ("install-module-init", lambda r: _edit(r, M, '        self.parent.title = "Foo"\n',
                                            '        self.parent.title = "Foo"\n'
                                            '        slicer.util.pip_install("nibabel")\n'),
     lambda r: check_no_installs(r, FAKE), [f"{FAKE}.py:20:", "INFANiTEFoo.__init__"]),
    ("install-torch-in-function", lambda r: _edit(r, LIB, 'pip_install("nibabel")', 'pip_install("torch>=2.1")'),
     lambda r: check_no_installs(r, FAKE), ["helper.py:", "pip-installs torch"]),
    ("install-torch-subprocess", lambda r: _edit(r, "infanite/core.py", "    return x\n",
                                                 "    subprocess.run([sys.executable, '-m', 'pip', 'install', "
                                                 "'torch==2.1'])\n"),
     lambda r: check_no_installs(r, CORE_PACKAGE), ["infanite/core.py:5:", "pip-installs torch"]),
    # rule 4
    ("cmake-unlisted-script", lambda r: _write(r, f"{FAKE}/{FAKE}Lib/extra.py", ""),
     lambda r: check_module_cmake(r, FAKE), [f"{FAKE}/CMakeLists.txt:4:", f"{FAKE}Lib/extra.py",
                                             "MODULE_PYTHON_SCRIPTS"]),
    ("cmake-listed-missing-script", lambda r: (r / LIB).unlink(),
     lambda r: check_module_cmake(r, FAKE), [f"{FAKE}/CMakeLists.txt:7:", f"{FAKE}Lib/helper.py", "does not exist"]),
    ("cmake-unlisted-resource", lambda r: (r / f"{FAKE}/Resources/Icons/extra.png").write_bytes(_PNG),
     lambda r: check_module_cmake(r, FAKE), [f"{FAKE}/CMakeLists.txt:10:", "Resources/Icons/extra.png",
                                             "MODULE_PYTHON_RESOURCES"]),
    ("cmake-listed-missing-resource", lambda r: _edit(r, f"{FAKE}/CMakeLists.txt", "Resources/UI/${MODULE_NAME}.ui",
                                                      "Resources/UI/${MODULE_NAME}.ui\n  Resources/UI/Other.ui"),
     lambda r: check_module_cmake(r, FAKE), [f"{FAKE}/CMakeLists.txt:13:", "Resources/UI/Other.ui",
                                             "does not exist"]),
    ("cmake-macro-name", lambda r: _edit(r, f"{FAKE}/CMakeLists.txt", "NAME ${MODULE_NAME}", "NAME Foo"),
     lambda r: check_module_cmake(r, FAKE), ["NAME is 'Foo'"]),
    ("cmake-macro-scripts", lambda r: _edit(r, f"{FAKE}/CMakeLists.txt", "SCRIPTS ${MODULE_PYTHON_SCRIPTS}",
                                            "SCRIPTS ${MODULE_NAME}.py"),
     lambda r: check_module_cmake(r, FAKE), ["SCRIPTS is not ${MODULE_PYTHON_SCRIPTS}"]),
    ("cmake-core-unlisted", lambda r: _edit(r, "CMakeLists.txt", "  INFANiTECommonLib/widget.py\n", ""),
     lambda r: check_top_cmake(r), ["CMakeLists.txt:", "INFANiTECommonLib/widget.py is not in the SCRIPTS"]),
    ("cmake-core-data-unlisted", lambda r: _edit(r, "CMakeLists.txt",
                                                 "set(INFANITE_PYTHON_RESOURCES INFANiTECommonLib/requirements.txt)",
                                                 "set(INFANITE_PYTHON_RESOURCES)"),
     lambda r: check_top_cmake(r), ["INFANiTECommonLib/requirements.txt is not in the RESOURCES"]),
    ("cmake-core-listed-missing", lambda r: _edit(r, "CMakeLists.txt", "  INFANiTECommonLib/widget.py\n",
                                                  "  INFANiTECommonLib/widget.py\n  INFANiTECommonLib/gone.py\n"),
     lambda r: check_top_cmake(r), ["CMakeLists.txt:34:", "INFANiTECommonLib/gone.py", "does not exist"]),
    ("cmake-no-compile-macro", lambda r: _edit(r, "CMakeLists.txt", "ctkMacroCompilePythonScript(",
                                               "message(STATUS "),
     lambda r: check_top_cmake(r), ["no ctkMacroCompilePythonScript"]),
    ("cmake-subdirectory-missing", lambda r: _edit(r, "CMakeLists.txt", "add_subdirectory(INFANiTEFoo)", ""),
     lambda r: check_top_subdirectories(r), ["module INFANiTEFoo/ is missing add_subdirectory"]),
    ("cmake-subdirectory-extra", lambda r: _edit(r, "CMakeLists.txt", "add_subdirectory(INFANiTEFoo)",
                                                 "add_subdirectory(INFANiTEFoo)\nadd_subdirectory(INFANiTEGone)"),
     lambda r: check_top_subdirectories(r), ["CMakeLists.txt:22:", "add_subdirectory(INFANiTEGone)"]),
    # rule 5
    ("s4ext-description", lambda r: _edit(r, S4, "a line break.", "a line-break."),
     lambda r: check_s4ext(r), [f"{S4}:12:", "description", "EXTENSION_DESCRIPTION"]),
    ("s4ext-depends", lambda r: _edit(r, S4, "depends NA", "depends PyTorch"),
     lambda r: check_s4ext(r), [f"{S4}:5:", "depends 'PyTorch'", "EXTENSION_DEPENDS"]),
    ("s4ext-screenshots-order", lambda r: _edit(r, S4, "Screenshots/a.png", "Screenshots/c.png"),
     lambda r: check_s4ext(r), ["screenshoturls"]),
    ("s4ext-missing-key", lambda r: _edit(r, S4, "scmrevision main\n", ""),
     lambda r: check_s4ext(r), ["missing key 'scmrevision'"]),
    ("s4ext-category", lambda r: _edit(r, "CMakeLists.txt", '"Neuroimaging"', '"Segmentation"'),
     lambda r: check_s4ext(r), ["category 'Neuroimaging' differs from EXTENSION_CATEGORY 'Segmentation'"]),
    ("s4ext-no-cpack", lambda r: _edit(r, "CMakeLists.txt", "include(${Slicer_EXTENSION_CPACK})", ""),
     lambda r: check_s4ext(r), ["missing include(${Slicer_EXTENSION_CPACK})"]),
    ("url-missing-file", lambda r: (r / "Resources/Screenshots/b.png").unlink(),
     lambda r: check_image_urls(r), ["Resources/Screenshots/b.png does not exist"]),
    ("url-not-raw", lambda r: _edit(r, S4, f"{_RAW}/Resources/INFANiTE.png",
                                    "https://github.com/example/SlicerINFANiTE/blob/main/Resources/INFANiTE.png"),
     lambda r: check_image_urls(r), [f"{S4}:10 iconurl", "not a raw image URL"]),
    ("url-not-image", lambda r: _edit(r, "CMakeLists.txt", "Resources/INFANiTE.png", "Resources/INFANiTE.txt"),
     lambda r: check_image_urls(r), ["EXTENSION_ICONURL", "not an image URL"]),
    ("url-other-repository", lambda r: _edit(r, S4, "raw.githubusercontent.com/example/", "raw.githubusercontent.com/"
                                                                                          "someone/"),
     lambda r: check_image_urls(r), ["someone/slicerinfanite", "example/slicerinfanite"]),
    # rule 6
    ("class-missing-logic", lambda r: _edit(r, M, "class INFANiTEFooLogic(ScriptedLoadableModuleLogic):",
                                            "class FooLogic(ScriptedLoadableModuleLogic):"),
     lambda r: check_module_classes(r, FAKE), ["no class INFANiTEFooLogic(ScriptedLoadableModuleLogic)"]),
    ("class-wrong-base", lambda r: _edit(r, M, "class INFANiTEFooTest(ScriptedLoadableModuleTest):",
                                         "class INFANiTEFooTest(unittest.TestCase):"),
     lambda r: check_module_classes(r, FAKE), ["INFANiTEFooTest does not derive from ScriptedLoadableModuleTest"]),
    ("test-not-run", lambda r: _edit(r, M, "        self.test_foo()\n", "        pass\n"),
     lambda r: check_module_classes(r, FAKE), ["runTest does not call self.test_foo()"]),
    ("test-no-runtest", lambda r: _edit(r, M, "def runTest(self):", "def run_test(self):"),
     lambda r: check_module_classes(r, FAKE), ["INFANiTEFooTest has no runTest"]),
    ("module-too-long", lambda r: _edit(r, M, '"""Fake module."""\n', '"""Fake module."""\n' + "#\n" * 400),
     lambda r: check_module_classes(r, FAKE), [f"must stay < {MAX_MODULE_LINES}"]),
    ("module-no-categories", lambda r: _edit(r, M, '        self.parent.categories = ["INFANiTE"]\n', ""),
     lambda r: check_module_classes(r, FAKE), ["does not set self.parent.categories"]),
    ("widget-state", lambda r: _edit(r, M, "        self.logic = INFANiTEFooLogic()\n",
                                     "        self.logic = INFANiTEFooLogic()\n        self.lastResult = None\n"),
     lambda r: check_widget_state(r, FAKE), [f"{FAKE}.py:49:", "INFANiTEFooWidget.setup stores self.lastResult"]),
    ("widget-state-tuple", lambda r: _edit(r, M, "    def onApply(self, *args):\n",
                                           "    def onApply(self, *args):\n        self._busy, x = True, 1\n"),
     lambda r: check_widget_state(r, FAKE), ["INFANiTEFooWidget.onApply stores self._busy"]),
    ("layout-no-icon", lambda r: (r / f"{FAKE}/Resources/Icons/{FAKE}.png").write_text("not a png"),
     lambda r: check_module_layout(r, FAKE), [f"{FAKE}.png:1: not a PNG"]),
    ("layout-resource-path", lambda r: _edit(r, M, 'resourcePath("UI/INFANiTEFoo.ui")', 'resourcePath("UI/Foo.ui")'),
     lambda r: check_module_layout(r, FAKE), ["resourcePath('UI/Foo.ui')", "does not exist"]),
    ("discovery-incomplete", lambda r: (r / "INFANiTEBar" / "INFANiTEBarLib").mkdir(parents=True),
     lambda r: [f"incomplete: {m}" for m in incomplete_module_folders(r)], ["incomplete: INFANiTEBar"]),
]


@pytest.mark.parametrize("mutate, checker, expected", [pytest.param(m, c, e, id=i) for i, m, c, e in BREAKAGES])
def test_checker_reports_breakage(tmp_path, mutate, checker, expected):
    root = make_fake_extension(tmp_path)
    assert not checker(root), "the unbroken fake extension must pass this checker"
    mutate(root)
    problems = checker(root)
    assert any(all(e in p for e in expected) for p in problems), \
        f"expected a problem containing {list(expected)}, got:\n  " + "\n  ".join(problems or ["(none)"])


def test_checker_fake_extension_compiles(tmp_path):
    root = make_fake_extension(tmp_path)
    for version in ((3, 9), (3, 12)):
        problems, note = check_compile(root, version)
        assert not problems, problems


def test_checker_compile_fallback(tmp_path, monkeypatch):
    """Without interpreters, the in-process fallback still catches 3.10+ syntax (and says so)."""
    root = make_fake_extension(tmp_path)
    _write(root, "infanite/m.py", "def f(x):\n    match x:\n        case 1:\n            return 1\n")
    monkeypatch.setattr(compat, "find_python", lambda version: None)   # check_compile looks it up there
    problems, note = check_compile(root, (3, 9))
    assert note and "no working python3.9" in note
    assert any("infanite/m.py:" in p and "3.9" in p for p in problems), problems


def test_checker_no_modules(tmp_path):
    (tmp_path / COMMON_LIB).mkdir()
    (tmp_path / COMMON_LIB / "__init__.py").write_text("")
    assert discover_modules(tmp_path) == []
    with pytest.raises(pytest.fail.Exception, match="no Slicer module found"):
        _need(None)


def test_checker_test_file_itself_runs_on_39():
    """This file, test_slicer_lifecycle.py and the checkers (slicer_static/) must run on the CI's oldest Python too."""
    here = Path(__file__)
    files = [here, here.parent / "test_slicer_lifecycle.py"] + sorted((here.parent / "slicer_static").glob("*.py"))
    _report(check_runtime_compat(REPO, files), "test_slicer_static.py, test_slicer_lifecycle.py, slicer_static/ on 3.9")


def test_catalog_entry_matches_cmake_and_s4ext():
    _report(check_catalog_entry(REPO), f"{EXTENSION_NAME}.json")


def test_catalog_checker_catches_a_wrong_category(tmp_path):
    for name in ("CMakeLists.txt", f"{EXTENSION_NAME}.s4ext", f"{EXTENSION_NAME}.json"):
        (tmp_path / name).write_text((REPO / name).read_text())
    assert check_catalog_entry(tmp_path) == []
    entry = json.loads((tmp_path / f"{EXTENSION_NAME}.json").read_text())
    entry["category"], entry["build_dependencies"] = "Segmentation", []
    (tmp_path / f"{EXTENSION_NAME}.json").write_text(json.dumps(entry))
    problems = check_catalog_entry(tmp_path)
    assert any("category" in p for p in problems) and any("build_dependencies" in p for p in problems)
